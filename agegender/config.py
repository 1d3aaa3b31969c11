"""Where the project's Hydra configuration lives, for code that runs outside ``@hydra.main``.

``conf/`` holds every default once (``conf/predict.yaml``, ``conf/detector/<name>.yaml``
...); the Python API and the detector factory read the same files ``predict.py`` composes, so
no default is written twice. The project is installed from its checkout (``pip install -e``),
which keeps ``conf/`` beside the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The repository's ``conf/`` folder.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def load_yaml(relative: str) -> Any:
    """``conf/<relative>`` as an OmegaConf node (interpolations unresolved)."""
    from omegaconf import OmegaConf  # deferred: ~50 ms that photo runs on the API skip

    path = CONF_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: agegender reads its defaults from the conf/ folder of its "
            "checkout (install it with pip install -e .)"
        )
    return OmegaConf.load(path)
