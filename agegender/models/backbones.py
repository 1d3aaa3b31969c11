"""Transfer-learning networks: torchvision ResNet-18/50 and facenet-pytorch InceptionResnetV1,
each with the same age/gender heads as the Levi-Hassner net.

They follow the package input convention (RGB in [0, 255], see :mod:`agegender.models`):
each one carries the normalisation its pretrained weights expect as its first layer. Every
network exposes ``backbone`` (the pretrained part, what fine-tuning freezes and gives a lower
learning rate) and ``heads`` (one linear layer per task), so optimiser construction and the
fine-tuning callback treat all of them alike.

Nothing here downloads or reads files: the constructors never pass ``weights=``/``pretrained=``
to the libraries (their downloads would hang offline). Pretrained weights are loaded into
:meth:`load_backbone_state` by the training package (``training/pretrained.py``), which owns
the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn
from torchvision import models as tv_models

from agegender.labels import TASK_NUM_CLASSES
from agegender.spec import FaceSpec

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: torchvision's ImageNet recipe: 224 crops of 256 faces (the same 256 face cache as the
#: Levi-Hassner net), RGB, ImageNet statistics in 0-255 units.
IMAGENET_FACE_SPEC = FaceSpec(
    face_size=256,
    resize_size=256,
    crop_size=224,
    mean=tuple(255.0 * m for m in IMAGENET_MEAN),
    std=tuple(255.0 * s for s in IMAGENET_STD),
    channel_order="RGB",
)
#: facenet-pytorch: 160 crops of 182 faces (its training recipe), read from the 256 cache,
#: standardised as its ``fixed_image_standardization``: ``(x - 127.5) / 128``.
FACENET_FACE_SPEC = FaceSpec(
    face_size=256,
    resize_size=182,
    crop_size=160,
    mean=(127.5, 127.5, 127.5),
    std=(128.0, 128.0, 128.0),
    channel_order="RGB",
)


class Standardize(nn.Module):
    """``(x - mean) / std`` per channel, with mean/std given in 0-255 pixel units (RGB)."""

    @classmethod
    def from_spec(cls, spec: FaceSpec) -> Standardize:
        if spec.channel_order != "RGB" or spec.mean_image:
            raise ValueError(f"Standardize keeps RGB and per-channel means; spec: {spec}")
        return cls(spec.mean, spec.std)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # device="cpu": constants stay real when the net is built on the meta device.
        mean_t, std_t = (torch.tensor(list(v), device="cpu").view(1, 3, 1, 1) for v in (mean, std))
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    unknown = set(tasks) - set(TASK_NUM_CLASSES)
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {sorted(TASK_NUM_CLASSES)}")
    return tuple(tasks)


def head_sizes(num_classes: Mapping[str, int] | None) -> dict[str, int]:
    """Outputs per task: the label set's ``num_classes`` over the defaults (8 age buckets,
    2 genders); what every network's heads are built with."""
    sizes = dict(TASK_NUM_CLASSES)
    for task, n in dict(num_classes or {}).items():
        if task not in TASK_NUM_CLASSES:
            raise ValueError(f"num_classes: unknown task {task!r}")
        if int(n) < 2:
            raise ValueError(f"num_classes: {task} needs at least 2 classes, got {n}")
        sizes[task] = int(n)
    return sizes


