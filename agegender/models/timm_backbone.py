"""Any timm model as the backbone (``model=timm model.name=<timm name>``), with the same
age/gender heads as the other networks.

timm builds the network (``timm.create_model(name, pretrained=False, num_classes=0)``: its
pooled features, no classifier) and says what input it was trained on: the input size,
centre-crop fraction and normalisation of the model's pretrained config
(``timm.data.resolve_data_config``). They become the network's :class:`~agegender.spec.
FaceSpec`, so the shared presets of :mod:`agegender.transforms`, the face cache and
prediction feed it what it expects: crop = timm's input size, resize = crop / crop_pct,
mean/std in 0-255 units as the network's first layer. (timm resizes bicubic; the shared
presets keep their own interpolation for every network.)

Nothing here reads a file or touches the network: the weights start random, and pretrained
weights are loaded by the training package (``training/pretrained.py``: local files and the
local Hugging Face cache only).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from agegender.models.backbones import Standardize, _HeadedBackbone
from agegender.spec import FaceSpec

#: Faces are cached at least this large (the other networks' 256 cache); a network whose
#: resize size is larger (inception_resnet_v2: 299 / 0.8975 = 333) caches at that size.
MIN_FACE_SIZE = 256


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration: whatever timm does inside, it never downloads.

    huggingface_hub reads the variable when it is imported, so its constant is set too."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants
    saved = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def timm_pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of ``name`` (input size, mean, std, crop_pct, hf_hub_id ...);
    a clear error for a name timm does not know."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them){hint}")
    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def timm_face_spec(name: str) -> FaceSpec:
    """The face ``name`` takes, from timm's data config (see module doc)."""
    from timm.data import resolve_data_config

    data = resolve_data_config(pretrained_cfg=timm_pretrained_cfg(name))
    _, height, width = data["input_size"]
    if height != width:
        raise ValueError(f"timm model {name!r} takes {height}x{width} inputs; square ones only")
    resize = max(int(height), round(height / float(data["crop_pct"])))
    return FaceSpec(
        face_size=max(MIN_FACE_SIZE, resize),
        resize_size=resize,
        crop_size=int(height),
        mean=tuple(255.0 * m for m in data["mean"]),
        std=tuple(255.0 * s for s in data["std"]),
        channel_order="RGB",
    )


class TimmAgeGender(_HeadedBackbone):
    """A timm backbone (pooled features) + one linear head per task.

    ``name``: any ``timm.list_models()`` name (``inception_resnet_v2``, ``convnext_tiny``,
    ``efficientnet_b0``, ``vit_small_patch16_224`` ...); ``num_classes``: outputs per task
    (the label set's; default 8 age buckets, 2 genders); ``drop_path_rate``: timm's
    stochastic depth, for the networks that have it.
    """

    def __init__(
        self,
        name: str = "resnet50",
        tasks: Sequence[str] = ("age", "gender"),
        dropout: float = 0.0,
        num_classes: Mapping[str, int] | None = None,
        drop_path_rate: float | None = None,
    ) -> None:
        import timm

        spec = timm_face_spec(name)
        extra = {} if drop_path_rate is None else {"drop_path_rate": float(drop_path_rate)}
        with hub_offline():
            backbone: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, **extra)
        features = int(backbone.num_features)
        super().__init__(
            Standardize.from_spec(spec), backbone, features, tasks, dropout, num_classes
        )
        self.face_spec = spec
        self.name = name

    @classmethod
    def spec_for(cls, name: str = "resnet50", **_: Any) -> FaceSpec:
        """The spec of ``TimmAgeGender(name, ...)`` without building it (registry use)."""
        return timm_face_spec(name)
