"""``detector=mtcnn_facenet``: MTCNN run by facenet-pytorch's own ``detect_face``.

The reference the default ``mtcnn`` (our driver over the same weights) is checked against, and
the way back to the detector of the face caches built before it (same pyramid, thresholds and
suppressions; ~2x slower per photo, and importing facenet-pytorch costs seconds of start-up).
"""

from __future__ import annotations

import numpy as np

from agegender.faces.mtcnn import _MTCNNBase


class FacenetMTCNNDetector(_MTCNNBase):
    """facenet-pytorch's ``MTCNN`` on a copy downscaled to ``max_side`` (options as ``mtcnn``)."""

    name = "mtcnn_facenet"

    def _load(self) -> None:
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,  # sort by probability, not area
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            post_process=False,
            device=self.device,
        )

    def _detect_raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, probs, points = self.mtcnn.detect(image, landmarks=True)
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        # Under numpy 2 these come back as object arrays; make them plain floats.
        return (
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(probs, dtype=np.float64).reshape(-1),
            np.asarray(points, dtype=np.float64).reshape(-1, 5, 2),
        )
