"""The one preprocessing path from an aligned face to a network input.

Training, evaluation and prediction all go through these presets (defined side by side,
as torchvision's classification references do), so the crop, flip and dtype conventions
cannot drift apart. Input: an aligned face as produced by :mod:`agegender.faces`
(RGB uint8, H x W x 3 numpy array or 3 x H x W uint8 tensor, normally the spec's face size).
The sizes come from the network's :class:`agegender.spec.FaceSpec` (``resize_size``,
``crop_size``): the presets take the spec, never sizes of their own.
Output: float32 RGB in [0, 255], the convention every model in :mod:`agegender.models`
normalises itself (no mean subtraction here, on purpose).

``with_origin`` also says where each crop came from in the resized face (an int64 ``origin``
of ``top, left, mirrored``): a net with a per-pixel mean image subtracts the mean at that
source position before the mirror, as Caffe's ``DataTransformer`` did.

The presets are plain torch (resize: ``interpolate`` on uint8, bilinear with antialias, the
kernel torchvision's ``v2.Resize`` calls; crops: slices at :func:`ten_crop_origins`), not
torchvision transforms, because importing torchvision imports its models and torch._dynamo
(~2 s before prediction's first photo); tests/test_transforms.py holds them equal to v2's
Resize, CenterCrop and TenCrop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from agegender.spec import FaceSpec, centre_offset


def face_to_tensor(face: np.ndarray | torch.Tensor) -> torch.Tensor:
    """H x W x 3 uint8 RGB array -> 3 x H x W uint8 tensor (no copy of the pixel values)."""
    if isinstance(face, torch.Tensor):
        return face
    if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB face, got {face.dtype} {face.shape}")
    return torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1)


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """3 x H x W uint8 -> 3 x size x size uint8: bilinear with antialias (torchvision's
    ``v2.Resize((size, size), antialias=True)`` on uint8 CPU tensors runs this same kernel)."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(
        image.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0]


def centre_origin(resize_size: int, crop_size: int) -> torch.Tensor:
    """Origin (top, left, mirrored) of the centre crop: int64 tensor of 3."""
    c = centre_offset(resize_size, crop_size)
    return torch.tensor([c, c, 0], dtype=torch.int64)


def ten_crop_origins(resize_size: int, crop_size: int) -> torch.Tensor:
    """10 x 3 origins (top, left, mirrored) of :class:`EvalPreset`'s 10 crops, in TenCrop's
    order: five_crop(img) (top-left, top-right, bottom-left, bottom-right, centre), then
    five_crop(hflip(img)). A crop of the mirrored face is the mirror of the crop at the
    mirrored columns, so those sources are left <-> right (and the centre's left is
    ``S - crop - c``, 15 not 14 for 256 -> 227)."""
    far, c = resize_size - crop_size, centre_offset(resize_size, crop_size)
    plain = [(0, 0), (0, far), (far, 0), (far, far), (c, c)]
    rows = [(top, left, 0) for top, left in plain]
    rows += [(top, far - left, 1) for top, left in plain]
    return torch.tensor(rows, dtype=torch.int64)


class TrainPreset:
    """Paper training augmentation: (resize to a square) random crop + horizontal mirror.

    The crop and flip are drawn here with torch's global RNG (torchvision's RandomCrop does
    not return the offsets it drew, and the mean image needs them); the draws come from the
    same RNG RandomCrop/RandomHorizontalFlip use, which Lightning's ``seed_everything`` and
    per-worker seeding make reproducible.
    """

    def __init__(self, spec: FaceSpec) -> None:
        crop_size, resize_size = spec.crop_size, spec.resize_size  # FaceSpec: crop <= resize
        self.crop_size, self.resize_size = crop_size, resize_size

    def with_origin(self, face: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (3 x S x S float32 crop, int64 origin: top, left, mirrored)."""
        image = resize_square(face_to_tensor(face), self.resize_size)
        room = self.resize_size - self.crop_size + 1
        top = int(torch.randint(0, room, (1,)).item())
        left = int(torch.randint(0, room, (1,)).item())
        mirrored = bool(torch.rand(1).item() < 0.5)
        out = image[:, top : top + self.crop_size, left : left + self.crop_size]
        if mirrored:
            out = out.flip(-1)
        origin = torch.tensor([top, left, int(mirrored)], dtype=torch.int64)
        return out.to(torch.float32), origin

    def __call__(self, face: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.with_origin(face)[0]


class EvalPreset:
    """Paper test protocol: centre crop (3 x S x S), or 10-crop over-sampling (10 x 3 x S x S:
    four corners and centre, each also mirrored; the caller averages the probabilities)."""

    def __init__(self, spec: FaceSpec, ten_crop: bool = False) -> None:
        self.crop_size, self.resize_size = spec.crop_size, spec.resize_size
        self.ten_crop = ten_crop
        self.origin = (
            ten_crop_origins(self.resize_size, self.crop_size)
            if ten_crop
            else centre_origin(self.resize_size, self.crop_size)
        )
        # The crops are cut at the origins the mean image is read at: they cannot disagree.
        self._cuts = [tuple(int(v) for v in row) for row in self.origin.reshape(-1, 3)]

    def __call__(self, face: np.ndarray | torch.Tensor) -> torch.Tensor:
        image = resize_square(face_to_tensor(face), self.resize_size)
        size = self.crop_size
        crops = []
        for top, left, mirrored in self._cuts:
            crop = image[:, top : top + size, left : left + size]
            crops.append(crop.flip(-1) if mirrored else crop)
        out = torch.stack(crops) if self.ten_crop else crops[0]
        return out.to(torch.float32)

    def with_origin(self, face: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (crop(s), origin: 3, or 10 x 3 in the crops' order); see :func:`ten_crop_origins`."""
        return self(face), self.origin.clone()
