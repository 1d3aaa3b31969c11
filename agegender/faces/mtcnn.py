"""Default detector: MTCNN (boxes + 5 landmarks) with facenet-pytorch's trained weights, run
by our own cascade driver.

Where facenet-pytorch's ``detect_face`` spends a photo's time (cProfile, the 4 samples at max
side 640, one thread): ~30% in ``interpolate(mode="area")``, mostly building each pyramid level
from the whole float image (adaptive average pooling of a channels-last tensor), the rest of
it resizing every R-net / O-net candidate on its own in a Python loop; ~17% in max-pooling,
mostly R-net/O-net's, slow because their stacked crops are NCHW (``ceil_mode`` pooling runs
~10x faster channels-last); ~25% in convolutions.

This driver computes the same area averages from ONE integral image of the uint8 photo
(exact integer sums, divided as torch divides: the networks' inputs are bit-identical),
gathers all candidates' 24 x 24 / 48 x 48 crops in one vectorised step, runs the nets
channels-last, and does the box arithmetic and non-maximum suppression in float32 numpy with
facenet-pytorch's formulas and orderings: the same candidates, boxes and landmarks within
~1e-4 px (the channels-last kernels sum in another order).

It imports only torch, numpy and cv2 (:mod:`agegender.faces.mtcnn_nets`): no facenet_pytorch,
no torchvision, for start-up. ``detector=mtcnn_facenet`` runs facenet-pytorch's own code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from agegender.faces.types import Detector, Face, check_image, clip_box, downscale, sort_faces
from agegender.onnx_session import ort_session
from agegender.store import MTCNN_ONNX_NAMES, mtcnn_onnx_cached, mtcnn_onnx_dir

if TYPE_CHECKING:
    import torch

#: Where the cascade's networks run: PyTorch, or onnxruntime (the nets exported to ONNX by
#: ``python -m agegender.weights original``: no torch import at all); ``auto`` picks
#: onnxruntime on the CPU when the exported nets are cached, else torch.
MTCNN_BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")

#: MTCNN's pyramid step (facenet-pytorch's default ``factor``): each level is 0.709 x the last.
PYRAMID_FACTOR = 0.709


class _MTCNNBase(Detector):
    """Shared by both MTCNN implementations: detection on a copy downscaled to ``max_side``,
    ``min_score`` filtering, boxes and landmarks mapped back to the original image.

    ``min_score`` drops MTCNN's weakest final-stage detections (mostly textures and profiles
    that the classifier would mislabel anyway). ``min_face_size`` is in pixels of the
    downscaled copy: 40 (6% of a 640 px side) halves the cost of MTCNN's image pyramid
    against facenet-pytorch's 20, and smaller faces carry too little detail for age anyway
    (the net sees 227 px); lower it for crowds in big photos, with a larger ``max_side``.
    ``thresholds`` are the three stages' cut-offs; the first is raised from facenet-pytorch's
    0.6 to 0.7, which drops ~1/5 of the detection time (fewer candidates for the second
    stage), and final faces must pass ``min_score`` anyway.
    """

    thread_safe = True  # eval-mode torch modules, no state kept between calls

    def __init__(
        self,
        max_side: int | None = 640,
        min_score: float = 0.9,
        min_face_size: int = 40,
        thresholds: tuple[float, float, float] = (0.7, 0.7, 0.7),
        device: str = "cpu",
    ) -> None:
        self.max_side = max_side
        self.min_score = float(min_score)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        if len(self.thresholds) != 3:
            raise ValueError(f"thresholds: one per stage (3), got {thresholds}")
        self.device = str(device)
        self._load()

    def _no_grad(self) -> contextlib.AbstractContextManager:
        import torch

        return torch.inference_mode()

    def _load(self) -> None:
        """Load the three nets (each implementation its own way), once, at construction."""
        raise NotImplementedError

    def _detect_raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes N x 4, probabilities N, landmarks N x 5 x 2) in ``image``'s pixels."""
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Face]:
        check_image(image)
        height, width = image.shape[:2]
        small, (sx, sy) = downscale(image, self.max_side)
        if min(small.shape[:2]) < self.min_face_size:
            return []  # no pyramid level fits (facenet-pytorch would fail on an empty list)
        with self._no_grad():
            boxes, probs, points = self._detect_raw(small)
        scale = np.array([sx, sy])
        faces = []
        for box, prob, pts in zip(boxes, probs, points, strict=True):
            if not np.isfinite(prob) or prob < self.min_score:
                continue
            x1, y1, x2, y2 = box * np.tile(scale, 2)
            faces.append(
                Face(
                    box=clip_box((x1, y1, x2, y2), width, height),
                    score=float(prob),
                    landmarks=(pts * scale).astype(np.float32),
                )
            )
        return sort_faces(faces)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_side={self.max_side}, min_score={self.min_score})"


