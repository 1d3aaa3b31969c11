"""OpenCV's Viola-Jones frontal-face cascade: the fastest option, frontal faces only.

Its ``score`` is the cascade's final-stage weight (larger = more confident), not a
probability. No landmarks: faces are aligned by the box-crop fallback.
"""

from __future__ import annotations

import cv2
import numpy as np

from agegender.faces.types import Detector, Face, check_image, clip_box, downscale, sort_faces

HAAR_CASCADE: str = "haarcascade_frontalface_default.xml"


class HaarDetector(Detector):
    name = "haar"
    #: Fitted by ``benchmarks/bench_framing.py --calibrate`` (see docs/framing.md): the
    #: cascade's boxes are larger than MTCNN's, eyes higher in them.
    box_points = (
        (-0.1884, -0.1015),
        (0.1884, -0.1015),
        (0.0, 0.1337),
        (-0.183, 0.2966),
        (0.183, 0.2966),
    )

    def __init__(
        self,
        max_side: int | None = 640,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        cascade: str = HAAR_CASCADE,
    ) -> None:
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise FileNotFoundError(f"cannot load Haar cascade {path}")
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image: np.ndarray) -> list[Face]:
        check_image(image)
        height, width = image.shape[:2]
        small, (sx, sy) = downscale(image, self.max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        rects, _, weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(rects, np.ravel(weights), strict=True):
            box = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
            faces.append(Face(box=clip_box(box, width, height), score=float(weight)))
        return sort_faces(faces)
