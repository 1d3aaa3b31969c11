"""What a face looks like, cheaply: a descriptor that tells the face of one person in a video
from the face of another at the same place.

A tracker that matches faces by box overlap alone gives one id to two people who follow each
other at the same spot (a hard cut, or one person stepping into the place another just left).
Telling them apart needs only a coarse look, not identity recognition: the face aligned on
its five landmarks (or its box) the way the original networks' training faces were framed
(:data:`~agegender.spec.ADIENCE_FRAMING`: face, hair and a little around them), shrunk to
8 x 8 pixels in CIE Lab, mean removed and scaled to unit length. The dot product of two
descriptors is their correlation: on ``benchmarks/bench_tracking.py``'s clips one person's
looks on consecutive analysed frames correlate at 0.82 or more (0.92 or more under a
zooming, panning camera), two different people of ``data/samples`` at 0.42 at most; the
tracker's default threshold, 0.65, lies between (look-alikes will not). 8 x 8 is coarse on
purpose: landmark jitter and video compression change a face's fine detail from frame to
frame, not its layout of skin, hair and eyes. Pixels outside the image repeat the border
(black would make a face near the picture's edge look like another face).

Why not the classifier's penultimate features: the default backend runs the original nets
as ONNX graphs that output probabilities only; exposing features would mean another graph
per model. This costs one 32 x 32 warp per face (about 60 microseconds on a 2-core EPYC)
in the loader threads.
"""

from __future__ import annotations

import cv2
import numpy as np

from agegender.faces.align import box_crop, box_square, similarity_matrix
from agegender.faces.types import DEFAULT_BOX_POINTS, BoxPoints, Face, check_image
from agegender.spec import ADIENCE_FRAMING

#: Side of the descriptor's thumbnail (pixels): 8 x 8 x 3 Lab values.
APPEARANCE_SIDE = 8
#: Length of a descriptor.
APPEARANCE_SIZE = APPEARANCE_SIDE * APPEARANCE_SIDE * 3
#: The face is warped to this size first, then area-shrunk (anti-aliased) to the thumbnail.
_WARP_SIDE = 32


def appearance(
    image: np.ndarray, face: Face, box_points: BoxPoints = DEFAULT_BOX_POINTS
) -> np.ndarray:
    """The descriptor of ``face`` in ``image`` (H x W x 3 uint8 RGB, the face in its
    pixels): :data:`APPEARANCE_SIZE` float32 values, zero mean, unit length (all zeros for
    a uniform patch, which then looks like nothing). ``box_points``: the detector's box
    geometry, for a face without landmarks (as :func:`~agegender.faces.align_face`)."""
    check_image(image)
    matrix = None
    if face.landmarks is not None:
        points = np.asarray(face.landmarks, dtype=np.float32)
        matrix = similarity_matrix(points, _WARP_SIDE, ADIENCE_FRAMING)
    if matrix is None:
        left, top, right, _ = look_square(face.box, box_points)
        k = _WARP_SIDE / (right - left)
        matrix = np.array([[k, 0.0, -k * left], [0.0, k, -k * top]], dtype=np.float64)
    crop = cv2.warpAffine(
        image,
        matrix,
        (_WARP_SIDE, _WARP_SIDE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    small = cv2.resize(crop, (APPEARANCE_SIDE, APPEARANCE_SIDE), interpolation=cv2.INTER_AREA)
    values = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32).ravel()
    values -= values.mean()
    norm = float(np.linalg.norm(values))
    return values / norm if norm > 1e-3 else np.zeros_like(values)


def look_square(
    box: tuple[float, float, float, float], box_points: BoxPoints = DEFAULT_BOX_POINTS
) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of the part of the picture :func:`appearance` reads for a face with
    this box (exact without landmarks, about right with them): what must be free of other
    people for a look to be the face's own."""
    scale, centre = box_crop(ADIENCE_FRAMING, box_points)
    (left, top), side = box_square(box, scale, centre)
    return left, top, left + side, top + side


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two descriptors of :func:`appearance`: 1 = the same look, about 0 =
    unrelated, 0 when either is all zeros."""
    return float(np.dot(a, b))
