"""Which weights a run evaluates and reports: the ``selection`` config group.

- ``joint``: the best checkpoint by ``val/acc`` (the mean of the tasks' accuracies).
- ``per_task``: the paper trained (and could have stopped) two nets independently, so each
  task's network comes from its own best checkpoint (:class:`TaskCheckpoint`, by
  ``val/<task>_acc``); the two are assembled into one ``best-per-task.ckpt``, which is what
  validation and test see and what predict.py loads. Needs one network per task: a trunk
  shared by the tasks cannot come from two checkpoints (a clear error before training).
- ``final``: the final iteration's weights, as Caffe reported them (``final.ckpt``).

Best-per-task state survives a resume: each :class:`TaskCheckpoint` monitors its own metric,
so its Lightning ``state_key`` differs from every other checkpoint callback's and its best
path and score are restored from the resumed checkpoint's ``callbacks`` section.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from agegender.checkpoints import FRAMING_KEY, LIGHTNING_PREFIX
from agegender.fileio import atomic_write
from agegender.training.checkpointing import BestCheckpoint

log = logging.getLogger(__name__)

#: Values of ``selection``.
SELECTIONS: tuple[str, ...] = ("joint", "per_task", "final")
#: File names (in the run's ``checkpoints/``) of the evaluated weights.
PER_TASK_FILE = "best-per-task.ckpt"
FINAL_FILE = "final.ckpt"
#: Inserted into parameter names by ``torch.compile``.
_COMPILED_INFIX = "_orig_mod."


def task_of(key: str, tasks: Sequence[str]) -> str | None:
    """The task whose own network holds parameter/buffer ``key`` (``trunks.<task>.*`` or
    ``heads.<task>.*``, with or without the Lightning ``model.`` prefix); None: common."""
    key = key.replace(_COMPILED_INFIX, "")
    key = key.removeprefix(LIGHTNING_PREFIX)
    for task in tasks:
        if key.startswith((f"trunks.{task}.", f"heads.{task}.")):
            return task
    return None


def check_splittable(model: nn.Module, tasks: Sequence[str]) -> None:
    """Raise unless every trainable parameter of ``model`` belongs to one task's network."""
    shared = [name for name, _ in model.named_parameters() if task_of(name, tasks) is None]
    if shared:
        raise ValueError(
            f"selection=per_task takes each task's network from its own best checkpoint, but "
            f"{type(model).__name__} has {len(shared)} parameters shared by the tasks (e.g. "
            f"{shared[0]}): use separate trunks (model.model_kwargs.mode=separate), or "
            "selection=joint or selection=final"
        )


