"""One training run, as ``train.py`` performs it: seed, instantiate, fit, evaluate the best
checkpoint (validation, then centre-crop and 10-crop test), fit a temperature per task on the
validation faces (``calibration``, stored in the evaluated checkpoint), write ``metrics.json``,
``test_predictions.csv`` and the confusion matrices into the run directory, return the
objective.

The objective is a validation metric of the best checkpoint (``optimized_metric``), never a
test metric: sweeps select on it, and the test folds stay unseen until the final report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from agegender.checkpoints import check_readable, set_calibration
from agegender.errors import CheckpointNotFoundError
from agegender.sweep import trial_callbacks
from agegender.training.calibrate import (
    PREDICTIONS_FILE,
    calibration_figures,
    fit_temperatures,
    predictions_table,
    run_record,
    write_predictions_csv,
)
from agegender.training.checkpointing import LAST_NAME, ExactResume
from agegender.training.metrics import CLASS_NAMES
from agegender.training.report import plot_confusion, write_metrics_json
from agegender.training.selection import select_checkpoint

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
LAST_FILE = f"{LAST_NAME}.ckpt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """A run's newest state: ``checkpoints/last.ckpt`` (:class:`LatestCheckpoint` keeps it
    current), or ``last.ckpt`` in ``run_dir`` itself when given the checkpoints folder."""
    for path in (run_dir / CHECKPOINT_DIR / LAST_FILE, run_dir / LAST_FILE):
        if path.is_file():
            return path
    return None


def training_threads(threads: int | None) -> int:
    """The run's intra-op thread count: ``threads``, or None = the CPUs this process may use
    (what PyTorch starts with on these machines). Set by every run, resumes included, so
    results never depend on what ran before in the same process."""
    if threads is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1 or null, got {threads}")
    return int(threads)


def resolve_ckpt_path(spec: str | None, output_dir: Path) -> str | None:
    """``ckpt_path``: None (fresh run), ``last`` (this run directory's newest checkpoint: pair
    it with ``hydra.run.dir=<the interrupted run>``), a run directory, or a ``.ckpt`` file."""
    if spec in (None, "", "null"):
        return None
    if spec == "last":
        path = latest_checkpoint(output_dir)
        where = output_dir / CHECKPOINT_DIR
        hint = "set hydra.run.dir to the interrupted run's directory, or pass its path"
    else:
        where = Path(spec).expanduser()
        path = latest_checkpoint(where) if where.is_dir() else where
        hint = "pass a .ckpt file or a run directory holding checkpoints/"
    if path is None or not path.is_file():
        raise CheckpointNotFoundError(f"ckpt_path={spec}: no checkpoint at {where}; {hint}")
    return str(check_readable(path))


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every entry of a callbacks/logger group that has a ``_target_`` (null entries skip)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def write_report(
    module: pl.LightningModule, output_dir: Path, extra: dict[str, float] | None = None
) -> dict[str, float]:
    """metrics.json (every stage's scalars, plus ``extra``: the calibration figures) +
    confusion_<stage>_<task>.png, the matrices in the class names of the module's label set."""
    metrics: dict[str, float] = {}
    names = getattr(module, "class_names", CLASS_NAMES)
    for stage, scalars in module.results.items():
        metrics.update(scalars)
        for task, matrix in module.confusion.get(stage, {}).items():
            plot_confusion(
                matrix,
                names[task],
                f"{task}: {stage.replace('_', ' ')}",
                output_dir / f"confusion_{stage}_{task}.png",
            )
    metrics.update(extra or {})
    write_metrics_json(metrics, output_dir / METRICS_FILE)
    return metrics


def build(
    cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()
) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """Seed, then instantiate data, model, callbacks, loggers and trainer from ``cfg``."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = training_threads(cfg.get("threads"))
    torch.set_num_threads(threads)  # the run's own, whatever the process did before
    log.info("PyTorch intra-op threads: %d", threads)
    pl.seed_everything(cfg.seed, workers=True)
    # the training order and augmentation follow the run's seed, like init and dropout
    datamodule: pl.LightningDataModule = instantiate(cfg.data, shuffle_seed=cfg.seed)
    # Not recursive: the optimizer/scheduler `_partial_` configs and param_groups stay plain
    # settings the module keeps as hyper-parameters; configure_optimizers instantiates them.
    module: pl.LightningModule = instantiate(cfg.model, _recursive_=False)
    framing = getattr(datamodule, "framing", None)
    if framing is not None:  # the network is trained on (and carries) the data's framing
        module.set_framing(framing)
    # ExactResume always: without it a resumed run draws other dropout masks.
    callbacks = [*_instantiate_group(cfg.get("callbacks")), ExactResume(), *extra_callbacks]
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(output_dir),
    )
    return datamodule, module, trainer


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> float | None:
    """Fit and/or evaluate as ``cfg`` says; return ``cfg.optimized_metric`` (None if unset)."""
    output_dir = Path(cfg.paths.output_dir)
    # an Optuna trial of hparams_search=optuna reports each validation and may be pruned
    datamodule, module, trainer = build(cfg, [*extra_callbacks, *trial_callbacks(cfg)])
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)

    if cfg.get("train", True):
        # weights_only: a checkpoint is data, never code (also where the environment sets
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD); ours hold plain types and tensors only
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        eval_ckpt = select_checkpoint(cfg.get("selection", "joint"), trainer, _best_checkpoint)
    else:
        eval_ckpt = ckpt_path
        if eval_ckpt is None:
            log.warning("train=false and no ckpt_path: evaluating an untrained network")

    # the evaluated weights' per-face probabilities: for the temperatures and the CSV
    module.keep_predictions = True
    trainer.validate(
        module, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False, weights_only=True
    )
    temperatures, faces = {}, {}
    if cfg.get("calibration", True):
        # every rank fits the same numbers (the predictions are gathered and sorted by row)
        temperatures, faces = fit_temperatures(module.predictions.get("val"), module.tasks)
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule, ckpt_path=eval_ckpt, weights_only=True)
    figures = calibration_figures(module.predictions, module.tasks, temperatures)

    metrics = {k: v for scalars in module.results.values() for k, v in scalars.items()}
    metrics.update(figures)
    if trainer.is_global_zero:
        write_report(module, output_dir, figures)
        log.info("metrics written to %s (evaluated %s)", output_dir / METRICS_FILE, eval_ckpt)
        _write_test_predictions(module, datamodule, output_dir)
        record = run_record(temperatures, faces, output_dir)
        # written after the test, which every rank loads from this very file
        _store_calibration(record, eval_ckpt, trained=bool(cfg.get("train", True)))

    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name.startswith("test"):
        raise ValueError(f"optimized_metric={name}: sweeps must select on validation, not test")
    if name not in metrics:
        raise KeyError(f"optimized_metric={name} was not computed; available: {sorted(metrics)}")
    return metrics[name]


def _write_test_predictions(
    module: pl.LightningModule, datamodule: pl.LightningDataModule, output_dir: Path
) -> None:
    """``test_predictions.csv`` when a test ran; subjects from the test split's ``user_id``
    (Adience's user, a CSV's group), empty for a datamodule without split tables."""
    if not any(module.predictions.get(stage) for stage in ("test", "test_10crop")):
        # test=false: a file left by an earlier run in this directory would be stale
        (output_dir / PREDICTIONS_FILE).unlink(missing_ok=True)
        return
    split = getattr(datamodule, "splits", {}).get("test")
    subjects = None if split is None or "user_id" not in split else split["user_id"].to_numpy()
    sizes = {task: module.labels.num_classes[task] for task in module.tasks}
    table = predictions_table(module.predictions, sizes, subjects)
    path = write_predictions_csv(table, output_dir / PREDICTIONS_FILE)
    log.info("per-face test predictions (%d rows) written to %s", len(table), path)


def _store_calibration(record: dict | None, eval_ckpt: str | None, trained: bool) -> None:
    """Store the temperatures in the evaluated checkpoint, when this run wrote it: a
    ``train=false`` evaluation leaves the given file as it is (metrics.json has the numbers;
    ``agegender.checkpoints.set_calibration`` stores them on request)."""
    if record is None:
        return
    if not trained or eval_ckpt is None:
        why = "train=false: not this run's checkpoint" if not trained else "no checkpoint"
        log.info("calibration not stored (%s); temperatures: %s", why, record["temperature"])
        return
    set_calibration(eval_ckpt, record)
    log.info("calibration %s stored in %s", record["temperature"], eval_ckpt)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best-by-validation checkpoint, else the last one, else None (current weights)."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    for callback in callbacks:
        if callback.monitor and callback.best_model_path:
            return callback.best_model_path
    for callback in callbacks:
        latest = callback.last_model_path or callback.best_model_path
        if latest:
            log.warning("no best-by-validation checkpoint: evaluating %s", latest)
            return latest
    log.warning("no checkpoint was written: evaluating the final weights")
    return None
