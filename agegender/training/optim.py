"""Optimiser parameter groups and learning-rate schedules.

The paper's Caffe solver gives every layer's weights and biases their own multipliers
(``blobs_lr`` / ``weight_decay`` in the train prototxt). Here they become parameter groups:
``(part, kind)`` with part in {backbone, body, heads} and kind in {weight, bias}, each with
``lr = base_lr * lr_mult`` and its own weight decay. Schedules are stepped per optimiser step
(Caffe counts iterations, not epochs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_class
from torch import nn

#: Parameter-name prefixes of each part (shared by every network in agegender.models).
HEAD_PREFIX = "heads."
BACKBONE_PREFIX = "backbone."


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float = 0.0,
    head_lr_mult: float = 1.0,
    backbone_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Split ``model``'s parameters into groups with their learning rate and decay.

    Multipliers compose: a head bias gets ``lr * head_lr_mult * bias_lr_mult`` (the paper's
    fc8 bias: 1e-3 * 10 * 2). Every parameter is listed, frozen or not, so a fine-tuning
    callback can unfreeze by flipping ``requires_grad`` without touching the optimiser (and the
    scheduler and a resumed optimiser state keep matching the groups).
    """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if name.startswith(HEAD_PREFIX):
            part, part_mult = "heads", head_lr_mult
        elif name.startswith(BACKBONE_PREFIX):
            part, part_mult = "backbone", backbone_lr_mult
        else:
            part, part_mult = "body", 1.0
        is_bias = name.endswith("bias")
        kind = "bias" if is_bias else "weight"
        mult = part_mult * (bias_lr_mult if is_bias else 1.0)
        group = groups.setdefault(
            (part, kind),
            {
                "name": f"{part}/{kind}",
                "params": [],
                "lr": lr * mult,
                "weight_decay": bias_weight_decay if is_bias else weight_decay,
            },
        )
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``cfg``: ``_target_`` (an optimiser class path), ``lr``, ``weight_decay``, the group
    multipliers of :func:`param_groups`, and any other keyword of the optimiser class."""
    cfg = dict(cfg)
    target = cfg.pop("_target_", "torch.optim.SGD")
    group_keys = ("bias_lr_mult", "bias_weight_decay", "head_lr_mult", "backbone_lr_mult")
    group_kwargs = {k: cfg.pop(k) for k in group_keys if k in cfg}
    lr = float(cfg.pop("lr"))
    weight_decay = float(cfg.pop("weight_decay", 0.0))
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, **group_kwargs)
    return get_class(target)(groups, lr=lr, weight_decay=weight_decay, **cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any] | None, total_steps: float
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``cfg.name``: ``step`` (Caffe "step" policy: ``gamma`` every ``step_size`` iterations),
    ``cosine`` (linear warm-up over ``warmup_steps``, then cosine to ``min_lr_ratio``), or
    ``constant``/None. All are stepped every optimiser step."""
    cfg = dict(cfg or {})
    name = cfg.get("name", "constant")
    if name in (None, "constant", "none"):
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(cfg["step_size"]), gamma=float(cfg.get("gamma", 0.1))
        )
    if name == "cosine":
        warmup = int(cfg.get("warmup_steps", 0))
        floor = float(cfg.get("min_lr_ratio", 0.0))
        if not math.isfinite(total_steps) or total_steps <= 0:
            raise ValueError(
                "the cosine schedule needs a finite step budget: set trainer.max_steps "
                "or trainer.max_epochs"
            )
        total = max(int(total_steps), warmup + 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_factor(step, warmup, total, floor)
        )
    raise ValueError(f"unknown scheduler {name!r}; use step, cosine or constant")


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier at ``step``: linear warm-up to 1, then half a cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
