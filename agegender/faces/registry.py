"""Build a detector by name, so configs (conf/detector/*.yaml) hold plain data."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from agegender.faces.types import Detector


def _mtcnn(**kwargs: Any) -> Detector:
    from agegender.faces.mtcnn import MTCNNDetector

    return MTCNNDetector(**kwargs)


def _mtcnn_facenet(**kwargs: Any) -> Detector:
    from agegender.faces.mtcnn_facenet import FacenetMTCNNDetector

    return FacenetMTCNNDetector(**kwargs)


def _opencv_ssd(**kwargs: Any) -> Detector:
    from agegender.faces.opencv_ssd import OpenCVSSDDetector

    return OpenCVSSDDetector(**kwargs)


def _haar(**kwargs: Any) -> Detector:
    from agegender.faces.haar import HaarDetector

    return HaarDetector(**kwargs)


def _none(**kwargs: Any) -> Detector:
    from agegender.faces.whole import WholeImageDetector

    if kwargs:
        raise TypeError(f"detector 'none' takes no options, got {sorted(kwargs)}")
    return WholeImageDetector()


#: Imports are deferred so that choosing haar never loads torch, and only ``mtcnn_facenet``
#: loads facenet-pytorch.
DETECTOR_BUILDERS: dict[str, Callable[..., Detector]] = {
    "mtcnn": _mtcnn,
    "mtcnn_facenet": _mtcnn_facenet,
    "opencv_ssd": _opencv_ssd,
    "haar": _haar,
    "none": _none,
}


def build_detector(name: str = "mtcnn", **kwargs: Any) -> Detector:
    """Instantiate the detector registered as ``name`` with its options ``kwargs``."""
    try:
        builder = DETECTOR_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTOR_BUILDERS)}") from None
    return builder(**kwargs)


#: The class each builder instantiates (module, name), for :func:`detector_arguments`.
_DETECTOR_CLASSES: dict[str, tuple[str, str]] = {
    "mtcnn": ("agegender.faces.mtcnn", "MTCNNDetector"),
    "mtcnn_facenet": ("agegender.faces.mtcnn_facenet", "FacenetMTCNNDetector"),
    "opencv_ssd": ("agegender.faces.opencv_ssd", "OpenCVSSDDetector"),
    "haar": ("agegender.faces.haar", "HaarDetector"),
    "none": ("agegender.faces.whole", "WholeImageDetector"),
}


def detector_implementation(name: str) -> str:
    """``module.Class`` of detector ``name``: part of the face cache key, so faces found by
    another implementation under the same name (``mtcnn`` was facenet-pytorch's driver before
    ours; same faces to 1e-4 px, not bit-identical) are never served from the cache."""
    try:
        module, cls = _DETECTOR_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTOR_BUILDERS)}") from None
    return f"{module}.{cls}"


def detector_arguments(name: str, **kwargs: Any) -> dict[str, Any]:
    """Every argument detector ``name`` would be built with: ``kwargs`` plus the defaults of
    its constructor, without building it.

    The face cache is keyed by this, so ``{}`` and the defaults spelled out share a cache,
    and changing a default in code does not silently reuse faces detected the old way. An
    unknown option is a ``TypeError`` here, before any preprocessing starts.
    """
    if name not in _DETECTOR_CLASSES:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTOR_BUILDERS)}")
    module, cls_name = _DETECTOR_CLASSES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        bound = inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise TypeError(f"detector {name!r}: {e}") from None
    bound.apply_defaults()
    return dict(bound.arguments)
