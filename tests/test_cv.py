"""Cross-validation aggregation: the paper-style table from a Hydra multirun directory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from agegender.crossval import (
    METRIC_COLUMNS,
    aggregate,
    collect_runs,
    cv_markdown,
    cv_table,
    main,
    plot_cv,
)

#: The rows after the folds, per setting: mean, std, t-interval, bootstrap interval.
SUMMARY = ["mean", "std", "ci_low", "ci_high", "boot_low", "boot_high"]


def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _metrics(base: float) -> dict[str, float]:
    return {c: base + 0.01 * i for i, c in enumerate(METRIC_COLUMNS)}


def test_five_folds_give_fold_rows_and_mean_std(tmp_path: Path) -> None:
    for k in range(5):
        _fake_job(tmp_path, k, [f"data.fold={k}", "trainer.max_steps=3"], _metrics(0.4 + 0.02 * k))
    table = aggregate(tmp_path)
    assert list(table["row"]) == [f"fold {k}" for k in range(5)] + SUMMARY
    mean = table.set_index("row").loc["mean", "test/age_acc"]
    assert mean == pytest.approx(0.44)
    std = table.set_index("row").loc["std", "test/age_acc"]
    assert std == pytest.approx(pd.Series([0.40, 0.42, 0.44, 0.46, 0.48]).std())
    csv = pd.read_csv(tmp_path / "cv_results.csv")
    assert len(csv) == 5 + len(SUMMARY)
    md = (tmp_path / "cv_results.md").read_text()
    assert "44.0 ± 3.2" in md and "Age 1-off (over-sampled)" in md
    assert (tmp_path / "cv_results.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "sweep_results.csv")) == 5


#: Levi & Hassner 2015, Tables 3 and 4 (mean over 5 folds, %), written out independently of
#: agegender.crossval.PUBLISHED so that a wrong figure or a panel mapped to the wrong protocol
#: fails.
PAPER = {
    "test/age_acc": 49.5,
    "test_10crop/age_acc": 50.7,
    "test/age_acc_1off": 84.6,
    "test_10crop/age_acc_1off": 84.7,
    "test/gender_acc": 85.9,
    "test_10crop/gender_acc": 86.8,
}


def test_plot_shows_the_published_figures_and_the_full_setting(tmp_path: Path) -> None:
    setting = [f"model.optimizer.lr=0.00{i}" for i in range(1, 9)]  # longer than 40 characters
    for k in range(3):
        _fake_job(tmp_path, k, [*setting, f"data.fold={k}"], _metrics(0.4 + 0.02 * k))
    fig = plot_cv(cv_table(collect_runs(tmp_path)), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == len(METRIC_COLUMNS) == len(PAPER)
    for ax, col in zip(axes, METRIC_COLUMNS, strict=True):
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1, col
        assert list(dashed[0].get_ydata()) == [PAPER[col]] * 2, col
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"Levi & Hassner 2015: {PAPER[col]}" in legend, (col, legend)
    assert axes[0].get_ylabel() == "accuracy (%)"
    texts = [t.get_text().replace("\n", " ") for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    assert any(" ".join(setting) in t for t in texts), "the setting is shown in full"


def test_failed_fold_is_listed_not_averaged(tmp_path: Path) -> None:
    for k in range(5):
        _fake_job(tmp_path, k, [f"data.fold={k}"], None if k == 3 else _metrics(0.5))
    (tmp_path / "2" / "job_status.json").write_text(
        json.dumps({"status": "failed", "error": "RuntimeError: boom"})
    )
    table = aggregate(tmp_path).set_index("row")
    assert (
        table.loc["fold 3", "status"] == "failed" and "metrics.json" in table.loc["fold 3", "error"]
    )
    assert table.loc["fold 2", "error"] == "RuntimeError: boom"
    assert table.loc["mean", "status"] == "3/5 folds (failed folds excluded)"
    assert table.loc["mean", "test/gender_acc"] == pytest.approx(0.52)
    assert "RuntimeError: boom" in cv_markdown(aggregate(tmp_path))
    assert main([str(tmp_path)]) == 1  # the CLI reports failure


def test_settings_are_aggregated_separately(tmp_path: Path) -> None:
    n = 0
    for lr, base in (("0.1", 0.3), ("0.01", 0.6)):
        for k in range(2):
            _fake_job(tmp_path, n, [f"model.lr={lr}", f"data.fold={k}"], _metrics(base))
            n += 1
    table = aggregate(tmp_path)
    means = table[table["row"] == "mean"].set_index("setting")["test/age_acc"]
    assert means["model.lr=0.1"] == pytest.approx(0.3)
    assert means["model.lr=0.01"] == pytest.approx(0.6)


def test_sweep_without_folds_writes_only_the_sweep_table(tmp_path: Path) -> None:
    job = _fake_job(tmp_path, 0, ["model.lr=0.1"], {"val/age_acc": 0.3})
    (job / "job_status.json").write_text(json.dumps({"status": "completed", "objective": 0.3}))
    assert aggregate(tmp_path) is None
    sweep = pd.read_csv(tmp_path / "sweep_results.csv")
    assert sweep.loc[0, "model.lr"] == 0.1 and sweep.loc[0, "objective"] == 0.3
    assert not (tmp_path / "cv_results.csv").exists()
    assert sweep.loc[0, "status"] == "completed"
    assert collect_runs(tmp_path).loc[0, "status"] == "untested"  # no test metrics


def test_hydra_callback_records_a_failing_fold(tmp_path: Path) -> None:
    """A real Hydra multirun: fold 1 raises; the table still appears and lists it as failed."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.yaml").write_text(
        textwrap.dedent(
            """
            data: {fold: 0}
            hydra:
              sweep: {dir: SWEEP}
              callbacks:
                cv: {_target_: agegender.crossval.CVResultsCallback}
            """
        ).replace("SWEEP", str(tmp_path / "sweep"))
    )
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            import json
            import hydra
            from hydra.core.hydra_config import HydraConfig
            from pathlib import Path

            @hydra.main(config_path="conf", config_name="app", version_base="1.3")
            def run(cfg):
                if cfg.data.fold == 1:
                    raise RuntimeError("fold one exploded")
                out = Path(HydraConfig.get().runtime.output_dir)
                keys = ["age_acc", "age_acc_1off", "gender_acc"]
                m = {f"{p}/{k}": 0.5 for p in ("test", "test_10crop") for k in keys}
                (out / "metrics.json").write_text(json.dumps(m))
                return 0.5

            run()
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(app), "-m", "data.fold=0,1,2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0  # Hydra still reports the failed job
    table = pd.read_csv(tmp_path / "sweep" / "cv_results.csv").set_index("row")
    assert table.loc["fold 1", "status"] == "failed"
    assert "fold one exploded" in table.loc["fold 1", "error"]
    assert table.loc["fold 0", "status"] == "ok" and table.loc["fold 2", "status"] == "ok"
    assert table.loc["mean", "status"] == "2/3 folds (failed folds excluded)"
    status = json.loads((tmp_path / "sweep" / "0" / "job_status.json").read_text())
    assert status["objective"] == 0.5


def test_label_set_named_in_table_and_no_paper_line(tmp_path: Path) -> None:
    """A CV run with labels=coarse3 gets its table; its age figures are over child/teen/adult,
    so the markdown names the classes and the plot draws no Levi & Hassner line."""
    for k in range(3):
        job = _fake_job(tmp_path, k, [f"data.fold={k}", "labels=coarse3"], _metrics(0.6))
        OmegaConf.save(
            OmegaConf.create({"labels": {"name": "coarse3"}}), job / ".hydra" / "config.yaml"
        )
    table = aggregate(tmp_path)
    assert list(table["row"]) == ["fold 0", "fold 1", "fold 2", *SUMMARY]
    md = (tmp_path / "cv_results.md").read_text()
    assert "Age classes: coarse3 (child, teen, adult)" in md
    runs = collect_runs(tmp_path)
    fig = plot_cv(
        cv_table(runs),
        tmp_path / "plot.png",
        {s: lab for s, lab in zip(runs["setting"], runs["labels"], strict=True)},
    )
    for ax in (ax for ax in fig.axes if ax.get_title()):
        assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    assert any("age classes: coarse3" in t for t in texts)
