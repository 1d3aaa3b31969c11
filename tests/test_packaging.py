"""pyproject's explicit package list (needed to install the sweeper into Hydra's
`hydra_plugins` namespace) must name every package under agegender/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapped = {str(REPO / d) for d in setuptools["package-dir"].values()}
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "agegender").rglob("__init__.py")
        if str(init.parent) not in mapped
    }
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {found - listed}"
    assert "hydra_plugins.agegender_optuna" in listed


def test_hydra_instantiates_our_sweeper_outside_the_repository(tmp_path: Path) -> None:
    """From another folder (no repository on sys.path), the sweeper's class path imports."""
    code = (
        "from hydra.utils import get_class\n"
        "cls = get_class('hydra_plugins.agegender_optuna.optuna_sweeper.OptunaSweeper')\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "assert issubclass(cls, Sweeper)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
