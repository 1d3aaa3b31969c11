"""Pretrained backbone weights from local files only (nothing can be downloaded here).

``pretrained`` is either a path to a weights file, or the name the library itself uses
(``imagenet`` for torchvision ResNets, ``vggface2`` / ``casia-webface`` for facenet-pytorch),
looked up in that library's own download cache; ``True`` means the library's default weights
(``imagenet``, ``vggface2``; for ``model=timm`` the model's own weights in the local Hugging
Face cache, looked up with ``HF_HUB_OFFLINE=1``). When the file is not there the error says
which file, where to put it and where it comes from, instead of attempting a download that
would hang on an offline machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from agegender.errors import AgeGenderError

FACENET_URLS: dict[str, str] = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180402-114759-vggface2.pt",
    "casia-webface": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
    "20180408-102900-casia-webface.pt",
}


class PretrainedWeightsNotFoundError(AgeGenderError, FileNotFoundError):
    """Requested pretrained weights are not on this machine."""


def _torchvision_url(model_name: str) -> str:
    from torchvision.models import get_model_weights

    return get_model_weights(model_name).DEFAULT.url


def _facenet_cache_dir() -> Path:
    # facenet-pytorch caches under $TORCH_HOME/checkpoints (not torch.hub's hub/checkpoints).
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(home).expanduser() / "checkpoints"


#: Default weights of ``pretrained=true`` per model family (the first library name).
_NAMED: dict[str, tuple[str, ...]] = {
    "resnet18": ("imagenet",),
    "resnet50": ("imagenet",),
    "inception_resnet_v1": tuple(FACENET_URLS),
}
#: File names timm's Hugging Face repositories hold weights under, in timm's order.
HF_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


def resolve_timm_pretrained(name: str, spec: str | bool) -> Path:
    """The local weights file of timm model ``name``: ``spec`` a path, or ``True`` for the
    model's Hugging Face repository in the local cache (never downloaded). A clear error
    names the file, where to put it and where to get it."""
    # timm: deferred (~1 s), only timm models need it
    from agegender.models.timm_backbone import timm_pretrained_cfg

    cfg = timm_pretrained_cfg(name)
    repo, url = cfg.get("hf_hub_id"), cfg.get("url")
    source = f"https://huggingface.co/{repo}" if repo else (url or "the model's authors")
    if spec is True or str(spec).lower() in ("true", "hf", "timm"):
        from huggingface_hub import constants, try_to_load_from_cache

        if not repo:
            raise PretrainedWeightsNotFoundError(
                f"timm model {name} has no Hugging Face repository to look up; download "
                f"{source} and pass model.pretrained_path=/path/to/the/file, or set "
                "model.pretrained=false to train from scratch"
            )
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(HF_WEIGHT_FILES)
        for filename in names:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        cache = Path(constants.HF_HUB_CACHE)
        folder = cache / f"models--{repo.replace('/', '--')}"
        raise PretrainedWeightsNotFoundError(
            f"pretrained weights for timm model {name} not found: {names[0]} of {repo} is not "
            f"in the local Hugging Face cache ({folder} does not hold it). On a connected "
            f"machine run `huggingface-cli download {repo} {names[0]}` ({source}) and copy "
            f"{folder.name} into {cache}, or download the file and pass "
            "model.pretrained_path=/path/to/" + names[0] + "; or set model.pretrained=false "
            "to train from scratch"
        )
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(
            f"pretrained weights for timm model {name} not found: {path} does not exist; put "
            f"the weights file there (from {source}), or set model.pretrained=false to train "
            "from scratch"
        )
    return path


def load_timm_pretrained(model: nn.Module, spec: str | bool) -> Path:
    """Load timm weights into a :class:`~agegender.models.timm_backbone.TimmAgeGender`'s
    backbone (heads stay at init).

    timm itself reads the file (``pretrained_cfg_overlay=dict(file=...)``), so its own
    conversions apply (classifier removal, position-embedding and checkpoint filters); the
    reference network it fills is copied into the backbone strictly."""
    import timm

    # timm: deferred with the import above
    from agegender.models.timm_backbone import hub_offline

    name = model.name  # type: ignore[attr-defined]
    path = resolve_timm_pretrained(name, spec)
    try:
        with hub_offline():
            reference = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0
            )
        model.backbone.load_state_dict(reference.state_dict(), strict=True)
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"{path} does not hold timm {name} weights: {err}") from err
    return path


def resolve_pretrained(model_name: str, spec: str | bool) -> Path:
    """The local file for ``spec`` (a path, a library weight name, or ``True`` for the
    library's default weights), or a clear error."""
    named = _NAMED
    if spec is True or str(spec).lower() == "true":
        if model_name not in named:
            raise ValueError(f"model {model_name} has no default pretrained weights")
        spec = named[model_name][0]
    spec = str(spec)
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


def load_pretrained(model: nn.Module, model_name: str, spec: str | bool) -> Path:
    """Load the backbone weights named by ``spec`` into ``model`` (heads stay at init)."""
    if model_name == "timm":
        return load_timm_pretrained(model, spec)
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
