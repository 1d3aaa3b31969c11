"""The shared preprocessing presets: crop geometry and dtype conventions."""

from __future__ import annotations

import numpy as np
import torch

from agegender.models import LeviHassnerNet
from agegender.models.backbones import InceptionResnetAgeGender
from agegender.transforms import EvalPreset, TrainPreset, face_to_tensor

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
