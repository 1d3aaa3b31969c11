"""Face detection (several detectors behind one interface) and the one face alignment.

Usage: ``faces = build_detector("mtcnn").detect(image)`` then ``align_face(image, faces[0], size)``
(``size``: the network's ``face_spec.face_size``)
with ``image`` from :func:`agegender.images.load_image` (H x W x 3 uint8 RGB).
"""

from agegender.faces.align import (
    ALIGN_VERSION,
    BOX_CROP_SCALE,
    TEMPLATE_SHRINK,
    align_face,
    crop_box,
    similarity_matrix,
    template,
)
from agegender.faces.registry import build_detector, detector_names
from agegender.faces.types import Detector, Face

__all__ = [
    "ALIGN_VERSION",
    "BOX_CROP_SCALE",
    "Detector",
    "Face",
    "TEMPLATE_SHRINK",
    "align_face",
    "build_detector",
    "detector_names",
    "crop_box",
    "similarity_matrix",
    "template",
]
