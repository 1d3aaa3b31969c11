"""What a detector returns, and the interface every detector implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

#: Where a detector's boxes put the 5 landmarks (:class:`Face` order), on average: offsets
#: from the box centre in units of the box's longer side. Box-only faces are framed through
#: it (:func:`agegender.faces.align.box_crop`), fitted by ``benchmarks/bench_framing.py
#: --calibrate`` on faces that have both the detector's box and MTCNN's landmarks.
BoxPoints = tuple[tuple[float, float], ...]

#: MTCNN's boxes (``mtcnn``, ``mtcnn_facenet``; the default of :class:`Detector`). A box given
#: by the caller (the API's ``boxes=``, a CSV's x1..y2, a preprocessing fallback) is read as a
#: box of the run's detector, so a box copied from predictions.csv frames its face as that
#: run did (without landmarks).
DEFAULT_BOX_POINTS: BoxPoints = (
    (-0.1763, -0.1089),
    (0.1763, -0.1089),
    (0.0, 0.114),
    (-0.1695, 0.2469),
    (0.1695, 0.2469),
)


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the ORIGINAL (upright) image.

    ``box`` is (x1, y1, x2, y2). ``landmarks`` is a (5, 2) float32 array ordered left eye,
    right eye, nose, mouth left, mouth right (left/right as seen in the image), or None when
    the detector has no landmarks, in which case alignment falls back to a box crop.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.landmarks is not None and np.shape(self.landmarks) != (5, 2):
            raise ValueError(f"landmarks must have shape (5, 2), got {np.shape(self.landmarks)}")

    def scaled(self, factor: float) -> Face:
        """The same face in an image ``factor`` times larger (e.g. back to full size after
        detecting on a reduced decode)."""
        x1, y1, x2, y2 = self.box
        landmarks = None if self.landmarks is None else (self.landmarks * factor)
        return Face(
            box=(x1 * factor, y1 * factor, x2 * factor, y2 * factor),
            score=self.score,
            landmarks=None if landmarks is None else landmarks.astype(np.float32),
        )

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def check_image(image: np.ndarray) -> None:
    """Detectors take the :func:`agegender.images.load_image` convention and nothing else."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {np.shape(image)}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image, got dtype {image.dtype}")


#: Guards the lazy creation of each detector's lock (:meth:`Detector.detect_safely`).
_LOCK_GUARD = threading.Lock()


class Detector(ABC):
    """Finds faces in an H x W x 3 uint8 RGB image; results sorted by score, best first."""

    name: str = "detector"
    #: True when ``detect`` may run in several threads at once on one instance (pure torch
    #: inference); False serialises calls (OpenCV nets and cascades keep per-call state).
    thread_safe: bool = False
    #: This detector's box geometry (:data:`BoxPoints`): how its faces are framed when they
    #: come without landmarks.
    box_points: BoxPoints = DEFAULT_BOX_POINTS

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]: ...

    def detect_safely(self, image: np.ndarray) -> list[Face]:
        """:meth:`detect` from any thread: a detector that keeps per-call state (OpenCV nets
        and cascades) runs one call at a time under ITS OWN lock, so every pipeline, API call
        and server thread sharing this instance is serialised; thread-safe ones (MTCNN) run
        in all loader threads at once, which on few cores beats one multi-threaded call."""
        if self.thread_safe:
            return self.detect(image)
        lock = self.__dict__.get("_detect_lock")
        if lock is None:
            with _LOCK_GUARD:
                lock = self.__dict__.setdefault("_detect_lock", threading.Lock())
        with lock:
            return self.detect(image)

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        # Batching MTCNN over equal-size images gained little on CPU (measured), so the
        # default is a loop; a detector that can batch overrides this.
        return [self.detect(image) for image in images]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def sort_faces(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: f.score, reverse=True)


def clip_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        min(max(x1, 0.0), float(width)),
        min(max(y1, 0.0), float(height)),
        min(max(x2, 0.0), float(width)),
        min(max(y2, 0.0), float(height)),
    )


def downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """A copy whose longer side is at most ``max_side``, and the (x, y) factors that map its
    pixel coordinates back to the original (detection cost grows with pixels, accuracy barely)."""
    import cv2

    height, width = image.shape[:2]
    longest = max(height, width)
    if max_side is None or longest <= max_side:
        return image, (1.0, 1.0)
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = image
    step = int(longest // max_side)
    if step >= 2:
        # INTER_AREA is ~7x faster for integer factors: shrink by one first, then the rest
        # (less than 2x, where bilinear barely aliases) with INTER_LINEAR.
        small = cv2.resize(
            image, (max(1, width // step), max(1, height // step)), interpolation=cv2.INTER_AREA
        )
    if small.shape[1::-1] != size:
        small = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR)
    # Map back with the exact per-axis ratios actually applied (the size was rounded).
    return small, (width / size[0], height / size[1])
