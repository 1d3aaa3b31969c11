"""agegender: the Levi-Hassner age and gender CNN on Adience, with Lightning and Hydra.

``from agegender import AgeGender`` is the Python API (:mod:`agegender.api`); it is imported
on first use, so ``import agegender`` alone stays light (no torch, no OpenCV).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AgeGender", "FaceResult", "ImageLoadError", "__version__"]

if TYPE_CHECKING:
    from agegender.api import AgeGender, FaceResult
    from agegender.images import ImageLoadError


def __getattr__(name: str) -> Any:
    if name in ("AgeGender", "FaceResult"):
        # deferred: `import agegender` stays light (no cv2, onnxruntime, Pillow plugins)
        from agegender import api

        return getattr(api, name)
    if name == "ImageLoadError":
        # deferred: Pillow and numpy, only when asked for
        from agegender.images import ImageLoadError

        return ImageLoadError
    raise AttributeError(f"module 'agegender' has no attribute {name!r}")
