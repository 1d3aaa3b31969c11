"""Measuring framings: where a training set's faces sit, and where a detector's boxes sit.

Two procedures, both printed by ``benchmarks/bench_framing.py`` and checked by the tests:

- :func:`derive_template`: the 5 landmarks of a network's training mean image (the original
  Levi-Hassner ``mean.binaryproto`` is the average of Adience's aligned faces): MTCNN on the
  mean image resized to several sides, averaged, in units of the side. That is the
  ``adience`` framing's template (:data:`agegender.spec.ADIENCE_FRAMING`).
- :func:`fit_box_points`: a box-only detector's geometry (:data:`~agegender.faces.types.
  BoxPoints`), from faces found both by it and by MTCNN (whose landmarks say where the face
  is): per face, the landmarks relative to the box, then the median over faces, mirrored
  left-right and averaged (faces and detectors are symmetric on average; a handful of photos
  is not).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from agegender.faces.align import box_crop, box_square
from agegender.faces.types import BoxPoints, Detector, Face
from agegender.spec import Framing

#: Sides the mean image is resized to for :func:`derive_template` (MTCNN's own image pyramid
#: moves its landmarks by ~0.005 of the side between sizes; the mean over sizes is stable).
DERIVE_SIDES: tuple[int, ...] = (256, 320, 384, 448, 512, 576, 640)
#: Decimals the derived values are stored with.
DECIMALS = 4
#: Smallest overlap (IoU) of a detector's box and an MTCNN face taken as the same face.
MATCH_IOU = 0.3


def mean_image_rgb(mean_bgr_chw: np.ndarray) -> np.ndarray:
    """A Caffe mean blob (3 x H x W float, BGR) as an H x W x 3 uint8 RGB image."""
    mean = np.asarray(mean_bgr_chw, dtype=np.float64)
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W mean blob, got shape {mean.shape}")
    return np.clip(np.rint(mean.transpose(1, 2, 0)[..., ::-1]), 0, 255).astype(np.uint8)


def mean_image_landmarks(
    mean_rgb: np.ndarray, detector: Detector, sides: Sequence[int] = DERIVE_SIDES
) -> np.ndarray:
    """The 5 landmarks of a mean face image in units of its side, averaged over ``sides``
    (5 x 2 float64); a side where ``detector`` finds no face with landmarks is an error."""
    found = []
    for side in sides:
        image = cv2.resize(mean_rgb, (side, side), interpolation=cv2.INTER_CUBIC)
        faces = [f for f in detector.detect(image) if f.landmarks is not None]
        if not faces:
            raise ValueError(f"no face with landmarks on the mean image at {side} px")
        best = max(faces, key=lambda f: f.score)
        found.append(np.asarray(best.landmarks, dtype=np.float64) / side)
    return np.mean(found, axis=0)


def derive_template(mean_rgb: np.ndarray, detector: Detector) -> tuple[tuple[float, float], ...]:
    """:func:`mean_image_landmarks` rounded to :data:`DECIMALS`: a framing's template."""
    points = mean_image_landmarks(mean_rgb, detector)
    return tuple((round(float(x), DECIMALS), round(float(y), DECIMALS)) for x, y in points)


def box_relative(box: Sequence[float], landmarks: np.ndarray) -> np.ndarray:
    """Landmarks as offsets from the box centre in units of the box's longer side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    centre = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    return (np.asarray(landmarks, dtype=np.float64) - centre) / side


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched_pairs(boxes: Iterable[Face], marked: Iterable[Face]) -> list[tuple[Face, Face]]:
    """(box-only face, face with landmarks) pairs of one image: each landmarked face with the
    box that overlaps it most, when that overlap reaches :data:`MATCH_IOU`."""
    boxes = list(boxes)
    pairs = []
    for face in marked:
        if face.landmarks is None or not boxes:
            continue
        best = max(boxes, key=lambda b: iou(b.box, face.box))
        if iou(best.box, face.box) >= MATCH_IOU:
            pairs.append((best, face))
    return pairs


def template_error(
    box: Sequence[float], landmarks: np.ndarray, framing: Framing, box_points: BoxPoints
) -> float:
    """How far a box-framed face's landmarks land from ``framing``'s template: the mean
    |difference| over the 5 points, in units of the crop side (the crop
    :func:`~agegender.faces.align.align_face` cuts for a box without landmarks)."""
    scale, centre = box_crop(framing, box_points)
    corner, side = box_square(tuple(box), scale, centre)  # type: ignore[arg-type]
    landed = (np.asarray(landmarks, dtype=np.float64) - np.asarray(corner)) / side
    return float(np.abs(landed - np.asarray(framing.template)).mean())


def mirrored(points: np.ndarray) -> np.ndarray:
    """Box-relative landmarks of the mirror image: x negated, left and right swapped."""
    flipped = points * np.array([-1.0, 1.0])
    return flipped[[1, 0, 2, 4, 3]]


def fit_box_points(pairs: Sequence[tuple[Face, Face]]) -> BoxPoints:
    """A detector's :data:`BoxPoints` from (its face, MTCNN's face) pairs."""
    if not pairs:
        raise ValueError("no face was found by both detectors: nothing to fit")
    relative = np.stack([box_relative(box.box, marked.landmarks) for box, marked in pairs])
    median = np.median(relative, axis=0)
    points = (median + mirrored(median)) / 2.0
    return tuple((round(float(x), DECIMALS), round(float(y), DECIMALS)) for x, y in points)
