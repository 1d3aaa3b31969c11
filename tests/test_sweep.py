"""The Optuna sweeper (agegender/hydra_plugin) on a tiny Hydra app: trials with a
synthetic objective reported step by step through the real pruning callback, so pruning,
sweep_results.csv, plots and resuming a killed sweep are checked in seconds. The end-to-end
``train.py hparams_search=optuna`` run is tests/test_cv_runs.py (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

APP = """
import os
import time
import types
from pathlib import Path

import hydra
from pytorch_lightning.trainer.states import TrainerFn

from agegender.sweep import trial_callbacks


def meet_the_other_workers():
    # two-worker tests: each trial waits until every worker has started one, so no worker
    # can finish the whole study before the other asks (a race on a loaded machine)
    folder = os.environ.get("SWEEP_BARRIER", "")
    workers = int(os.environ.get("SWEEP_WORKERS", 1))
    if not folder:
        return
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 240
    while len(os.listdir(folder)) < workers and time.monotonic() < deadline:
        time.sleep(0.05)


@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg):
    meet_the_other_workers()
    (pruning,) = trial_callbacks(cfg)
    for step in range(1, 5):  # a fake trainer after each "validation"
        trainer = types.SimpleNamespace(
            sanity_checking=False, state=types.SimpleNamespace(fn=TrainerFn.FITTING),
            callback_metrics={"val/acc": cfg.x * step}, is_global_zero=True,
            global_step=step, strategy=types.SimpleNamespace(broadcast=lambda v, src: v),
        )
        pruning.on_validation_end(trainer, None)
    return cfg.x * 4


from hydra_plugins.agegender_optuna import register

register()
main()
"""

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIG = """
defaults:
  - override hydra/sweeper: optuna
  - _self_