class TaskCheckpoint(BestCheckpoint):
    """Keeps the best checkpoint (weights only) by one task's validation accuracy.

    ``monitor`` is ``val/<task>_acc`` (mode max; see :mod:`agegender.training.metrics`). A
    network without ``task`` gives nothing to monitor: the callback then saves nothing, so
    ``experiment=levi_hassner model.model_kwargs.tasks=[gender]`` still runs. A network whose
    tasks share parameters is refused at setup, before any training step.
    """

    def __init__(
        self,
        task: str,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        save_weights_only: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("save_on_train_epoch_end", False)
        super().__init__(
            dirpath=dirpath,
            filename=filename or f"best-{task}-epoch{{epoch:03d}}-step{{step:06d}}",
            monitor=f"val/{task}_acc",
            mode="max",
            save_top_k=1,
            save_last=False,
            save_weights_only=save_weights_only,
            **kwargs,
        )
        self.task = task

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        tasks = tuple(getattr(pl_module, "tasks", ()))
        if self.task not in tasks:
            self.save_top_k = 0
            return
        if stage == "fit":
            check_splittable(getattr(pl_module, "model", pl_module), tasks)


def task_checkpoints(trainer: pl.Trainer, tasks: Sequence[str]) -> dict[str, ModelCheckpoint]:
    """The checkpoint callback monitoring ``val/<task>_acc`` for every task (error if none)."""
    found: dict[str, ModelCheckpoint] = {}
    for callback in trainer.checkpoint_callbacks:
        for task in tasks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor == f"val/{task}_acc":
                found.setdefault(task, callback)
    missing = [t for t in tasks if t not in found]
    if missing:
        raise ValueError(
            f"selection=per_task needs a checkpoint callback monitoring val/<task>_acc for "
            f"{missing} (conf/selection/per_task.yaml adds them: was it overridden?)"
        )
    return found


def assemble_per_task(paths: Mapping[str, str | Path], out: str | Path) -> Path:
    """Write one Lightning checkpoint whose network takes each task's trunk and head from
    ``paths[task]``; the common buffers (input mean) must agree. Loadable by
    ``trainer.validate/test(ckpt_path=...)``, :func:`agegender.checkpoints.load_model` and
    predict.py; it carries no optimiser or loop state (it is no point to resume from)."""
    tasks = tuple(paths)
    ckpts = {t: torch.load(p, map_location="cpu", weights_only=True) for t, p in paths.items()}
    base = ckpts[tasks[0]]
    state: dict[str, torch.Tensor] = {}
    for key, value in base["state_dict"].items():
        owner = task_of(key, tasks)
        if owner is not None:
            state[key] = ckpts[owner]["state_dict"][key]
            continue
        for task, ckpt in ckpts.items():
            other = ckpt["state_dict"].get(key)
            if other is None or not torch.equal(other, value):
                raise ValueError(
                    f"{key} is common to the tasks but differs in {paths[task]}: the per-task "
                    "checkpoints cannot be assembled into one network"
                )
        state[key] = value
    payload = {
        "pytorch-lightning_version": base["pytorch-lightning_version"],
        "hyper_parameters": base["hyper_parameters"],
        "state_dict": state,
        **({FRAMING_KEY: base[FRAMING_KEY]} if FRAMING_KEY in base else {}),
        "per_task": {
            task: {
                "path": str(paths[task]),
                "epoch": ckpt.get("epoch"),
                "global_step": ckpt.get("global_step"),
            }
            for task, ckpt in ckpts.items()
        },
    }
    return atomic_write(Path(out), lambda handle: torch.save(payload, handle))


def _save_final(trainer: pl.Trainer) -> str:
    path = Path(trainer.default_root_dir) / "checkpoints" / FINAL_FILE
    trainer.save_checkpoint(path, weights_only=True)  # every rank calls it; rank 0 writes
    return str(path)


def select_checkpoint(
    selection: str,
    trainer: pl.Trainer,
    joint: Callable[[pl.Trainer], str | None],
) -> str | None:
    """After ``trainer.fit``: the checkpoint to validate and test under ``selection``.

    ``joint`` is the run's best-by-``val/acc`` choice (kept where it always was, in
    :mod:`agegender.training.fit`). Every rank calls this (the final save is collective).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "joint":
        return joint(trainer)
    if selection == "final":
        return _save_final(trainer)
    tasks = tuple(trainer.lightning_module.tasks)
    callbacks = task_checkpoints(trainer, tasks)
    best = {t: callbacks[t].best_model_path for t in tasks}
    if not all(best.values()):
        log.warning("selection=per_task: no validation ran, evaluating the final weights")
        return _save_final(trainer)
    out = Path(callbacks[tasks[0]].dirpath or Path(trainer.default_root_dir) / "checkpoints")
    out = out / PER_TASK_FILE
    if trainer.is_global_zero:
        assemble_per_task(best, out)
        for task in tasks:
            log.info(
                "per-task selection: %s from %s (%s=%.4f)",
                task,
                best[task],
                callbacks[task].monitor,
                float(callbacks[task].best_model_score),
            )
    trainer.strategy.barrier("select_checkpoint")
    return str(out)
