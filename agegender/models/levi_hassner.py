"""The Levi-Hassner network, layer for layer as in the original Caffe definition.

Spec: ``age_deploy.prototxt`` / ``gender_deploy.prototxt`` and the train prototxt of
GilLevi/AgeGenderDeepLearning. Layer names (conv1..fc8) are kept so that the original
``.caffemodel`` blobs map onto this module by name (see :mod:`agegender.weights`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from agegender.labels import TASK_NUM_CLASSES
from agegender.spec import CAFFE_FACE_SPEC, FaceSpec, centre_offset

#: How the net subtracts the mean: ``channel`` (the spec's means; the original deployed nets)
#: or ``image`` (a per-pixel mean image, as the paper's training prototxt's ``mean_file``).
MEAN_MODES: tuple[str, ...] = ("channel", "image")


class CaffeInput(nn.Module):
    """RGB [0, 255] -> BGR minus the Caffe channel means (what the original nets were fed).

    Living inside the model means no caller can forget the mean or the channel swap: the
    train/serve skew that breaks most re-implementations of this paper.
    """

    def __init__(self, mean_bgr: Sequence[float] = CAFFE_FACE_SPEC.mean) -> None:
        super().__init__()
        # device="cpu": a constant, real even when the net is built on the meta device
        # (agegender.checkpoints builds there and assigns the checkpoint's tensors).
        mean_rgb = torch.tensor(list(mean_bgr)[::-1], dtype=torch.float32, device="cpu")
        mean_rgb = mean_rgb.view(1, 3, 1, 1)
        self.register_buffer("mean_rgb", mean_rgb, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean_rgb).flip(1)


class CaffeMeanImage(nn.Module):
    """RGB [0, 255] crop -> BGR minus a per-pixel mean image, exactly as Caffe's
    ``DataTransformer`` with ``mean_file``: the mean is taken at the crop's *source* position
    and the result mirrored, ``out = mirror?(crop(image - mean))``.

    The mean (3 x S x S RGB, S = the face size the crops come from) is a persistent buffer, so
    every checkpoint carries the mean it was trained with and eval, predict and export cannot
    use another one. ``origin`` (N x 3 int: top, left, mirrored) says where each crop came
    from; ``None`` means the (unmirrored) centre crop, the single-crop test protocol. Until
    :meth:`fill` is called it holds the Caffe channel means at every pixel.
    """

    def __init__(
        self,
        size: int = CAFFE_FACE_SPEC.resize_size,
        fill_bgr: Sequence[float] = CAFFE_FACE_SPEC.mean,
    ) -> None:
        super().__init__()
        mean = torch.tensor(list(fill_bgr)[::-1], dtype=torch.float32).view(3, 1, 1)
        self.register_buffer("mean_image", mean.expand(3, size, size).clone(), persistent=True)

    @torch.no_grad()
    def fill(self, mean_image: torch.Tensor) -> None:
        """Set the mean image (3 x S x S RGB, pixel units), e.g. the training split's."""
        if tuple(mean_image.shape) != tuple(self.mean_image.shape):
            raise ValueError(
                f"mean image must be {tuple(self.mean_image.shape)} (3 x H x W RGB), "
                f"got {tuple(mean_image.shape)}"
            )
        if not torch.isfinite(mean_image).all():
            raise ValueError("mean image has non-finite values")
        self.mean_image.copy_(mean_image)

    def crops(self, origin: torch.Tensor, crop: int) -> torch.Tensor:
        """N x 3 x crop x crop: the mean under each crop, mirrored where the crop was."""
        origin = origin.to(device=self.mean_image.device, dtype=torch.long).reshape(-1, 3)
        size = self.mean_image.shape[-1]
        # Checked on CPU only: on a GPU the check would synchronise every step (origins come
        # from the presets; an index past the edge is a device-side assert there anyway).
        if origin.device.type == "cpu" and (
            (origin[:, :2] < 0).any() or (origin[:, :2] > size - crop).any()
        ):
            raise ValueError(f"crop origins outside the {size} x {size} mean image: {origin}")
        steps = torch.arange(crop, device=origin.device)
        rows = origin[:, 0:1] + steps
        cols = origin[:, 1:2] + steps
        cols = torch.where(origin[:, 2:3] != 0, cols.flip(1), cols)
        # 3 x N x crop x crop gather, then sample-first
        return self.mean_image[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)

    def forward(self, x: torch.Tensor, origin: torch.Tensor | None = None) -> torch.Tensor:
        crop = x.shape[-1]
        if origin is None:
            c = centre_offset(self.mean_image.shape[-1], crop)
            mean = self.mean_image[None, :, c : c + crop, c : c + crop]
        else:
            if origin.reshape(-1, 3).shape[0] != x.shape[0]:
                raise ValueError(f"{x.shape[0]} crops but {origin.reshape(-1, 3).shape[0]} origins")
            mean = self.crops(origin, crop)
        return (x - mean).flip(1)


