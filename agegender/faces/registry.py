"""Build a detector from its Hydra config (``conf/detector/<name>.yaml``: ``_target_`` and
options): the config files are the only table of detectors."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from agegender.config import CONF_DIR, load_yaml
from agegender.faces.types import DEFAULT_BOX_POINTS, BoxPoints, Detector

#: Settings the detector configs interpolate (``${device}``, ``${oc.select:backend,...}``)
#: when one is read outside predict.py's config tree.
_ROOT_DEFAULTS = {"device": "cpu", "backend": "torch"}


def detector_names() -> list[str]:
    """The detectors ``conf/detector/`` defines."""
    return sorted(p.stem for p in (CONF_DIR / "detector").glob("*.yaml"))


def detector_config(name: str, **root: Any) -> dict[str, Any]:
    """``conf/detector/<name>.yaml`` resolved (``root``: the ``device``/``backend`` it
    follows; default cpu/torch), with its ``name`` and ``_target_``."""
    from omegaconf import OmegaConf  # deferred with the config files themselves

    if name not in detector_names():
        raise ValueError(f"unknown detector {name!r}; known: {detector_names()}")
    tree = OmegaConf.create({**_ROOT_DEFAULTS, **root})
    tree.detector = load_yaml(f"detector/{name}.yaml")
    return dict(OmegaConf.to_container(tree.detector, resolve=True))  # type: ignore[arg-type]


def build_detector(config: str | Mapping[str, Any] = "mtcnn", **options: Any) -> Detector:
    """The detector of a config (a name: ``conf/detector/<name>.yaml``; or the mapping
    itself, as predict.py composed it) with ``options`` overriding its settings."""
    from hydra.utils import instantiate  # deferred: Hydra's import is ~0.1 s

    cfg = detector_config(config) if isinstance(config, str) else dict(config)
    cfg.pop("name", None)
    cfg.update(options)
    if "_target_" not in cfg:
        raise ValueError(f"a detector config needs a _target_ (conf/detector/*.yaml): {cfg}")
    try:
        return instantiate(cfg, _convert_="all")
    except Exception as exc:  # Hydra wraps the constructor's own error: raise that one
        if isinstance(exc.__cause__, Exception):
            raise exc.__cause__ from None
        raise


def _detector_class(name: str) -> type:
    module, _, cls = str(detector_config(name)["_target_"]).rpartition(".")
    return getattr(importlib.import_module(module), cls)


def detector_implementation(name: str) -> str:
    """``module.Class`` of detector ``name``: part of the face cache key, so faces found by
    another implementation under the same name (``mtcnn`` was facenet-pytorch's driver before
    ours; same faces to 1e-4 px, not bit-identical) are never served from the cache."""
    return str(detector_config(name)["_target_"])


def detector_arguments(name: str, **kwargs: Any) -> dict[str, Any]:
    """Every argument detector ``name`` would be built with: ``kwargs`` plus the defaults of
    its constructor, without building it.

    The face cache is keyed by this, so ``{}`` and the defaults spelled out share a cache,
    and changing a default in code does not silently reuse faces detected the old way. An
    unknown option is a ``TypeError`` here, before any preprocessing starts.
    """
    cls = _detector_class(name)
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise TypeError(f"detector {name!r}: {e}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def detector_box_points(name: str) -> BoxPoints:
    """Where detector ``name``'s boxes put the landmarks (:attr:`Detector.box_points`), read
    from its class without building it: how its box-only faces, and boxes given to a run
    that uses it, are framed (part of the face cache key)."""
    return getattr(_detector_class(name), "box_points", DEFAULT_BOX_POINTS)
