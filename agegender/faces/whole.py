"""``detector=none``: the input already is a face crop (Levi-Hassner test protocol)."""

from __future__ import annotations

import numpy as np

from agegender.faces.types import Detector, Face, check_image


class WholeImageDetector(Detector):
    """One face per image: the full frame, score 1.0, no landmarks, so that
    :func:`agegender.faces.align_face` resizes it to the face size (Levi-Hassner: 256 x 256,
    then the eval preset centre-crops 227)."""

    name = "none"
    thread_safe = True

    def detect(self, image: np.ndarray) -> list[Face]:
        check_image(image)
        height, width = image.shape[:2]
        return [Face(box=(0.0, 0.0, float(width), float(height)), score=1.0)]