class CaffeLRN(nn.Module):
    """Caffe's across-channel LRN: ``x / (k + alpha / n * sum_{n neighbours} x^2) ** beta``.

    The same function as ``nn.LocalResponseNorm(n, alpha, beta, k)`` (tested against it).
    Written out because torch's version pads and pools a 5-D view, which costs ~3x more on
    the channels_last tensors this net runs on (~13% of an inference forward here); summing
    shifted channel slices stays in the memory layout and autograd handles it.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = x.square()
        window = squares.clone()
        for d in range(1, self.size // 2 + 1):  # channels c-d .. c+d, zero beyond the edges
            window[:, d:] += squares[:, :-d]
            window[:, :-d] += squares[:, d:]
        return x * (window * (self.alpha / self.size) + self.k).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class LeviHassnerTrunk(nn.Module):
    """conv1..fc7 of the Levi-Hassner net: 3x227x227 (normalised) -> 512 features.

    Caffe rounds pooling output sizes up, hence ``ceil_mode=True`` (227 -> 56 -> 28 -> 14 -> 7,
    so fc6 sees 384 * 7 * 7 = 18816 inputs). Caffe's across-channel LRN (local_size 5,
    alpha 1e-4, beta 0.75, k 1) is :class:`CaffeLRN`.
    """

    out_features: int = 512

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, kernel_size=7, stride=4)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.norm1 = CaffeLRN(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, padding=2)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.norm2 = CaffeLRN(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, padding=1)
        self.pool5 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.fc6 = nn.Linear(384 * 7 * 7, 512)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Linear(512, 512)
        self.drop7 = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu(self.conv1(x))))
        x = self.norm2(self.pool2(self.relu(self.conv2(x))))
        x = self.pool5(self.relu(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = self.drop6(self.relu(self.fc6(x)))
        return self.drop7(self.relu(self.fc7(x)))

    @torch.no_grad()
    def reset_parameters_caffe(self) -> None:
        """The paper's initialisation (train prototxt): N(0, 0.01) convs, N(0, 0.005) fc6/fc7,
        bias 1 on conv2, fc6 and fc7 (keeps those ReLUs alive early on), 0 elsewhere."""
        for name, std, bias in (
            ("conv1", 0.01, 0.0),
            ("conv2", 0.01, 1.0),
            ("conv3", 0.01, 0.0),
            ("fc6", 0.005, 1.0),
            ("fc7", 0.005, 1.0),
        ):
            layer = getattr(self, name)
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.constant_(layer.bias, bias)


class LeviHassnerNet(nn.Module):
    """Levi-Hassner age/gender network with a ``shared`` or ``separate`` trunk.

    ``separate`` is the paper (and the original weights): one full network per task.
    ``shared`` is the multi-task variant: one trunk, one fc8 head per task.
    ``mean``: ``channel`` subtracts the Caffe channel means (the original deployed nets and
    their parity with OpenCV); ``image`` subtracts a per-pixel mean image held in the state
    dict (:class:`CaffeMeanImage`, filled from the training split at the start of training),
    as the paper's training did. Input/output convention: see :mod:`agegender.models`.
    """

    #: ``mean="image"`` nets carry a copy with ``mean_image=True`` (instance attribute).
    face_spec: FaceSpec = CAFFE_FACE_SPEC
    #: forward() takes ``origin`` (where each crop came from); callers check this flag.
    takes_origin: bool = True

    def __init__(
        self,
        mode: str = "separate",
        tasks: Sequence[str] = ("age", "gender"),
        dropout: float = 0.5,
        caffe_init: bool = True,
        mean: str = "channel",
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("shared", "separate"):
            raise ValueError(f"mode must be 'shared' or 'separate', got {mode!r}")
        if mean not in MEAN_MODES:
            raise ValueError(f"mean must be one of {MEAN_MODES}, got {mean!r}")
        unknown = set(tasks) - set(TASK_NUM_CLASSES)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {sorted(TASK_NUM_CLASSES)}")
        self.mode = mode
        self.tasks = tuple(tasks)
        self.mean = mean
        spec = type(self).face_spec
        if mean == "image":
            self.face_spec = dataclasses.replace(spec, mean_image=True)
        self.normalize: CaffeInput | CaffeMeanImage = (
            CaffeMeanImage(spec.resize_size, spec.mean)
            if mean == "image"
            else CaffeInput(spec.mean)
        )
        if mode == "shared":
            self.trunk = LeviHassnerTrunk(dropout)
        else:
            self.trunks = nn.ModuleDict({t: LeviHassnerTrunk(dropout) for t in self.tasks})
        # outputs per task: the label set's (num_classes), default 8 age buckets and 2 genders
        sizes = dict(TASK_NUM_CLASSES)
        for task, n in dict(num_classes or {}).items():
            if task not in TASK_NUM_CLASSES or int(n) < 2:
                raise ValueError(
                    f"num_classes: {task}={n} (tasks {sorted(TASK_NUM_CLASSES)}, >= 2)"
                )
            sizes[task] = int(n)
        self.heads = nn.ModuleDict(
            {t: nn.Linear(LeviHassnerTrunk.out_features, sizes[t]) for t in self.tasks}
        )
        if caffe_init:
            self.reset_parameters_caffe()

    def trunk_for(self, task: str) -> LeviHassnerTrunk:
        return self.trunk if self.mode == "shared" else self.trunks[task]

    @torch.no_grad()
    def reset_parameters_caffe(self) -> None:
        for task in self.tasks:
            self.trunk_for(task).reset_parameters_caffe()
            nn.init.normal_(self.heads[task].weight, 0.0, 0.01)
            nn.init.zeros_(self.heads[task].bias)

    def set_mean_image(self, mean_image: torch.Tensor) -> None:
        """Fill the per-pixel mean (3 x 256 x 256 RGB); only a ``mean="image"`` net has one."""
        if not isinstance(self.normalize, CaffeMeanImage):
            raise ValueError(f"this net subtracts {self.mean} means, not a mean image")
        self.normalize.fill(mean_image)

    def forward(
        self,
        x: torch.Tensor,
        origin: torch.Tensor | None = None,
        *,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``x``: N x 3 x 227 x 227 RGB crops; ``origin``: N x 3 (top, left, mirrored) of each
        crop in the 256 face, used by ``mean="image"`` (None = centre crops), ignored by
        channel means. ``tasks`` limits the output to those heads (default: all), and in
        ``separate`` mode runs only their trunks: a batch of age faces never passes through,
        nor trains, the gender network (the paper's two nets each saw only their own list)."""
        tasks = self.tasks if tasks is None else tuple(tasks)
        if isinstance(self.normalize, CaffeMeanImage):
            x = self.normalize(x, origin)
        else:
            x = self.normalize(x)
        if self.mode == "shared":
            features = self.trunk(x)
            return {t: self.heads[t](features) for t in tasks}
        return {t: self.heads[t](self.trunks[t](x)) for t in tasks}
