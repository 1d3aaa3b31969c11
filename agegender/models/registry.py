"""Build a network by name, so configs and checkpoints store plain (name, kwargs) data.

Checkpoints then load with ``torch.load(weights_only=True)``: no pickled classes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from agegender.models.levi_hassner import LeviHassnerNet
from agegender.spec import FaceSpec

#: The network of the paper, and of configs that name none (``conf/preprocess.yaml``).
DEFAULT_MODEL: str = "levi_hassner"

#: Name -> network class/factory, or ``"module:attribute"`` imported on first use: the
#: backbones import torchvision and facenet-pytorch (~2 s and ~150 MB before the first
#: photo), which prediction with the Levi-Hassner net never needs.
MODEL_BUILDERS: dict[str, Callable[..., nn.Module] | str] = {
    "levi_hassner": LeviHassnerNet,
    "resnet18": "agegender.models.backbones:resnet18",
    "resnet50": "agegender.models.backbones:resnet50",
    "inception_resnet_v1": "agegender.models.backbones:InceptionResnetAgeGender",
    "timm": "agegender.models.timm_backbone:TimmAgeGender",
}


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_BUILDERS)}") from None
    if isinstance(builder, str):
        module, attribute = builder.split(":")
        builder = getattr(importlib.import_module(module), attribute)
    return builder


def build_model(name: str, /, **kwargs: Any) -> nn.Module:
    """Instantiate the network registered as ``name`` with ``kwargs``."""
    return _builder(name)(**kwargs)


def face_spec(name: str = DEFAULT_MODEL, kwargs: Mapping[str, Any] | None = None) -> FaceSpec:
    """The :class:`~agegender.spec.FaceSpec` of the network registered as ``name``, read from
    its class without building it (what the DataModules and the face cache use).

    A network family whose spec depends on its arguments (``timm``: the chosen model's input
    size and normalisation) has a ``spec_for(**kwargs)`` class method, given ``kwargs``."""
    builder = _builder(name)
    spec_for = getattr(builder, "spec_for", None)
    if callable(spec_for):
        return spec_for(**dict(kwargs or {}))
    spec = getattr(builder, "face_spec", None)
    if not isinstance(spec, FaceSpec):
        raise ValueError(f"model {name!r} declares no face_spec")
    return spec
