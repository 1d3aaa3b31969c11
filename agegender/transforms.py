"""The one preprocessing path from an aligned face to a network input.

Training, evaluation and prediction all go through these presets (defined side by side,
as torchvision's classification references do), so the crop, flip and dtype conventions
cannot drift apart. Input: an aligned face as produced by :mod:`agegender.faces`
(RGB uint8, H x W x 3 numpy array or 3 x H x W uint8 tensor, normally 256 x 256).
Output: float32 RGB in [0, 255], the convention every model in :mod:`agegender.models`
normalises itself (no mean subtraction here, on purpose).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from agegender.models.levi_hassner import FACE_SIZE, INPUT_SIZE


def face_to_tensor(face: np.ndarray | torch.Tensor) -> torch.Tensor:
    """H x W x 3 uint8 RGB array -> 3 x H x W uint8 tensor (no copy of the pixel values)."""
    if isinstance(face, torch.Tensor):
        return face
    if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB face, got {face.dtype} {face.shape}")
    return torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)


class TrainPreset:
    """Paper training augmentation: (resize to a square) random crop + horizontal mirror."""

    def __init__(self, crop_size: int = INPUT_SIZE, resize_size: int = FACE_SIZE) -> None:
        self.transform = v2.Compose(
            [
                v2.Resize((resize_size, resize_size), antialias=True),
                v2.RandomCrop(crop_size),
                v2.RandomHorizontalFlip(0.5),
                v2.ToDtype(torch.float32, scale=False),
            ]
        )

    def __call__(self, face: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.transform(face_to_tensor(face))


class EvalPreset:
    """Paper test protocol: centre crop (3 x S x S), or 10-crop over-sampling (10 x 3 x S x S:
    four corners and centre, each also mirrored; the caller averages the probabilities)."""

    def __init__(
        self, crop_size: int = INPUT_SIZE, resize_size: int = FACE_SIZE, ten_crop: bool = False
    ) -> None:
        self.ten_crop = ten_crop
        crop = v2.TenCrop(crop_size) if ten_crop else v2.CenterCrop(crop_size)
        self.transform = v2.Compose(
            [
                v2.Resize((resize_size, resize_size), antialias=True),
                crop,
                v2.ToDtype(torch.float32, scale=False),
            ]
        )

    def __call__(self, face: np.ndarray | torch.Tensor) -> torch.Tensor:
        out = self.transform(face_to_tensor(face))
        # TenCrop yields a tuple of crops; v2 transforms map over it, so stack once at the end.
        return torch.stack(list(out)) if self.ten_crop else out