class _HeadedBackbone(nn.Module):
    """normalize -> backbone (features) -> dropout -> one linear head per task."""

    face_spec: FaceSpec
    #: Prefixes the library's own checkpoints use for layers we drop (their classifier).
    _foreign_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        normalize: nn.Module,
        backbone: nn.Module,
        features: int,
        tasks: Sequence[str],
        dropout: float,
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.tasks = _check_tasks(tasks)
        self.normalize = normalize
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        sizes = head_sizes(num_classes)
        self.heads = nn.ModuleDict({t: nn.Linear(features, sizes[t]) for t in self.tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(self.normalize(x)))
        return {t: self.heads[t](features) for t in self.tasks}

    def load_backbone_state(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the library's pretrained weights into the backbone, dropping its classifier.

        Strict on everything else: a file for the wrong architecture must fail loudly, not
        leave half the network at random init.
        """
        kept = {
            k: v
            for k, v in state_dict.items()
            if not any(k.startswith(p) for p in self._foreign_prefixes)
        }
        self._pretrained_target().load_state_dict(kept, strict=True)

    def _pretrained_target(self) -> nn.Module:
        """The module the library's checkpoints are keyed against."""
        return self.backbone


class ResNetAgeGender(_HeadedBackbone):
    """torchvision ResNet (ImageNet statistics inside), 224 crops of 256 faces."""

    face_spec = IMAGENET_FACE_SPEC
    _foreign_prefixes = ("fc.",)

    def __init__(
        self,
        arch: str = "resnet18",
        tasks: Sequence[str] = ("age", "gender"),
        dropout: float = 0.0,
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        if arch not in ("resnet18", "resnet50"):
            raise ValueError(f"arch must be 'resnet18' or 'resnet50', got {arch!r}")
        net = getattr(tv_models, arch)(weights=None)
        features = net.fc.in_features
        net.fc = nn.Identity()
        normalize = Standardize.from_spec(self.face_spec)
        super().__init__(normalize, net, features, tasks, dropout, num_classes)
        self.arch = arch


class _FacenetTrunk(nn.Module):
    """InceptionResnetV1 up to its 512-d bottleneck, *before* the L2 normalisation: linear
    heads on unit-norm embeddings would see features ~100x smaller than they are trained for."""

    def __init__(self, dropout_prob: float) -> None:
        super().__init__()
        # pretrained=None: facenet-pytorch would otherwise download at construction time.
        self.net = InceptionResnetV1(pretrained=None, classify=False, dropout_prob=dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for layer in (
            n.conv2d_1a,
            n.conv2d_2a,
            n.conv2d_2b,
            n.maxpool_3a,
            n.conv2d_3b,
            n.conv2d_4a,
            n.conv2d_4b,
            n.repeat_1,
            n.mixed_6a,
            n.repeat_2,
            n.mixed_7a,
            n.repeat_3,
            n.block8,
            n.avgpool_1a,
        ):
            x = layer(x)
        x = n.dropout(x)
        return n.last_bn(n.last_linear(torch.flatten(x, 1)))


class InceptionResnetAgeGender(_HeadedBackbone):
    """facenet-pytorch InceptionResnetV1 (face recognition features), 160 crops of 182 faces,
    input standardised as facenet-pytorch's ``fixed_image_standardization`` does."""

    face_spec = FACENET_FACE_SPEC
    _foreign_prefixes = ("logits.",)

    def __init__(
        self,
        tasks: Sequence[str] = ("age", "gender"),
        dropout: float = 0.0,
        backbone_dropout: float = 0.6,
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        normalize = Standardize.from_spec(self.face_spec)
        trunk = _FacenetTrunk(backbone_dropout)
        super().__init__(normalize, trunk, 512, tasks, dropout, num_classes)

    def _pretrained_target(self) -> nn.Module:
        # facenet-pytorch checkpoints are keyed like the bare InceptionResnetV1.
        return self.backbone.net


def resnet18(
    tasks: Sequence[str] = ("age", "gender"),
    dropout: float = 0.0,
    num_classes: Mapping[str, int] | None = None,
) -> ResNetAgeGender:
    return ResNetAgeGender("resnet18", tasks, dropout, num_classes)


def resnet50(
    tasks: Sequence[str] = ("age", "gender"),
    dropout: float = 0.0,
    num_classes: Mapping[str, int] | None = None,
) -> ResNetAgeGender:
    return ResNetAgeGender("resnet50", tasks, dropout, num_classes)


# The registry reads a builder's spec without building it (agegender.models.registry.face_spec).
resnet18.face_spec = resnet50.face_spec = ResNetAgeGender.face_spec  # type: ignore[attr-defined]
