"""Pretrained backbone weights from local files only (nothing can be downloaded here).

``pretrained`` is either a path to a weights file, or the name the library itself uses
(``imagenet`` for torchvision ResNets, ``vggface2`` / ``casia-webface`` for facenet-pytorch),
looked up in that library's own download cache. When the file is not there the error says
which file, where to put it and where it comes from, instead of attempting a download that
would hang on an offline machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

FACENET_URLS: dict[str, str] = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180402-114759-vggface2.pt",
    "casia-webface": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180408-102900-casia-webface.pt",
}


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """Requested pretrained weights are not on this machine."""


def _torchvision_url(model_name: str) -> str:
    from torchvision.models import get_model_weights

    return get_model_weights(model_name).DEFAULT.url


def _facenet_cache_dir() -> Path:
    # facenet-pytorch caches under $TORCH_HOME/checkpoints (not torch.hub's hub/checkpoints).
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(home).expanduser() / "checkpoints"


def resolve_pretrained(model_name: str, spec: str) -> Path:
    """The local file for ``spec`` (a path or a library weight name), or a clear error."""
    named = {
        "resnet18": ("imagenet",),
        "resnet50": ("imagenet",),
        "inception_resnet_v1": tuple(FACENET_URLS),
    }
    if spec in named.get(model_name, ()):
        if model_name == "inception_resnet_v1":
            url = FACENET_URLS[spec]
            where = _facenet_cache_dir()
        else:
            url = _torchvision_url(model_name)
            where = Path(torch.hub.get_dir()) / "checkpoints"
        path = where / url.rsplit("/", 1)[1]
        hint = f"download {url} on a connected machine and put it at {path}"
    else:
        path = Path(spec).expanduser()
        names = ", ".join(named.get(model_name, ())) or "none"
        hint = f"pass an existing weights file (library weight names for {model_name}: {names})"
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(
            f"pretrained weights for {model_name} not found: {path} does not exist; {hint}, "
            "or set model.pretrained=null to train from scratch"
        )
    return path


def load_pretrained(model: nn.Module, model_name: str, spec: str) -> Path:
    """Load the backbone weights named by ``spec`` into ``model`` (heads stay at init)."""
    if not hasattr(model, "load_backbone_state"):
        raise ValueError(f"model {model_name} has no pretrained backbone to load")
    path = resolve_pretrained(model_name, spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_backbone_state(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold {model_name} backbone weights: {err}") from err
    return path
