"""Face detection (several detectors behind one interface) and the one face alignment.

Usage: ``faces = build_detector("mtcnn").detect(image)`` then
``align_face(image, faces[0], spec.face_size, spec.framing, detector.box_points)`` (``spec``:
the network's :class:`~agegender.spec.FaceSpec`)
with ``image`` from :func:`agegender.images.load_image` (H x W x 3 uint8 RGB).
"""

from agegender.faces.align import (
    ALIGN_VERSION,
    align_face,
    box_crop,
    crop_box,
    similarity_matrix,
    template,
)
from agegender.faces.registry import build_detector, detector_names
from agegender.faces.types import DEFAULT_BOX_POINTS, BoxPoints, Detector, Face

__all__ = [
    "ALIGN_VERSION",
    "DEFAULT_BOX_POINTS",
    "BoxPoints",
    "Detector",
    "Face",
    "align_face",
    "box_crop",
    "build_detector",
    "detector_names",
    "crop_box",
    "similarity_matrix",
    "template",
]