optimized_metric: val/acc
x: 0.5
data: {fold: null}
hydra:
  # the sweeper's configs (conf/hydra/sweeper/) come from the project's config folder
  searchpath: [file://CONF]
  mode: MULTIRUN
  sweep: {dir: SWEEP}
  sweeper:
    n_trials: 8
    sampler: {seed: 1, n_startup_trials: 8}
    params:
      x: interval(0.0, 1.0)
  callbacks:
    cv_results:
      _target_: agegender.crossval.CVResultsCallback
"""


def _app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    sweep = tmp_path / "sweep"
    config = CONFIG.replace("SWEEP", str(sweep)).replace("CONF", str(CONF))
    (tmp_path / "config.yaml").write_text(config)
    return sweep


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow  # ~16 s of sweeps
def test_median_pruner_prunes_and_the_sweep_is_reported(tmp_path: Path) -> None:
    """Default pruner (median) after one finished trial: trials below the median at a step
    stop there; the table lists every trial with its state; plots and the CV command exist;
    a sweep on one named fold gets no CV table."""
    sweep = _app(tmp_path)
    proc = _run(tmp_path, "hydra.sweeper.pruner.n_startup_trials=1", "data.fold=0")
    table = pd.read_csv(sweep / "sweep_results.csv")
    assert list(table.columns) == [
        "trial", "x", "objective", "state", "duration_s", "last_step"
    ]  # fmt: skip
    assert list(table["trial"]) == list(range(8))
    assert set(table["state"]) == {"COMPLETE", "PRUNED"}, table
    pruned = table[table["state"] == "PRUNED"]
    assert len(pruned) >= 2 and (pruned["last_step"] < 4).all()  # stopped early
    # a pruned trial's objective is its last reported value (Optuna's convention)
    assert pruned["objective"].to_numpy() == pytest.approx(
        (pruned["x"] * pruned["last_step"]).to_numpy()
    )
    done = table[table["state"] == "COMPLETE"]
    assert done["objective"].to_numpy() == pytest.approx(4 * done["x"].to_numpy())
    # the job's status says pruned, not an error; no CV table (no fold varied)
    status = yaml.safe_load((sweep / str(pruned["trial"].iloc[0]) / "job_status.json").read_text())
    assert status["status"] == "pruned"
    assert not (sweep / "cv_results.md").exists()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(done["objective"].max())
    assert best["cv_command"].startswith("python train.py experiment=cv x=")
    assert best["cv_command"] in proc.stdout
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (sweep / f"optuna_{name}.png").read_bytes()[:4] == b"\x89PNG", name
    assert (sweep / "optuna_journal.log").exists()  # the default shared storage


@pytest.mark.slow  # ~30 s of sweeps
def test_killed_sweep_resumes_with_sqlite(tmp_path: Path) -> None:
    """A sweep killed after two trials, one left RUNNING: the same command continues the
    study (finished trials kept, the running one marked FAIL and its params tried again)."""
    sweep = _app(tmp_path)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=resume"]
    _run(tmp_path, *args, "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none")
    # what a killed sweeper leaves: a trial asked, launched, never told
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    study = optuna.load_study(study_name="resume", storage=db)
    stale = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    stale.set_user_attr("sweeper_host", os.uname().nodename)
    stale.set_user_attr("sweeper_pid", int(dead))
    _run(tmp_path, *args, "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=none")
    trials = optuna.load_study(study_name="resume", storage=db).trials
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 2)
    assert retry.params == trials[2].params
    table = pd.read_csv(sweep / "sweep_results.csv")
    assert list(table["state"]) == states


def test_cv_command_keeps_the_sweeps_experiment() -> None:
    from agegender.sweep import cv_command

    best = {"model.optimizer.lr": 0.001}
    assert cv_command(best, {"data.fold": "0", "experiment": "levi_hassner", "seed": "1"}) == (
        "python train.py experiment=cv seed=1 model.optimizer.lr=0.001"
    )
    assert cv_command(best, {"experiment": "modern"}) == (
        "python train.py -m experiment=modern data.fold=0,1,2,3,4 model.optimizer.lr=0.001"
    )


def _two_workers_share(tmp_path: Path, storage: str, n_trials: int = 6) -> None:
    """Two sweepers started at once on one study: every trial of the study ran exactly once
    (its job folder in exactly one worker's sweep dir) and none is lost."""
    _app(tmp_path)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "app.py"),
                f"hydra.sweeper.storage={storage}",
                "hydra.sweeper.study_name=shared",
                f"hydra.sweeper.n_trials={n_trials}",
                "hydra/sweeper/pruner=none",
                f"hydra.sweep.dir={tmp_path / f'worker{w}'}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "HYDRA_FULL_ERROR": "1",
                "SWEEP_BARRIER": str(barrier),
                "SWEEP_WORKERS": "2",
            },
        )  # fmt: skip
        for w in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
    from agegender.sweep import open_storage

    trials = optuna.load_study(study_name="shared", storage=open_storage(storage)).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * len(trials)
    # the study's total: both workers count each other's trials (a simultaneous last ask
    # may add one more, as Optuna's own MaxTrialsCallback can)
    assert n_trials <= len(trials) <= n_trials + 1
    ran = [
        int(job.name)
        for w in range(2)
        for job in (tmp_path / f"worker{w}").iterdir()
        if job.is_dir() and job.name.isdigit()
    ]
    assert sorted(ran) == [t.number for t in trials]  # each trial's job ran once, none lost
    # both took part (the barrier in APP makes this certain, not a matter of start-up timing)
    assert all(len(list((tmp_path / f"worker{w}").glob("[0-9]*"))) for w in range(2))


def test_two_workers_share_a_journal_file_study(tmp_path: Path) -> None:
    _two_workers_share(tmp_path, f"journal:{tmp_path / 'journal.log'}")


@pytest.fixture
def postgres_url():  # noqa: ANN201
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's postgresql; .ci/run installs it),
    as the cluster storage users point their SLURM workers at."""
    import shutil
    import socket
    import tempfile

    from conftest import require

    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    require(bool(initdb), "PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        require(False, "psycopg2 is not installed (pip install -e '.[dev]')")
    bin_dir = initdb[-1].parent
    root = Path(tempfile.mkdtemp(prefix="agegender-pg-"))
    root.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(root / "log"),
        "start")  # fmt: skip
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # ~16 s: a PostgreSQL server; the journal-file study runs by default
def test_two_workers_share_a_postgresql_study(tmp_path: Path, postgres_url: str) -> None:
    _two_workers_share(tmp_path, postgres_url)


@pytest.mark.slow  # ~28 s of sweeps
def test_rerunning_a_complete_study_says_so(tmp_path: Path) -> None:
    """A rerun whose study already holds n_trials runs nothing: one line says the study is
    complete, and the CV summary callback has nothing to do (no traceback)."""
    _app(tmp_path)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [f"hydra.sweeper.storage={db}", "hydra.sweeper.study_name=done",
            "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none"]  # fmt: skip
    _run(tmp_path, *args)
    again = _run(tmp_path, *args, f"hydra.sweep.dir={tmp_path / 'rerun'}")
    output = again.stdout + again.stderr
    assert "already holds its 2 trials: complete" in output
    assert "Traceback" not in output and "could not write" not in output
    assert len(optuna.load_study(study_name="done", storage=db).trials) == 2
