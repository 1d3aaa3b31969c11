"""Build a detector by name, so configs (conf/detector/*.yaml) hold plain data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agegender.faces.types import Detector


def _mtcnn(**kwargs: Any) -> Detector:
    from agegender.faces.mtcnn import MTCNNDetector

    return MTCNNDetector(**kwargs)


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


#: Imports are deferred so that choosing haar never loads facenet-pytorch, and so on.
DETECTOR_BUILDERS: dict[str, Callable[..., Detector]] = {
    "mtcnn": _mtcnn,
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
