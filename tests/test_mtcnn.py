"""Our MTCNN driver (``detector=mtcnn``) against facenet-pytorch's (``mtcnn_facenet``): same
weights, same options, so the same faces, boxes and landmarks (float noise only), on real
photos and on composite multi-face pictures; and its start-up stays free of facenet_pytorch
and torchvision."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn.functional import interpolate

from agegender.faces import build_detector
from agegender.faces.mtcnn import (
    MTCNNDetector,
    crop_patches,
    integral_image,
    nms,
    nms_min,
    pyramid_level,
)
from agegender.faces.registry import detector_arguments
from agegender.images import load_image

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ("astronaut.jpg", "camera.png", "obama.jpg", "biden.jpg")
#: Our boxes/landmarks vs facenet-pytorch's: the networks see bit-identical inputs and differ
#: only in float summation order (channels-last kernels): 1e-4 px measured. 0.01 px is still
#: 100x below a pixel and catches any real divergence (a different crop, a missed candidate).
PX_TOL = 0.01


@pytest.fixture(scope="module")
def ours() -> MTCNNDetector:
    return build_detector("mtcnn")


@pytest.fixture(scope="module")
def ref():  # noqa: ANN201 (FacenetMTCNNDetector imports facenet-pytorch)
    return build_detector("mtcnn_facenet")


def _image(seed: int = 0, h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _assert_same_faces(a: list, b: list) -> None:
    assert len(a) == len(b), (a, b)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa.box, fb.box, atol=PX_TOL)
        np.testing.assert_allclose(fa.landmarks, fb.landmarks, atol=PX_TOL)
        assert abs(fa.score - fb.score) < 1e-5


# -- the exact building blocks ---------------------------------------------------------------


@pytest.mark.parametrize("size", [(145, 193), (103, 137), (13, 17), (24, 24)])
def test_pyramid_level_is_torch_area_interpolation_bit_for_bit(size) -> None:
    image = _image(1, 480, 640)
    ref = interpolate(
        torch.as_tensor(image).unsqueeze(0).permute(0, 3, 1, 2).float(), size, mode="area"
    )
    ref = (ref - 127.5) * 0.0078125
    got = pyramid_level(integral_image(image), *size)
    assert got.shape == ref.shape and torch.equal(got, ref)


def test_crop_patches_match_one_by_one_resampling() -> None:
    """Crops larger and smaller than the output (down- and upsampling), at the image edge."""
    image = _image(2, 300, 400)
    y = np.array([1, 37, 200, 5])
    ey = np.array([300, 50, 260, 6])
    x = np.array([1, 55, 390, 100])
    ex = np.array([250, 60, 400, 180])
    whole = torch.as_tensor(image).permute(2, 0, 1).unsqueeze(0).float()
    for size in (24, 48):
        got = crop_patches(integral_image(image), y, ey, x, ex, size)
        for k in range(len(y)):
            crop = whole[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]]
            ref = (interpolate(crop, (size, size), mode="area") - 127.5) * 0.0078125
            assert torch.equal(got[k : k + 1], ref), (size, k)


def test_float64_integral_of_big_images_gives_the_same_inputs() -> None:
    """Over ~8 MP (``max_side=None`` on a big photo) the sums leave int32: float64 cells."""
    image = _image(5, 200, 300)
    wide = cv2.integral(cv2.cvtColor(image, cv2.COLOR_RGB2RGBA), sdepth=cv2.CV_64F)
    narrow = integral_image(image)
    assert narrow.dtype == np.int32 and wide.dtype == np.float64
    assert torch.equal(pyramid_level(wide, 61, 91), pyramid_level(narrow, 61, 91))
    bounds = (np.array([3, 50]), np.array([150, 90]), np.array([1, 100]), np.array([120, 300]))
    assert torch.equal(crop_patches(wide, *bounds, 48), crop_patches(narrow, *bounds, 48))


def test_nms_matches_torchvision_and_facenet() -> None:
    from facenet_pytorch.models.utils.detect_face import nms_numpy
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(3)
    for n in (1, 5, 60, 300, 1100):  # 1100: past the IoU-matrix size
        xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
        wh = rng.uniform(5, 60, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        for threshold in (0.5, 0.7, 0.3):  # float32(0.3) rounds up
            want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
            np.testing.assert_array_equal(nms(boxes, scores, threshold), want)
            want_min = nms_numpy(boxes, scores, threshold, "Min")
            np.testing.assert_array_equal(nms_min(boxes, scores, threshold), want_min)


# -- same faces as facenet-pytorch -----------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_same_faces_as_facenet_on_the_samples(ours, ref, samples_dir: Path, name: str) -> None:
    image = load_image(samples_dir / name)
    found = ours.detect(image)
    assert len(found) == 1
    _assert_same_faces(found, ref.detect(image))


def test_same_candidates_at_other_settings(samples_dir: Path) -> None:
    """facenet-pytorch's own defaults (min face 20, P-net 0.6), full size: more candidates and
    pyramid levels, still the same faces."""
    options = {"min_face_size": 20, "thresholds": (0.6, 0.7, 0.7), "min_score": 0.5}
    ours = build_detector("mtcnn", **options)
    ref = build_detector("mtcnn_facenet", **options)
    image = load_image(samples_dir / "obama.jpg")
    _assert_same_faces(ours.detect(image), ref.detect(image))


def _composites(ref, samples_dir: Path) -> list[tuple[np.ndarray, list[tuple]]]:
    """Face regions of the samples (2x their MTCNN box) pasted at 45-160 px face widths on a
    gradient, noise and blurred blocks; ground truth = the pasted MTCNN box."""
    rng = np.random.default_rng(7)
    sources = []
    for name in SAMPLES:
        image = load_image(samples_dir / name)
        x1, y1, x2, y2 = ref.detect(image)[0].box
        side = 2 * max(x2 - x1, y2 - y1)
        cx1, cy1 = int(max(0, (x1 + x2 - side) / 2)), int(max(0, (y1 + y2 - side) / 2))
        crop = image[cy1 : int((y1 + y2 + side) / 2), cx1 : int((x1 + x2 + side) / 2)]
        sources.append((crop, np.array([x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1])))
    yy, xx = np.mgrid[0:480, 0:640]
    backgrounds = [
        np.stack([xx * 255 // 640, yy * 255 // 480, np.full_like(xx, 90)], 2).astype(np.uint8),
        cv2.resize(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (640, 480)),
        cv2.GaussianBlur(
            cv2.resize(
                rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                (640, 480),
                interpolation=cv2.INTER_NEAREST,
            ),
            (0, 0),
            9,
        ),
    ]
    slots = [(10, 10), (330, 10), (10, 250), (330, 250)]  # 4 quadrants of 300 x 220
    widths = [45, 60, 80, 100, 120, 160]
    out = []
    for i, background in enumerate(backgrounds):
        canvas, truth = background.copy(), []
        for j, (px, py) in enumerate(slots):
            crop, box = sources[(i + j) % len(sources)]
            scale = min(widths[(2 * i + j) % len(widths)] / (box[2] - box[0]), 210 / crop.shape[0])
            patch = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            canvas[py : py + patch.shape[0], px : px + patch.shape[1]] = patch
            truth.append(tuple(box * scale + [px, py, px, py]))
        out.append((canvas, truth))
    return out


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_composite_group_photos_recall_and_agreement(ours, ref, samples_dir: Path) -> None:
    hits = {"ours": 0, "facenet": 0}
    total = 0
    for image, truth in _composites(ref, samples_dir):
        found_ours, found_ref = ours.detect(image), ref.detect(image)
        _assert_same_faces(found_ours, found_ref)
        total += len(truth)
        for key, found in (("ours", found_ours), ("facenet", found_ref)):
            hits[key] += sum(any(_iou(t, f.box) >= 0.5 for f in found) for t in truth)
    assert total == 12
    assert hits["ours"] >= hits["facenet"]
    assert hits["ours"] >= 10, hits  # the composites do hold findable faces


# -- contract: no faces, odd inputs, threads, start-up ---------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((480, 640, 3), np.uint8),
        np.full((300, 300, 3), 255, np.uint8),
        _image(4, 480, 640),
    ],
    ids=["black", "white", "noise"],
)
def test_no_face_images_give_nothing(ours, image: np.ndarray) -> None:
    assert ours.detect(image) == []


@pytest.mark.parametrize("shape", [(39, 500, 3), (500, 39, 3), (1, 1, 3), (0, 0, 3)])
def test_images_smaller_than_min_face_size_give_nothing(ours, shape) -> None:
    assert ours.detect(np.zeros(shape, np.uint8)) == []


@pytest.mark.parametrize(
    "image",
    [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64, 3))],
    ids=["gray-2d", "rgba", "float"],
)
def test_non_rgb_uint8_is_rejected_as_before(ours, image: np.ndarray) -> None:
    """Grayscale/RGBA are converted by agegender.images.load_image, never by detectors."""
    with pytest.raises(ValueError):
        ours.detect(image)


def test_two_threads_at_once_give_the_sequential_results(ours, samples_dir: Path) -> None:
    assert ours.thread_safe is True  # the pipeline relies on it: no lock around detect
    images = [load_image(samples_dir / name) for name in SAMPLES]
    want = [ours.detect(image) for image in images]
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            for rep in range(3):
                for k, image in enumerate(images[tid::2] if rep % 2 else images):
                    got.setdefault((tid, rep, k), ours.detect(image))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for (tid, rep, k), faces in got.items():
        expected = want[tid::2][k] if rep % 2 else want[k]
        _assert_same_faces(faces, expected)


def test_default_detector_imports_neither_facenet_nor_torchvision() -> None:
    code = (
        "import sys, numpy as np\n"
        "from agegender.faces import build_detector\n"
        "d = build_detector('mtcnn')\n"
        "d.detect(np.zeros((120, 160, 3), np.uint8))\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "bad = sorted(roots & {'facenet_pytorch', 'torchvision'})\n"
        "print(type(d).__module__, bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["agegender.faces.mtcnn", "[]"], out.stdout + out.stderr


def test_both_implementations_take_the_same_options() -> None:
    ours = detector_arguments("mtcnn")
    assert ours.pop("backend") == "torch"  # ours also runs on onnxruntime
    assert ours == detector_arguments("mtcnn_facenet")
    with pytest.raises(ValueError, match="backend must be one of"):
        build_detector("mtcnn", backend="tensorrt")
    with pytest.raises(ValueError, match="thresholds"):
        build_detector("mtcnn", thresholds=(0.7, 0.7))


def test_onnxruntime_backend_finds_the_same_faces(samples_dir: Path) -> None:
    """The exported nets (``python -m agegender.weights original`` writes them) in
    onnxruntime: the same faces as the torch nets, to float rounding."""
    from agegender.faces.mtcnn import resolve_mtcnn_backend
    from agegender.store import MTCNN_ONNX_NAMES as ONNX_NAMES
    from agegender.store import mtcnn_onnx_dir as onnx_dir
    from tests.conftest import require

    require(
        all((onnx_dir() / n).is_file() for n in ONNX_NAMES),
        f"MTCNN's ONNX nets are not in {onnx_dir()}: run `python -m agegender.weights original`",
    )
    torch_nets = build_detector("mtcnn", backend="torch")
    onnx_nets = build_detector("mtcnn", backend="onnxruntime")
    assert build_detector("mtcnn", backend="auto").backend == "onnxruntime"
    assert resolve_mtcnn_backend("auto", "cuda:0") == "torch"
    composites = [image for image, _ in _composites(torch_nets, samples_dir)]
    for image in [load_image(samples_dir / name) for name in SAMPLES] + composites:
        a, b = torch_nets.detect(image), onnx_nets.detect(image)
        assert len(a) == len(b) >= 1
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x.box, y.box, atol=1e-3)
            np.testing.assert_allclose(x.landmarks, y.landmarks, atol=1e-3)
            assert abs(x.score - y.score) < 1e-5
