"""The ONE face alignment: an image + a detected face -> a size x size RGB crop.

Adience preprocessing (training data) and prediction both call :func:`align_face` with the
network's :class:`~agegender.spec.FaceSpec` values (``face_size`` and ``framing``), so a
network always sees faces framed the way it was trained on.
"""

from __future__ import annotations

import cv2
import numpy as np

from agegender.faces.types import DEFAULT_BOX_POINTS, BoxPoints, Face, check_image
from agegender.spec import LEGACY_BOX_SCALE, LEGACY_SHRINK, Framing

# Names kept for the legacy framing's settings (cache keys, sweeps of its margin).
TEMPLATE_SHRINK: float = LEGACY_SHRINK
BOX_CROP_SCALE: float = LEGACY_BOX_SCALE

#: Version of the pixels this module produces. The face cache is keyed by it (with the
#: framing), so bump it whenever a change to :func:`align_face`, :func:`crop_box` or their
#: warping changes any output pixel: old caches are then not reused.
ALIGN_VERSION: int = 2  # 2: half-pixel centre fix of the area pre-shrink in _warp


def template(size: int, framing: Framing) -> np.ndarray:
    """The 5 landmark positions (5 x 2 float32 pixels) that :func:`align_face` maps faces onto."""
    return (np.asarray(framing.template, dtype=np.float64) * size).astype(np.float32)


def align_face(
    image: np.ndarray,
    face: Face,
    size: int,
    framing: Framing,
    box_points: BoxPoints = DEFAULT_BOX_POINTS,
) -> np.ndarray:
    """Warp ``face`` out of ``image`` into a size x size x 3 uint8 RGB crop framed by ``framing``.

    - landmarks present: 5-point similarity transform (rotation, uniform scale, shift) onto
      the framing's template, so eyes are level and at a fixed distance;
    - no landmarks: a square crop around the box (:func:`box_crop`): the framing's fixed
      box crop, or the box's measured landmark geometry ``box_points`` (the run's detector's
      :attr:`~agegender.faces.Detector.box_points`, for its boxes and given ones) mapped
      onto the template;
    - a box covering the whole image without landmarks means "the image is the face"
      (``detector=none``): plain resize to size x size, the Levi-Hassner test protocol.
    Pixels outside the image are black, as in Adience's aligned faces.
    """
    check_image(image)
    if face.landmarks is not None:
        landmarks = np.asarray(face.landmarks, dtype=np.float32)
        matrix = similarity_matrix(landmarks, size, framing)
        if matrix is not None:
            return _warp(image, matrix, size)
    height, width = image.shape[:2]
    if face.landmarks is None and _covers_image(face.box, width, height):
        return cv2.resize(image, (size, size), interpolation=_interpolation(width, height, size))
    scale, centre = box_crop(framing, box_points)
    return crop_box(image, face.box, size, scale, centre)


def box_crop(
    framing: Framing, box_points: BoxPoints = DEFAULT_BOX_POINTS
) -> tuple[float, tuple[float, float]]:
    """How a box without landmarks is cropped under ``framing``: (crop side / the box's
    longer side, where the box centre sits in the crop in units of its side).

    A fixed box crop (``framing.box_scale``) is taken as it is. Otherwise the scale and
    shift that best map the detector's mean landmark positions relative to its box
    (``box_points``: offsets from the box centre in units of its longer side) onto the
    template, by least squares without rotation: ``template = s * points + t``."""
    if framing.box_scale is not None:
        return framing.box_scale, (0.5, framing.box_centre_y)
    points = np.asarray(box_points, dtype=np.float64)
    target = np.asarray(framing.template, dtype=np.float64)
    dp, dt = points - points.mean(axis=0), target - target.mean(axis=0)
    s = float((dp * dt).sum() / (dp * dp).sum())
    if not s > 0:
        raise ValueError(f"box points {box_points} do not fit template {framing.template}")
    shift = target.mean(axis=0) - s * points.mean(axis=0)
    return 1.0 / s, (float(shift[0]), float(shift[1]))


def crop_box(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int,
    scale: float = LEGACY_BOX_SCALE,
    centre: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """Square crop of side ``scale`` x the box's longer side with the box centre at
    ``centre`` (units of the crop's side; (0.5, 0.5) = centred), resized to size x size."""
    check_image(image)
    (left, top), side = box_square(box, scale, centre)
    k = size / side
    # Maps the square's corner to (0, 0), scaling by k.
    matrix = np.array([[k, 0.0, -k * left], [0.0, k, -k * top]], dtype=np.float64)
    return _warp(image, matrix, size)


def box_square(
    box: tuple[float, float, float, float], scale: float, centre: tuple[float, float]
) -> tuple[tuple[float, float], float]:
    """The square :func:`crop_box` cuts, in image pixels: (its top-left corner, its side)."""
    if not scale > 0:
        raise ValueError(f"box crop scale must be > 0, got {scale}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty face box {box}")
    side = scale * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    u, v = (float(c) for c in centre)
    return (cx - side * u, cy - side * v), side


def similarity_matrix(landmarks: np.ndarray, size: int, framing: Framing) -> np.ndarray | None:
    """2 x 3 similarity transform from ``landmarks`` to the template (None if degenerate)."""
    if not np.all(np.isfinite(landmarks)):
        return None
    matrix, _ = cv2.estimateAffinePartial2D(
        landmarks.astype(np.float32), template(size, framing), method=cv2.LMEDS
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
