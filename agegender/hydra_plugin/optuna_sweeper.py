"""A small Hydra sweeper on current Optuna (``hydra/sweeper=optuna``).

``hydra.sweeper.params`` uses Hydra's override grammar, as hydra-optuna-sweeper did:
``choice(a, b)`` is categorical, ``interval(a, b)`` uniform (int when both ends are ints),
``tag(log, interval(a, b))`` log-uniform, ``range(a, b, step)`` stepped; a plain value is fixed.
Trials go out ``n_jobs`` at a time through the configured Hydra launcher (basic, joblib,
SLURM). ``n_trials`` is the study's total: rerunning the command with the same storage and
study name continues a killed sweep (a trial left RUNNING by a dead sweeper is marked FAIL and
its params are tried again).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from agegender import sweep as report

log = logging.getLogger(__name__)


def parse_params(overrides: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(search space: name -> optuna distribution, fixed: name -> value string)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        name = override.get_key_element()
        if not override.is_sweep_override():
            fixed[name] = override.get_value_element_as_str()
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            space[name] = CategoricalDistribution(choices)
        elif isinstance(value, RangeSweep):
            ints = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
            # Hydra's range excludes its stop; Optuna's high is inclusive
            high = value.stop - value.step
            dist = IntDistribution if ints else FloatDistribution
            space[name] = dist(value.start, high, step=value.step)
        elif isinstance(value, IntervalSweep):
            log_scale = "log" in value.tags
            ints = isinstance(value.start, int) and isinstance(value.end, int)
            dist = IntDistribution if ints else FloatDistribution
            space[name] = dist(value.start, value.end, log=log_scale)
        else:
            raise NotImplementedError(f"{override} is not supported by the optuna sweeper")
    return space, fixed


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _alive(attrs: dict[str, Any]) -> bool:
    """Whether the sweeper process that launched a trial still runs (same host only)."""
    if attrs.get("sweeper_host") != socket.gethostname():
        return True  # cannot tell: leave it alone
    try:
        os.kill(int(attrs["sweeper_pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: str | None,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        trial: int | None = None,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = params

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _retry_stale(self, study: Any) -> int:
        """Mark trials left RUNNING by a dead sweeper FAIL and enqueue their params again."""
        from optuna.trial import TrialState

        stale = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not _alive(t.user_attrs)
        ]
        for t in stale:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            log.info("trial %d was left running by a killed sweep: FAIL, retried", t.number)
        return len(stale)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        params = [f"{k}={v}" for k, v in (self.params or {}).items()]
        space, fixed = parse_params([*params, *arguments])
        for name in fixed:
            space.pop(name, None)  # a command-line value pins a searched parameter
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        spec = report.storage_spec(self.storage, sweep_dir)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=report.open_storage(spec),
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        OmegaConf.save(
            {"study_name": self.study_name, "storage": spec}, sweep_dir / report.STUDY_FILE
        )
        self._retry_stale(study)
        to_go = _to_go(study, self.n_trials)
        if to_go == 0:
            log.info(
                "study %s (%s) already holds its %d trials: complete, nothing to run "
                "(raise hydra.sweeper.n_trials to continue it)",
                self.study_name, spec, self.n_trials,
            )  # fmt: skip
        log.info(
            "study %s (%s): %d trials to go, sampler %s, pruner %s",
            self.study_name, spec, to_go, type(self.sampler).__name__, type(self.pruner).__name__,
        )  # fmt: skip
        me = {"sweeper_host": socket.gethostname(), "sweeper_pid": os.getpid()}
        while to_go > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            overrides = []
            for t in trials:
                for key, value in me.items():
                    t.set_user_attr(key, value)
                values = {**t.params, **fixed}
                overrides.append(
                    [
                        *(f"{k}={v}" for k, v in values.items()),
                        f"hydra.sweeper.trial={t.number}",
                        f"hydra.sweeper.storage={_quote(spec)}",
                    ]
                )
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            failures = []
            for t, ret in zip(trials, returns, strict=True):
                error = ret._return_value if ret.status == JobStatus.FAILED else None
                if isinstance(error, optuna.TrialPruned):
                    study.tell(t, state=optuna.trial.TrialState.PRUNED)
                    continue
                try:
                    value = float(ret.return_value)  # raises the job's error
                except Exception as exc:
                    log.warning("trial %d failed: %s", t.number, exc)
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                    failures.append(ret)
                else:
                    study.tell(t, value)
            report.write_report(study, sweep_dir)
            if failures and len(failures) / len(returns) > self.max_failure_rate:
                _ = failures[0].return_value  # re-raises the first failure with its traceback
            # Counted from the study each time: other workers on the same storage add theirs.
            to_go = _to_go(study, self.n_trials)

        report.write_report(study, sweep_dir)
        report.write_plots(study, sweep_dir)
        try:
            best = study.best_trial
        except ValueError:
            log.warning("no trial of study %s completed", self.study_name)
            return
        command = report.cv_command(best.params, fixed)
        results = {
            "name": "optuna",
            "study_name": self.study_name,
            "storage": spec,
            "best_trial": best.number,
            "best_params": best.params,
            "best_value": best.value,
            "cv_command": command,
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("best trial %d: %s = %s", best.number, best.params, best.value)
        print(f"best value {best.value:.4f} (trial {best.number}); all five folds with it:")
        print(command)


def _to_go(study: Any, n_trials: int) -> int:
    """Trials this sweeper should still ask for so that the study holds ``n_trials``: waiting
    (re-queued) ones plus new ones; a FAIL that was re-queued does not count, and RUNNING
    trials of other workers sharing the study do."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    counted = [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return waiting + max(0, n_trials - len(counted))
