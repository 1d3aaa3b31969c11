"""A network rewritten for export: N x 3 x S x S RGB in [0, 255] -> per-task probabilities.

The training/inference modules are written for speed in PyTorch; two of their ops do not
survive ONNX export as the same function, so the export copy replaces them with equivalents
(each tested to match the original to float rounding):

- :class:`~agegender.models.levi_hassner.CaffeLRN` sums shifted channel slices *in place*;
  traced, those in-place slice updates came out wrong (outputs up to 0.18 away from torch),
  and ``F.local_response_norm`` exports an ``If`` node that OpenCV's importer rejects.
  :class:`BandLRN` computes the same window sum as a 1 x 1 convolution with a constant
  banded matrix: plain ``Conv``, which every runtime has.
- The Caffe input step flips RGB to BGR with ``Tensor.flip`` (a negative-step ``Slice``
  that OpenCV mis-sizes); :class:`FixedInput` selects the channels with a constant index
  (``Gather``) and subtracts the mean the network was trained with: the channel means, or
  the centre crop of a per-pixel mean image.

The mean stays inside the graph (no caller can forget it or swap channels), and the outputs
are softmax probabilities, averaged by nothing: one crop per face (the single-crop protocol).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from agegender.models.levi_hassner import CaffeInput, CaffeLRN, CaffeMeanImage
from agegender.spec import centre_offset, face_spec_of


class BandLRN(nn.Module):
    """Caffe's across-channel LRN as ``x * (k + conv1x1(x^2, band * alpha / n)) ** -beta``."""

    def __init__(self, lrn: CaffeLRN, channels: int) -> None:
        super().__init__()
        self.k, self.beta = float(lrn.k), float(lrn.beta)
        index = np.arange(channels)
        band = np.abs(index[:, None] - index[None, :]) <= lrn.size // 2
        weight = band.astype(np.float32) * np.float32(lrn.alpha / lrn.size)
        self.register_buffer("band", torch.from_numpy(weight).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = nn.functional.conv2d(x * x, self.band)
        return x * (window + self.k).pow(-self.beta)


class FixedInput(nn.Module):
    """RGB [0, 255] -> the network's channel order minus its mean (a 1 x 3 x S x S or
    1 x 3 x 1 x 1 constant in that order)."""

    def __init__(self, order: list[int], mean: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))
        self.register_buffer("mean", mean.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.order) - self.mean


def _fixed_input(normalize: nn.Module, crop: int) -> FixedInput:
    if isinstance(normalize, CaffeInput):
        return FixedInput([2, 1, 0], normalize.mean_rgb.flip(1))
    if isinstance(normalize, CaffeMeanImage):
        size = normalize.mean_image.shape[-1]
        c = centre_offset(size, crop)
        centre = normalize.mean_image[:, c : c + crop, c : c + crop].flip(0)[None]
        return FixedInput([2, 1, 0], centre)
    raise TypeError(f"no export form for {type(normalize).__name__}")


def _replace_lrns(module: nn.Module) -> None:
    """Swap every CaffeLRN for a BandLRN sized by the conv before it (LeviHassnerTrunk's
    norm1 follows conv1, norm2 follows conv2)."""
    channels: int | None = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            channels = child.out_channels
        if isinstance(child, CaffeLRN):
            if channels is None:
                raise TypeError(f"{name}: an LRN without a convolution before it")
            setattr(module, name, BandLRN(child, channels))
        else:
            _replace_lrns(child)


class ExportableNet(nn.Module):
    """``forward(x)`` -> one probability tensor per task (``tasks`` order), for export.

    Built from any agegender network (a deep copy; the original is untouched), in float32
    and eval mode. Levi-Hassner nets get :class:`BandLRN` and :class:`FixedInput`; the
    backbone nets (ResNet, InceptionResnetV1) export as they are.
    """

    def __init__(self, model: nn.Module, temperatures: Mapping[str, float] | None = None) -> None:
        super().__init__()
        #: Temperature scaling baked into the graph: each task's logits / T before softmax.
        self.temperatures = {task: float(t) for task, t in (temperatures or {}).items()}
        net = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
        self.face_spec = face_spec_of(net)
        self.tasks: tuple[str, ...] = tuple(getattr(net, "tasks", ("age", "gender")))
        if isinstance(getattr(net, "normalize", None), (CaffeInput, CaffeMeanImage)):
            net.normalize = _fixed_input(net.normalize, self.face_spec.crop_size)
            net.takes_origin = False  # the fixed input holds the centre crop's mean
        _replace_lrns(net)
        self.net = net
        # eval for good: TorchScript saves each module's training flag, and a traced net
        # loaded with training=True at its root gave other outputs than the one traced.
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.net(x)
        return tuple(
            torch.softmax(logits[task] / self.temperatures.get(task, 1.0), dim=1)
            for task in self.tasks
        )