class MTCNNDetector(_MTCNNBase):
    """MTCNN (facenet-pytorch's weights, our driver) on a copy downscaled to ``max_side``.

    ``backend`` (:data:`MTCNN_BACKENDS`): the same cascade and weights either way; the nets'
    float rounding differs, so boxes agree to ~1e-3 px, not bit for bit (the face cache keys
    the backend, see :mod:`agegender.data.preprocess`).
    """

    name = "mtcnn"

    def __init__(
        self,
        max_side: int | None = 640,
        min_score: float = 0.9,
        min_face_size: int = 40,
        thresholds: tuple[float, float, float] = (0.7, 0.7, 0.7),
        device: str = "cpu",
        backend: str = "torch",
    ) -> None:
        if backend not in MTCNN_BACKENDS:
            raise ValueError(f"backend must be one of {MTCNN_BACKENDS}, got {backend!r}")
        self.backend = resolve_mtcnn_backend(backend, device)
        super().__init__(max_side, min_score, min_face_size, thresholds, device)

    def _load(self) -> None:
        if self.backend == "onnxruntime":
            self.nets = OnnxNets(onnx_paths())
        else:
            # torch: deferred, the onnxruntime backend never imports it
            from agegender.faces.mtcnn_nets import load_nets

            self.nets = TorchNets(load_nets(self.device), self.device)

    def _no_grad(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.backend == "onnxruntime" else super()._no_grad()

    def _detect_raw(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return detect_faces(image, self.nets, self.min_face_size, self.thresholds)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_side={self.max_side}, min_score={self.min_score}, "
            f"backend={self.backend})"
        )


# -- where the three nets run ------------------------------------------------------------------
def onnx_paths(folder: Path | None = None) -> tuple[Path, Path, Path]:
    """The exported P-, R- and O-net; a missing one is an error saying how to make them."""
    folder = mtcnn_onnx_dir() if folder is None else folder
    paths = tuple(folder / name for name in MTCNN_ONNX_NAMES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MTCNN's ONNX nets are missing ({', '.join(missing)}): make them with "
            "`python -m agegender.weights original` (the install command exports them from "
            "facenet-pytorch's weights), or use backend=torch"
        )
    return paths  # type: ignore[return-value]


def resolve_mtcnn_backend(backend: str, device: str = "cpu") -> str:
    """``auto`` -> onnxruntime on the CPU when the exported nets are cached, else torch."""
    if backend != "auto":
        return backend
    if str(device) != "cpu":
        return "torch"
    return "onnxruntime" if mtcnn_onnx_cached() else "torch"


class TorchNets:
    """P/R/O-nets in PyTorch on N x H x W x 3 float32 arrays -> numpy outputs (NCHW)."""

    def __init__(self, nets: tuple[torch.nn.Module, ...], device: str) -> None:
        self.nets, self.device = nets, device

    def _run(self, net: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        # N x H x W x C memory = channels-last strides: torch's max-pooling with ceil_mode
        # runs ~10x faster on them than on NCHW (facenet-pytorch's crops are NCHW: R-net
        # takes 2x as long there). Conv results differ from facenet's in the last bits only.
        tensor = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)
        if tensor.shape[0] == 1:
            tensor = tensor.contiguous(memory_format=torch.channels_last)  # the batch stride
        return tuple(out.cpu().numpy() for out in net(tensor))

    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(self.nets[0], x)

    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(self.nets[1], x)

    def onet(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(self.nets[2], x)


class OnnxNets:
    """The same nets exported to ONNX, in onnxruntime sessions (thread-safe ``run``)."""

    def __init__(self, paths: tuple[Path, Path, Path], threads: int | None = None) -> None:
        # Detection runs in every loader thread at once (the pipeline's 2 by default).
        self.sessions = [ort_session(p, threads, parallel=LOADER_THREADS) for p in paths]

    def _run(self, i: int, x: np.ndarray) -> tuple[np.ndarray, ...]:
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return tuple(self.sessions[i].run(None, {"input": nchw}))

    def pnet(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(0, x)

    def rnet(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(1, x)

    def onet(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(2, x)


#: Loader threads that run detection at once (the pipeline's default ``workers``).
LOADER_THREADS = 2


# -- the cascade -------------------------------------------------------------------------------


def pyramid_scales(height: int, width: int, min_face_size: int) -> list[float]:
    """facenet-pytorch's pyramid: the first level maps a ``min_face_size`` face onto P-net's
    12 px window, each next one is ``PYRAMID_FACTOR`` smaller, down to a 12 px short side."""
    scale = 12.0 / min_face_size
    shortest = min(height, width) * scale
    scales = []
    while shortest >= 12:
        scales.append(scale)
        scale *= PYRAMID_FACTOR
        shortest *= PYRAMID_FACTOR
    return scales


def _bins(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Integral-image rows (or columns) bounding each of ``out`` adaptive-pooling bins of
    ``length`` pixels from ``start``: torch's ``floor(i L / out)`` .. ``ceil((i + 1) L / out)``.
    Shapes: ``start``, ``length`` (N,) -> (N, out) each."""
    i = np.arange(out)
    lo = start[:, None] + (i * length[:, None]) // out
    hi = start[:, None] - ((-(i + 1) * length[:, None]) // out)
    return lo, hi


def _normalise(sums: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Area averages as torch computes them (float32 ``sum / kh / kw``, which differs from
    ``sum / (kh * kw)`` in the last bit), then MTCNN's ``(x - 127.5) / 128``."""
    mean = sums.astype(np.float32) / rows.astype(np.float32) / cols.astype(np.float32)
    return (mean - np.float32(127.5)) * np.float32(0.0078125)


def integral_image(image: np.ndarray) -> np.ndarray:
    """(H + 1) x (W + 1) x 4 prefix sums of an RGB uint8 image (4th channel unused: 16-byte
    cells). int32 where the total fits (up to ~8 MP: every <= 640 px detection copy), else
    float64, exact for integers too."""
    depth = cv2.CV_32S if image.shape[0] * image.shape[1] * 255 < 2**31 else cv2.CV_64F
    return cv2.integral(cv2.cvtColor(image, cv2.COLOR_RGB2RGBA), sdepth=depth)


def _cells(integral: np.ndarray) -> np.ndarray:
    """The last axis (4 channels) as ONE opaque item: ``np.take`` of such items is ~10x
    faster than fancy-indexing rows of 4 numbers."""
    cell = np.dtype((np.void, 4 * integral.itemsize))
    return np.ascontiguousarray(integral).view(cell)[..., 0]


def _take(cells: np.ndarray, index: np.ndarray, dtype: np.dtype, axis: int | None = None):
    """Gather cells and view them as numbers again (..., 4)."""
    taken = np.take(cells, index, axis=axis)
    return taken.view(dtype).reshape(*taken.shape, 4)


def pyramid_level(integral: np.ndarray, height: int, width: int) -> torch.Tensor:
    """:func:`pyramid_level_array` as a 1 x 3 x h x w channels-last tensor (as facenet's: the
    same P-net kernels, bit-identical outputs)."""
    import torch

    level = torch.from_numpy(pyramid_level_array(integral, height, width)).permute(0, 3, 1, 2)
    return level.contiguous(memory_format=torch.channels_last)  # fixes the batch stride


def pyramid_level_array(integral: np.ndarray, height: int, width: int) -> np.ndarray:
    """The whole image area-resampled to ``height`` x ``width`` (== ``interpolate(mode="area")``
    of the float image), normalised: 1 x h x w x 3 float32."""
    h_img, w_img = integral.shape[0] - 1, integral.shape[1] - 1
    zero = np.zeros(1, np.int64)
    r0, r1 = (b[0] for b in _bins(zero, np.array([h_img]), height))
    c0, c1 = (b[0] for b in _bins(zero, np.array([w_img]), width))
    band = integral[r1] - integral[r0]  # row-band sums of the column prefix sums: h x (W+1) x 4
    cells = _cells(band)
    sums = _take(cells, c1, band.dtype, axis=1) - _take(cells, c0, band.dtype, axis=1)
    level = _normalise(sums[..., :3], (r1 - r0)[:, None, None], (c1 - c0)[None, :, None])
    return level[None]


def crop_patches(
    integral: np.ndarray, y: np.ndarray, ey: np.ndarray, x: np.ndarray, ex: np.ndarray, size: int
) -> torch.Tensor:
    """:func:`crop_patches_array` as an N x 3 x size x size tensor (channels-last memory)."""
    import torch

    return torch.from_numpy(crop_patches_array(integral, y, ey, x, ex, size)).permute(0, 3, 1, 2)


def crop_patches_array(
    integral: np.ndarray, y: np.ndarray, ey: np.ndarray, x: np.ndarray, ex: np.ndarray, size: int
) -> np.ndarray:
    """All candidates' crops (rows ``y - 1 .. ey - 1``, columns ``x - 1 .. ex - 1``, the
    1-based inclusive convention of facenet-pytorch's ``pad``) area-resampled to ``size`` x
    ``size`` at once from the integral image, normalised: N x size x size x 3 float32."""
    r0, r1 = _bins(y - 1, ey - y + 1, size)
    c0, c1 = _bins(x - 1, ex - x + 1, size)
    cells = _cells(integral).reshape(-1)
    stride = integral.shape[1]

    def at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return _take(cells, rows[:, :, None] * stride + cols[:, None, :], integral.dtype)

    sums = at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)
    return _normalise(sums[..., :3], (r1 - r0)[:, :, None, None], (c1 - c0)[:, None, :, None])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy IoU suppression, torchvision's ``nms``: areas without +1, best score first,
    a box goes when its IoU with a kept one is above ``threshold``. Indices in keep order.

    Up to ``_NMS_MATRIX`` boxes, all IoUs at once and a cheap Python pass over rows (P-net's
    candidate lists: tens to hundreds); beyond, one vectorised round per kept box.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    # torchvision compares the float32 IoU with the double threshold: v > t exactly when v
    # exceeds the largest float32 <= t.
    limit = np.float32(threshold)
    if limit > threshold:
        limit = np.nextafter(limit, np.float32(-np.inf))
    areas = (x2 - x1) * (y2 - y1)
    zero = np.float32(0.0)
    if len(order) <= _NMS_MATRIX:
        w = np.maximum(zero, np.minimum.outer(x2, x2) - np.maximum.outer(x1, x1))
        h = np.maximum(zero, np.minimum.outer(y2, y2) - np.maximum.outer(y1, y1))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            over = inter / (areas[:, None] + areas[None, :] - inter) > limit
        suppressed = np.zeros(len(order), bool)
        keep = []
        for i in range(len(order)):
            if not suppressed[i]:
                keep.append(i)
                suppressed |= over[i]
        return order[keep]
    keep = []
    rest = np.arange(len(order))
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        rest = rest[~(iou > limit)]
    return order[keep]


#: Largest candidate list whose IoU matrix :func:`nms` builds (1024^2 float32: 4 MB each).
_NMS_MATRIX = 1024


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch's final suppression ('Min': overlap over the smaller area, +1 pixel
    areas, quicksort order from the lowest score up), so ties resolve as there."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / np.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``rerec``: each box becomes the square of its longer side, same centre."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
    boxes[:, 1] = boxes[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch's ``bbreg``: offsets in units of the (+1 pixel) box size."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = np.stack(
        [
            boxes[:, 0] + reg[:, 0] * w,
            boxes[:, 1] + reg[:, 1] * h,
            boxes[:, 2] + reg[:, 2] * w,
            boxes[:, 3] + reg[:, 3] * h,
        ],
        axis=1,
    )
    return boxes


def _crop_bounds(
    boxes: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """facenet-pytorch's ``pad`` (truncate, clamp to the image, 1-based) and which crops are
    non-empty (facenet-pytorch silently drops empty ones, misaligning its candidate list;
    here those candidates are dropped with their crops)."""
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(b[:, 0], 1)
    y = np.maximum(b[:, 1], 1)
    ex = np.minimum(b[:, 2], width)
    ey = np.minimum(b[:, 3], height)
    ok = (ey > y - 1) & (ex > x - 1)
    return ok, (y[ok], ey[ok], x[ok], ex[ok])


def _stage_one(
    image_integral: np.ndarray,
    height: int,
    width: int,
    pnet: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    min_face_size: int,
    threshold: float,
) -> np.ndarray:
    """P-net over the pyramid: candidates (N x 9: box, score, 4 regressions) after the
    per-level (IoU 0.5) and cross-level (0.7) suppressions, regressed and squared (N x 5)."""
    per_level = []
    for scale in pyramid_scales(height, width, min_face_size):
        level = pyramid_level_array(image_integral, int(height * scale + 1), int(width * scale + 1))
        reg, probs = pnet(level)
        prob = probs[0, 1]
        ys, xs = np.nonzero(prob >= threshold)
        if ys.size == 0:
            continue
        reg = reg[0]
        bb = np.stack([xs, ys], axis=1).astype(np.float32)
        q1 = np.floor((2 * bb + 1) / np.float32(scale))
        q2 = np.floor((2 * bb + 12) / np.float32(scale))
        cand = np.concatenate(
            [q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1, dtype=np.float32
        )
        per_level.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
    if not per_level:
        return np.zeros((0, 5), np.float32)
    boxes = np.concatenate(per_level)
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    out = np.stack(
        [
            boxes[:, 0] + boxes[:, 5] * regw,
            boxes[:, 1] + boxes[:, 6] * regh,
            boxes[:, 2] + boxes[:, 7] * regw,
            boxes[:, 3] + boxes[:, 8] * regh,
            boxes[:, 4],
        ],
        axis=1,
    )
    return _square(out)


def detect_faces(
    image: np.ndarray,
    nets: TorchNets | OnnxNets,
    min_face_size: int,
    thresholds: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MTCNN on an H x W x 3 uint8 RGB image, facenet-pytorch's ``detect_face`` semantics
    (pyramid factor 0.709, suppressions 0.5 / 0.7 / 0.7 / 'Min' 0.7).

    Returns (boxes N x 4, probabilities N, landmarks N x 5 x 2) as float64, best first.
    ``nets``: :class:`TorchNets` (call under ``torch.inference_mode()``) or :class:`OnnxNets`.
    """
    height, width = image.shape[:2]
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    integral = integral_image(image)

    boxes = _stage_one(integral, height, width, nets.pnet, min_face_size, thresholds[0])

    # R-net on 24 x 24 crops of every surviving candidate, in one batch.
    ok, bounds = _crop_bounds(boxes, width, height)
    boxes = boxes[ok]
    if len(boxes) == 0:
        return empty
    reg, probs = nets.rnet(crop_patches_array(integral, *bounds, 24))
    score = probs[:, 1]
    keep = score > thresholds[1]
    boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
    reg = reg[keep]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = _square(_regress(boxes[pick], reg[pick]))

    # O-net on 48 x 48 crops: final score, box regression, landmarks.
    ok, bounds = _crop_bounds(boxes, width, height)
    boxes = boxes[ok]
    if len(boxes) == 0:
        return empty
    reg, marks, probs = nets.onet(crop_patches_array(integral, *bounds, 48))
    score = probs[:, 1]
    keep = score > thresholds[2]
    boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
    marks = marks[keep]
    reg = reg[keep]
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    points_x = w[:, None] * marks[:, :5] + boxes[:, 0, None] - 1
    points_y = h[:, None] * marks[:, 5:] + boxes[:, 1, None] - 1
    points = np.stack([points_x, points_y], axis=2)
    boxes = _regress(boxes, reg)
    pick = nms_min(boxes[:, :4], boxes[:, 4], 0.7)
    boxes, points = boxes[pick], points[pick]
    order = np.argsort(boxes[:, 4])[::-1]  # facenet-pytorch's MTCNN.detect order
    boxes, points = boxes[order], points[order]
    return (
        boxes[:, :4].astype(np.float64),
        boxes[:, 4].astype(np.float64),
        points.astype(np.float64),
    )
