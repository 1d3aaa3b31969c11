"""The shared preprocessing presets: crop geometry and dtype conventions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from agegender.models import LeviHassnerNet
from agegender.models.backbones import InceptionResnetAgeGender
from agegender.transforms import EvalPreset, TrainPreset, face_to_tensor, resize_square

SPEC = LeviHassnerNet.face_spec


def _face(h: int = 256, w: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_eval_centre_crop_matches_caffe_offset() -> None:
    face = _face()
    out = EvalPreset(SPEC)(face)
    # Caffe/OpenCV crop 227 of 256 at offset (256 - 227) // 2 = 14.
    expected = torch.from_numpy(face[14:241, 14:241]).permute(2, 0, 1).float()
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_ten_crop_contains_corners_centre_and_mirrors() -> None:
    face = _face()
    crops = EvalPreset(SPEC, ten_crop=True)(face)
    assert crops.shape == (10, 3, 227, 227)
    tl = torch.from_numpy(face[:227, :227]).permute(2, 0, 1).float()
    assert any(torch.equal(c, tl) for c in crops)
    assert any(torch.equal(c, tl.flip(-1)) for c in crops)


def test_train_crop_is_a_window_of_the_face() -> None:
    face = _face()
    out = TrainPreset(SPEC)(face)
    assert out.shape == (3, 227, 227) and out.max() <= 255


def test_non_square_input_is_resized_to_the_face_size() -> None:
    assert EvalPreset(SPEC)(_face(300, 200)).shape == (3, 227, 227)
    assert EvalPreset(InceptionResnetAgeGender.face_spec)(_face()).shape == (3, 160, 160)


def test_face_to_tensor_rejects_wrong_layout() -> None:
    import pytest

    with pytest.raises(ValueError):
        face_to_tensor(np.zeros((256, 256), dtype=np.uint8))


def _photos_faces() -> list[np.ndarray]:
    """Real pixels at sizes the presets resize from (aligned 256, other face sizes, odd)."""
    from agegender.images import load_image

    samples = Path(__file__).resolve().parents[1] / "data" / "samples"
    image = load_image(samples / "astronaut.jpg")
    return [
        image[:256, :256],
        image[40:340, 100:400],  # 300 -> 256: downscale with antialias
        image[10:170, 50:210],  # 160 -> 256: upscale
        image[:271, :263],  # not square
        _face(),
    ]


def test_presets_equal_torchvision_v2() -> None:
    """The presets are torch-only for start-up time; they must stay pixel-equal to the
    torchvision v2 pipeline they replaced (Resize antialias, CenterCrop / TenCrop, ToDtype)."""
    from torchvision.transforms import v2

    for ten_crop in (False, True):
        crop = v2.TenCrop(SPEC.crop_size) if ten_crop else v2.CenterCrop(SPEC.crop_size)
        reference = v2.Compose(
            [
                v2.Resize((SPEC.resize_size, SPEC.resize_size), antialias=True),
                crop,
                v2.ToDtype(torch.float32, scale=False),
            ]
        )
        ours = EvalPreset(SPEC, ten_crop=ten_crop)
        for face in _photos_faces():
            expected = reference(face_to_tensor(face))
            expected = torch.stack(list(expected)) if ten_crop else expected
            assert torch.equal(ours(face), expected), (ten_crop, face.shape)
    resize = v2.Resize((SPEC.resize_size, SPEC.resize_size), antialias=True)
    for face in _photos_faces():
        tensor = face_to_tensor(face)
        assert torch.equal(resize_square(tensor, SPEC.resize_size), resize(tensor))


def test_prediction_imports_no_torchvision() -> None:
    """Building the default classifier and preprocessing a face never imports torchvision
    (its import costs ~2 s of prediction's cold start: torchvision.models, torch._dynamo)."""
    code = (
        "import sys, numpy as np, torch\n"
        "from agegender.runtime.torch_classifier import FaceClassifier\n"
        "from agegender.checkpoints import load_model\n"
        "from agegender.models import build_model\n"
        "c = FaceClassifier(build_model('levi_hassner'), oversample=True)\n"
        "c.predict(c.preprocess(np.zeros((256, 256, 3), np.uint8))[None])\n"
        "bad = [m for m in ('torchvision', 'facenet_pytorch', 'lightning', 'pytorch_lightning')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
