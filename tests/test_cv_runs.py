"""The users' daily commands end to end on demo data: the 5-fold CV multirun of the paper
protocol (table + plot in the sweep directory), a 2-trial Optuna sweep (objective =
validation; current Optuna through agegender/hydra_plugin), and the launcher configs
(joblib, SLURM) composing with train.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from training_fixtures import CONF_DIR, FAST, REPO, demo_root

from agegender.crossval import METRIC_COLUMNS

#: A tiny step budget: two SGD steps per fold, validated once, tested on two batches.
TINY = [*FAST, "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=csv"]


#: The rows after the folds, per setting: mean, std, t-interval, bootstrap interval.
SUMMARY = ["mean", "std", "ci_low", "ci_high", "boot_low", "boot_high"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:  # noqa: ANN001
    return demo_root(tmp_path_factory)


def _train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_five_fold_cv_writes_the_paper_table(demo: Path, tmp_path: Path) -> None:
    """``experiment=cv`` = the paper protocol on folds 0-4; the callback writes the table."""
    sweep = tmp_path / "cv"
    proc = _train(["experiment=cv", *TINY, f"data.root={demo}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-4000:]

    table = pd.read_csv(sweep / "cv_results.csv").set_index("row")
    assert list(table.index) == [f"fold {k}" for k in range(5)] + SUMMARY
    assert (table.loc[[f"fold {k}" for k in range(5)], "status"] == "ok").all()
    folds = table.loc[[f"fold {k}" for k in range(5)], METRIC_COLUMNS]
    assert ((folds >= 0) & (folds <= 1)).all().all()
    # the mean row is the mean of the fold rows it lists, not a figure from elsewhere
    pd.testing.assert_series_equal(
        table.loc["mean", METRIC_COLUMNS].astype(float), folds.mean(), check_names=False
    )
    pd.testing.assert_series_equal(
        table.loc["std", METRIC_COLUMNS].astype(float), folds.std(), check_names=False
    )
    # every fold wrote test_predictions.csv: the bootstrap interval is there and holds the
    # mean (the file's argmax accuracies are metrics.json's)
    boot = table.loc[["boot_low", "boot_high"], METRIC_COLUMNS].astype(float)
    assert boot.notna().all().all(), table.loc["boot_low", "error"]
    assert (boot.loc["boot_low"] <= table.loc["mean", METRIC_COLUMNS] + 1e-6).all()  # float32
    assert (boot.loc["boot_high"] >= table.loc["mean", METRIC_COLUMNS] - 1e-6).all()
    assert set(pd.read_csv(sweep / "cv_groups.csv")["protocol"]) == {"test", "test_10crop"}
    md = (sweep / "cv_results.md").read_text()
    assert "Age exact (single crop)" in md and "Gender (over-sampled)" in md and "± " in md
    assert (sweep / "cv_results.png").read_bytes()[:4] == b"\x89PNG"
    # each fold tested its own fold with the paper solver
    for k in range(5):
        overrides = yaml.safe_load((sweep / str(k) / ".hydra" / "overrides.yaml").read_text())
        assert f"data.fold={k}" in overrides
        config = yaml.safe_load((sweep / str(k) / ".hydra" / "config.yaml").read_text())
        assert config["data"]["fold"] == k and config["model"]["optimizer"]["momentum"] == 0.9

    # the standalone aggregation reproduces the callback's table
    again = subprocess.run(
        [sys.executable, "-m", "agegender.crossval", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(sweep / "cv_results.csv").set_index("row"), table)


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_cv_reports_a_failed_fold(demo: Path, tmp_path: Path) -> None:
    """A fold whose run dies (here fold 5, which Adience does not have) is listed as failed
    with its error; the mean covers the folds that finished and says so; exit code != 0."""
    sweep = tmp_path / "cv"
    args = ["-m", "experiment=levi_hassner", *TINY, f"data.root={demo}"]
    proc = _train([*args, f"hydra.sweep.dir={sweep}", "data.fold=0,5"])
    assert proc.returncode != 0
    table = pd.read_csv(sweep / "cv_results.csv").set_index("row")
    assert table.loc["fold 0", "status"] == "ok"
    assert table.loc["fold 5", "status"] == "failed"
    assert "fold" in table.loc["fold 5", "error"]
    assert table.loc["mean", "status"] == "1/2 folds (failed folds excluded)"
    assert table.loc["mean", "test/gender_acc"] == table.loc["fold 0", "test/gender_acc"]
    assert "failed" in (sweep / "cv_results.md").read_text()


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_folds_in_parallel_with_the_joblib_launcher(tmp_path: Path) -> None:
    """hydra/launcher=local_parallel runs two folds at once on a fresh demo root: one job
    generates and preprocesses it while the other waits on the lock (no race), and
    preprocessing inside a joblib worker runs in-process (no nested process pool)."""
    sweep = tmp_path / "cv"
    args = ["experiment=cv", "hydra/launcher=local_parallel", *TINY, "data.fold=0,1"]
    proc = _train([*args, f"data.root={tmp_path / 'demo'}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(sweep / "cv_results.csv").set_index("row")
    assert list(table.index) == ["fold 0", "fold 1", *SUMMARY]
    assert (table.loc[["fold 0", "fold 1"], "status"] == "ok").all()
    assert "Using categorical units" not in proc.stderr + proc.stdout


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_optuna_sweep_runs_and_reports(demo: Path, tmp_path: Path) -> None:
    """``hparams_search=optuna`` with 2 TPE trials: each trial trains, returns its validation
    objective, and the sweep lands in one table (trial, params, objective)."""
    sweep = tmp_path / "optuna"
    proc = _train(
        [
            "hparams_search=optuna",
            # batch size is searched (32/50/64): a command-line value would pin it
            *(a for a in TINY if not a.startswith("data.batch_size=")),
            f"data.root={demo}",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweeper.n_trials=2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(sweep / "sweep_results.csv")
    assert list(table["trial"]) == [0, 1] and (table["state"] == "COMPLETE").all()
    assert {"objective", "duration_s", "last_step"} <= set(table.columns)
    assert "error" not in table.columns
    assert table["objective"].between(0, 1).all()
    for name in ("model.optimizer.lr", "data.batch_size", "model.model_kwargs.dropout"):
        assert table[name].notna().all(), name
    assert table["data.batch_size"].isin([32, 50, 64]).all()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(table["objective"].max())
    assert best["cv_command"] in proc.stdout and "experiment=cv" in best["cv_command"]
    assert not (sweep / "cv_results.csv").exists()  # no folds were swept
    for k in (0, 1):  # trials never looked at the test fold
        metrics = json.loads((sweep / str(k) / "metrics.json").read_text())
        assert "test/age_acc" not in metrics and "val/acc" in metrics
        assert json.loads((sweep / str(k) / "job_status.json").read_text())["objective"]


@pytest.mark.slow  # ~2 min: three trials of real training
def test_optuna_trials_report_each_validation(demo: Path, tmp_path: Path) -> None:
    """The real Lightning pruning callback: each trial reports val/acc after every validation
    (steps 1..3) to the default median pruner, which may stop a trial after the first one
    finished; a pruned trial is recorded as PRUNED with the step it stopped at."""
    import optuna

    sweep = tmp_path / "optuna"
    proc = _train(
        [
            "hparams_search=optuna",
            *(a for a in TINY if not a.startswith(("data.batch_size=", "trainer."))),
            "trainer.max_steps=3",
            "trainer.val_check_interval=1",
            f"data.root={demo}",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner.n_startup_trials=1",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(sweep / "sweep_results.csv")
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}, table
    assert (table.loc[table["state"] == "COMPLETE", "last_step"] == 3).all()
    assert (table.loc[table["state"] == "PRUNED", "last_step"] < 3).all()
    study = optuna.load_study(
        study_name="agegender",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))
        ),
    )
    first = study.trials[0]
    assert sorted(first.intermediate_values) == [1, 2, 3]
    assert first.value == pytest.approx(max(first.intermediate_values.values()))


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("local_parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_configs_compose(launcher: str, target: str) -> None:
    """The cluster path composes here even though it cannot run: the CV command with the
    SLURM launcher and the GPU trainer, and the joblib launcher for local parallel folds."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["experiment=cv", f"hydra/launcher={launcher}", "trainer=gpu"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_ == target
    assert cfg.hydra.sweeper.params["data.fold"] == "0,1,2,3,4"
    assert cfg.trainer.accelerator == "gpu"


@pytest.mark.slow  # ~30-60 s: two folds of real training
def test_cv_with_a_label_set_writes_its_table(demo: Path, tmp_path: Path) -> None:
    """``train.py -m experiment=modern labels=coarse3 data.fold=0,1``: per-fold metrics over
    child/teen/adult and the CV table naming the classes."""
    sweep = tmp_path / "cv"
    args = ["-m", "experiment=modern", "labels=coarse3", "data.fold=0,1", *TINY]
    proc = _train([*args, f"data.root={demo}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(sweep / "cv_results.csv").set_index("row")
    assert list(table.index) == ["fold 0", "fold 1", *SUMMARY]
    assert (table.loc[["fold 0", "fold 1"], "status"] == "ok").all()
    assert "Age classes: coarse3 (child, teen, adult)" in (sweep / "cv_results.md").read_text()
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    classes = {k.rsplit("/", 1)[1] for k in metrics if "/age_acc_class/" in k}
    assert classes and classes <= {"child", "teen", "adult"}
