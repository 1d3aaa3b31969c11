"""Optimiser parameter groups and learning-rate schedules.

The optimiser and the schedule are Hydra ``_partial_`` configs (``model.optimizer``,
``model.scheduler``): a torch optimiser class with its settings, called here with the
parameter groups; a scheduler class or factory, called with the optimiser.

The paper's Caffe solver gives every layer's weights and biases their own multipliers
(``blobs_lr`` / ``weight_decay`` in the train prototxt). Here they are ``model.param_groups``
(:func:`param_groups`): ``(part, kind)`` groups with part in {backbone, body, heads} and kind in
{weight, bias}, each with ``lr = base_lr * lr_mult`` and its own weight decay. Schedules are
stepped per optimiser step (Caffe counts iterations, not epochs).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

#: Parameter-name prefixes of each part (shared by every network in agegender.models).
HEAD_PREFIX = "heads."
BACKBONE_PREFIX = "backbone."

#: The keys of ``model.param_groups`` (keyword arguments of :func:`param_groups`).
GROUP_KEYS = ("bias_lr_mult", "bias_weight_decay", "head_lr_mult", "backbone_lr_mult")


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


def _partial(cfg: Mapping[str, Any], what: str) -> Callable[..., Any]:
    if not cfg.get("_partial_", False):
        raise ValueError(
            f"model.{what} must be a Hydra `_partial_: true` config (see conf/model/{what}/); "
            f"got {dict(cfg)}. Group multipliers (bias_lr_mult, ...) belong in "
            "model.param_groups, schedules are `_target_`s (no `name:`)"
        )
    return instantiate(cfg, _convert_="all")


def _setting(factory: Callable[..., Any], name: str) -> Any:
    """A keyword of a partial, else the default of the callable it wraps."""
    if name in factory.keywords:
        return factory.keywords[name]
    parameter = inspect.signature(factory.func).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ValueError(f"{factory.func.__name__} needs `{name}` for the parameter groups")
    return parameter.default


def build_optimizer(
    model: nn.Module, optimizer: Mapping[str, Any], groups: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    """``optimizer``: a ``_partial_`` optimiser config, called with the groups of
    :func:`param_groups` (``groups``: its multipliers) taken at the optimiser's ``lr`` and
    ``weight_decay``."""
    make_optimizer = _partial(optimizer, "optimizer")
    base = {k: float(_setting(make_optimizer, k)) for k in ("lr", "weight_decay")}
    return make_optimizer(param_groups(model, **base, **dict(groups or {})))


def build_scheduler(
    optimizer: torch.optim.Optimizer, scheduler: Mapping[str, Any] | None, total_steps: float
) -> LRScheduler | None:
    """``scheduler``: a ``_partial_`` scheduler config (None or empty: a constant lr), called
    with the optimiser, and with ``total_steps`` (the run's step budget) when it takes that
    keyword and the config does not set it. Stepped every optimiser step."""
    if not scheduler:
        return None
    make_scheduler = _partial(scheduler, "scheduler")
    takes_total = "total_steps" in inspect.signature(make_scheduler.func).parameters
    if takes_total and "total_steps" not in make_scheduler.keywords:
        return make_scheduler(optimizer, total_steps=total_steps)
    return make_scheduler(optimizer)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: float,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then half a cosine down to ``min_lr_ratio`` of
    each group's lr at ``total_steps``."""
    warmup, floor = int(warmup_steps), float(min_lr_ratio)
    if not math.isfinite(total_steps) or total_steps <= 0:
        raise ValueError(
            "the cosine schedule needs a finite step budget: set trainer.max_steps "
            "or trainer.max_epochs"
        )
    total = max(int(total_steps), warmup + 1)
    return LambdaLR(optimizer, lambda step: cosine_factor(step, warmup, total, floor))


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier at ``step``: linear warm-up to 1, then half a cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
