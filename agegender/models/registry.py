"""Build a network by name, so configs and checkpoints store plain (name, kwargs) data.

Checkpoints then load with ``torch.load(weights_only=True)``: no pickled classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from agegender.models.backbones import InceptionResnetAgeGender, resnet18, resnet50
from agegender.models.levi_hassner import LeviHassnerNet

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "levi_hassner": LeviHassnerNet,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "inception_resnet_v1": InceptionResnetAgeGender,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the network registered as ``name`` with ``kwargs``."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_BUILDERS)}") from None
    return builder(**kwargs)
