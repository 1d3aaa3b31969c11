"""The ONE face alignment: an image + a detected face -> a size x size RGB crop.

Adience preprocessing (training data) and prediction both call :func:`align_face`, so a
network always sees faces framed the same way it was trained on. The size is always given:
it is the network's ``face_spec.face_size`` (:mod:`agegender.spec`), 256 for every network.
"""

from __future__ import annotations

import cv2
import numpy as np

from agegender.faces.types import Face, check_image

# The widely used 5-point template of a tightly cropped 112 x 112 face (eyes, nose tip,
# mouth corners). The face fills that crop; Adience's aligned faces show the whole head,
# so the template is shrunk by 2/3 about the centre: the eyes end up ~0.21 of the crop apart
# and the face covers ~60% of it, with hair and chin inside.
TEMPLATE_112: np.ndarray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
#: How much the tight template is shrunk about the centre: the margin around the face
#: (smaller = more margin). A preprocessing setting (``data.preprocess.template_shrink``).
TEMPLATE_SHRINK: float = 2.0 / 3.0

#: Template in units of the output side (multiply by ``size``), order as :class:`Face`.
TEMPLATE_UNIT: np.ndarray = 0.5 + (TEMPLATE_112 / 112.0 - 0.5) * TEMPLATE_SHRINK

#: Fallback without landmarks: side of the square crop relative to the box's longer side,
#: chosen so a face box occupies about the same ~60% of the crop as with landmarks.
BOX_CROP_SCALE: float = 1.6

#: Version of the pixels this module produces. The face cache is keyed by it (with the
#: template, shrink and crop scale), so bump it whenever a change to :func:`align_face`,
#: :func:`crop_box` or their warping changes any output pixel: old caches are then not reused.
ALIGN_VERSION: int = 2  # 2: half-pixel centre fix of the area pre-shrink in _warp


def template(size: int, shrink: float = TEMPLATE_SHRINK) -> np.ndarray:
    """The 5 landmark positions (5 x 2, float32) that :func:`align_face` maps faces onto."""
    if not shrink > 0:
        raise ValueError(f"template shrink must be > 0, got {shrink}")
    return ((0.5 + (TEMPLATE_112 / 112.0 - 0.5) * shrink) * size).astype(np.float32)


def align_face(
    image: np.ndarray,
    face: Face,
    size: int,
    template_shrink: float = TEMPLATE_SHRINK,
    box_crop_scale: float = BOX_CROP_SCALE,
) -> np.ndarray:
    """Warp ``face`` out of ``image`` into a size x size x 3 uint8 RGB crop.

    - landmarks present: 5-point similarity transform (rotation, uniform scale, shift) onto
      :func:`template` shrunk by ``template_shrink``, so eyes are level and at a fixed distance;
    - no landmarks: a square crop of ``box_crop_scale`` x the box's longer side around its
      centre (:func:`crop_box`);
    - a box covering the whole image without landmarks means "the image is the face"
      (``detector=none``): plain resize to size x size, the Levi-Hassner test protocol.
    Pixels outside the image are black, as in Adience's aligned faces. The two framing
    arguments exist so preprocessing can sweep the margin; prediction uses the defaults.
    """
    check_image(image)
    if face.landmarks is not None:
        landmarks = np.asarray(face.landmarks, dtype=np.float32)
        matrix = similarity_matrix(landmarks, size, template_shrink)
        if matrix is not None:
            return _warp(image, matrix, size)
    height, width = image.shape[:2]
    if face.landmarks is None and _covers_image(face.box, width, height):
        return cv2.resize(image, (size, size), interpolation=_interpolation(width, height, size))
    return crop_box(image, face.box, size, box_crop_scale)


def crop_box(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int,
    scale: float = BOX_CROP_SCALE,
) -> np.ndarray:
    """Square crop of side ``scale`` x the box's longer side, centred on the box, resized."""
    check_image(image)
    if not scale > 0:
        raise ValueError(f"box crop scale must be > 0, got {scale}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty face box {box}")
    side = scale * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    k = size / side
    # Maps crop-square corner (cx - side/2, cy - side/2) to (0, 0), scaling by k.
    matrix = np.array(
        [[k, 0.0, -k * (cx - side / 2.0)], [0.0, k, -k * (cy - side / 2.0)]], dtype=np.float64
    )
    return _warp(image, matrix, size)


def similarity_matrix(
    landmarks: np.ndarray, size: int, shrink: float = TEMPLATE_SHRINK
) -> np.ndarray | None:
    """2 x 3 similarity transform from ``landmarks`` to the template (None if degenerate)."""
    if not np.all(np.isfinite(landmarks)):
        return None
    matrix, _ = cv2.estimateAffinePartial2D(
        landmarks.astype(np.float32), template(size, shrink), method=cv2.LMEDS
    )
    if matrix is None or not np.all(np.isfinite(matrix)):
        return None
    return matrix


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    # Strong downscaling aliases with bilinear sampling: pre-blur by area first.
    if scale < 0.5:
        factor = int(1.0 / scale)
        height, width = image.shape[:2]
        small = cv2.resize(
            image,
            (max(1, width // factor), max(1, height // factor)),
            interpolation=cv2.INTER_AREA,
        )
        sx, sy = width / small.shape[1], height / small.shape[0]
        # small pixel u (centre) covers full-size pixels u*sx .. (u+1)*sx - 1: its centre is
        # at u*sx + (sx - 1)/2 in OpenCV's pixel-centre coordinates
        pre = np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2], [0.0, 0.0, 1.0]])
        matrix = (np.vstack([matrix, [0.0, 0.0, 1.0]]) @ pre)[:2]
        image = small
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _covers_image(box: tuple[float, float, float, float], width: int, height: int) -> bool:
    x1, y1, x2, y2 = box
    return x1 <= 0.5 and y1 <= 0.5 and x2 >= width - 0.5 and y2 >= height - 0.5


def _interpolation(width: int, height: int, size: int) -> int:
    return cv2.INTER_AREA if min(width, height) > size else cv2.INTER_LINEAR
