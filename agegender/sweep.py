"""Optuna sweeps: the study's storage, the trial a ``train.py`` job belongs to, pruning, and
the sweep's report (``sweep_results.csv``, plots, the best setting as a CV command).

The sweeper (``agegender/hydra_plugin``) asks the study for trials and launches each
as a Hydra job with ``hydra.sweeper.trial=<number>`` and ``hydra.sweeper.storage=<resolved
storage>`` (hydra overrides: the job's ``overrides.yaml`` holds only the trial's params). The
job opens the same study (:func:`trial_callbacks`) and :class:`OptunaPruning` reports the
validation objective after every validation and raises :class:`optuna.TrialPruned` when the
pruner says so; the sweeper records that trial as PRUNED.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from agegender.fileio import atomic_write

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Default storage when the user names none: an Optuna journal file in the sweep directory
#: (shared by the sweeper and its trial processes, also across SLURM nodes on a shared disk).
JOURNAL_FILE = "optuna_journal.log"
JOURNAL_SCHEME = "journal:"
#: Written at sweep start: marks an Optuna sweep directory (study name and storage).
STUDY_FILE = "optuna_study.yaml"
RESULTS_FILE = "sweep_results.csv"


def storage_spec(storage: str | None, sweep_dir: str | Path) -> str:
    """The storage as one string the trial jobs can open: an RDB URL as given, or
    ``journal:<absolute path>`` (the sweep directory's journal file when ``storage`` is unset)."""
    if storage is None or str(storage) in ("", "None", "null"):
        return JOURNAL_SCHEME + str(Path(sweep_dir).absolute() / JOURNAL_FILE)
    storage = str(storage)
    if storage.startswith(JOURNAL_SCHEME):
        return JOURNAL_SCHEME + str(Path(storage[len(JOURNAL_SCHEME) :]).absolute())
    return storage


def open_storage(spec: str) -> Any:
    """An Optuna storage for a :func:`storage_spec` string."""
    import optuna

    if spec.startswith(JOURNAL_SCHEME):
        path = Path(spec[len(JOURNAL_SCHEME) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return _rdb_storage(spec)


def _rdb_storage(url: str, attempts: int = 5) -> Any:
    """An RDB storage for ``url``. Workers started together on a fresh database race to
    create its tables (the loser gets an IntegrityError from PostgreSQL): retry, by which
    time the winner has created them."""
    import time

    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


class OptunaPruning(Callback):
    """Report ``monitor`` to the trial after every validation; prune when the pruner says so.

    The step is the trainer's global step. Under DDP rank 0 reports and decides, and the
    decision is broadcast so every process stops together."""

    def __init__(self, trial: optuna.trial.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        import optuna
        from pytorch_lightning.trainer.states import TrainerFn

        # training's validations only (not the sanity check, not validate() of the best ckpt)
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if trainer.is_global_zero and value is not None and math.isfinite(float(value)):
            self.trial.report(float(value), step=trainer.global_step)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            raise optuna.TrialPruned(
                f"trial {self.trial.number} pruned at step {trainer.global_step}"
                f" ({self.monitor}={float(value):.4f})"
            )


def trial_callbacks(cfg: DictConfig) -> list[Callback]:
    """The pruning callback when this job is an Optuna trial of our sweeper, else none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sweeper = HydraConfig.get().sweeper
    number = sweeper.get("trial")
    if number is None or not cfg.get("optimized_metric"):
        return []
    import optuna
    from hydra.utils import instantiate

    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else None
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=open_storage(sweeper.storage), pruner=pruner
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return [OptunaPruning(optuna.trial.Trial(study, trial_id), cfg.optimized_metric)]


def results_table(study: optuna.Study) -> Any:
    """One row per trial: trial (= job directory), params, objective, state, duration_s,
    last_step (the last validation step reported; where a pruned trial stopped)."""
    import pandas as pd

    rows = []
    for t in study.trials:
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else math.nan
        )
        rows.append(
            {
                "trial": t.number,
                **t.params,
                "objective": t.value if t.value is not None else math.nan,
                "state": t.state.name,
                "duration_s": round(duration, 2),
                "last_step": t.last_step,
            }
        )
    return pd.DataFrame(rows)


def write_report(study: optuna.Study, sweep_dir: str | Path) -> None:
    csv = results_table(study).to_csv(index=False).encode()
    atomic_write(Path(sweep_dir) / RESULTS_FILE, lambda fh: fh.write(csv))


def write_plots(study: optuna.Study, sweep_dir: str | Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates as PNG (and as
    HTML when plotly is installed). A plot Optuna cannot draw (too few trials) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    written = []
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vis_mpl, f"plot_{name}")(study)
            fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
            path = Path(sweep_dir) / f"optuna_{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
            if vis.is_available():  # plotly
                html = Path(sweep_dir) / f"optuna_{name}.html"
                getattr(vis, f"plot_{name}")(study).write_html(str(html))
                written.append(html)
        except Exception as exc:  # a report never fails the sweep
            log.info("no %s plot: %s", name, exc)
    return written


def cv_command(best_params: dict[str, Any], fixed: dict[str, Any]) -> str:
    """The command that runs the best setting through all five folds: ``experiment=cv`` (the
    Levi-Hassner protocol), or the sweep's own experiment over ``data.fold=0,1,2,3,4``."""
    skip = ("data.fold", "hparams_search", "experiment", "hydra")  # set by the command itself
    keep = {k: v for k, v in fixed.items() if not k.startswith(skip)}
    overrides = [f"{k}={v}" for k, v in {**keep, **best_params}.items()]
    experiment = fixed.get("experiment", "levi_hassner")
    if experiment in ("levi_hassner", "cv"):
        head = ["python train.py experiment=cv"]
    else:
        head = ["python train.py -m", f"experiment={experiment}", "data.fold=0,1,2,3,4"]
    return " ".join([*head, *overrides])
