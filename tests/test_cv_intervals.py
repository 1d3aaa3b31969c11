"""Cross-validation intervals and per-group rows (agegender.crossval): the t-interval of the
fold mean, the within-fold subject bootstrap from each run's test_predictions.csv, the
per-group table, and what happens for runs from before per-face predictions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from agegender.crossval import (
    METRIC_COLUMNS,
    PREDICTIONS_FILE,
    aggregate,
    collect_runs,
    cv_groups,
    cv_markdown,
    cv_table,
    load_predictions,
    plot_cv,
    read_predictions,
    setting_labels,
)

#: Student's t quantile t_{0.975, 4} (5 folds), from a printed table: the t-interval is
#: checked against it, not against the scipy call the code makes.
T_975_4 = 2.7764451051977987
ADIENCE8 = ["0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100"]
COARSE3 = ["child", "teen", "adult"]
STAGES = ("test", "test_10crop")


def _faces_frame(faces: list[tuple], classes: int = 8) -> pd.DataFrame:
    """test_predictions.csv rows from (stage, subject, true age, true gender, predicted age,
    predicted gender): the predicted class gets the highest probability."""
    rows = []
    for n, (stage, subject, age, gender, pred_age, pred_gender) in enumerate(faces):
        p_age = np.full(classes, 0.1 / (classes - 1))
        p_age[pred_age] = 0.9
        p_gender = [0.8, 0.2] if pred_gender == 0 else [0.3, 0.7]
        row = {"stage": stage, "row": n, "subject": subject, "age": age, "gender": gender}
        row |= {f"p_age_{i}": p for i, p in enumerate(p_age)}
        rows.append(row | {"p_gender_0": p_gender[0], "p_gender_1": p_gender[1]})
    return pd.DataFrame(rows)


def _accuracies(faces: list[tuple]) -> dict[str, float]:
    """metrics.json of a run, counted by hand from the intended predictions."""
    out = {}
    for stage in STAGES:
        mine = [f for f in faces if f[0] == stage]
        aged = [f for f in mine if f[2] >= 0]
        gendered = [f for f in mine if f[3] >= 0]
        out[f"{stage}/age_acc"] = sum(f[4] == f[2] for f in aged) / len(aged)
        out[f"{stage}/age_acc_1off"] = sum(abs(f[4] - f[2]) <= 1 for f in aged) / len(aged)
        out[f"{stage}/gender_acc"] = sum(f[5] == f[3] for f in gendered) / len(gendered)
    return out


def _job(
    sweep: Path,
    k: int,
    metrics: dict[str, float],
    faces: list[tuple] | None,
    overrides: tuple[str, ...] = (),
    labels: str | None = None,
    classes: int = 8,
) -> Path:
    job = sweep / str(k)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create([*overrides, f"data.fold={k}"]), job / ".hydra" / "overrides.yaml"
    )
    if labels:
        OmegaConf.save(
            OmegaConf.create({"labels": {"name": labels}}), job / ".hydra" / "config.yaml"
        )
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "job_status.json").write_text(json.dumps({"status": "completed", "objective": 0.5}))
    if faces is not None:
        _faces_frame(faces, classes).to_csv(job / PREDICTIONS_FILE, index=False)
    return job


def _fold_faces(k: int) -> list[tuple]:
    """Fold k: 6 subjects with 2-4 faces each; whether a subject's faces are right is set
    per subject (so that faces of one person are correlated, as in Adience), plus a face
    with unknown gender and one with unknown age (they count for one task only)."""
    faces = []
    for i in range(6):
        subject = f"{k}-{i}"
        age, gender = (i + k) % 8, i % 2
        for stage in STAGES:
            wrong_age = i % 3 == (0 if stage == "test" else 1)
            one_off = age + 1 if age < 7 else age - 1
            pred_age = age if not wrong_age else (one_off if i % 2 == 0 else (age + 3) % 8)
            wrong_gender = (i + 2 * k) % 4 == (0 if stage == "test" else 1)
            pred_gender = 1 - gender if wrong_gender else gender
            for _ in range(2 + i % 3):
                faces.append((stage, subject, age, gender, pred_age, pred_gender))
        for stage in STAGES:
            faces.append((stage, subject, age, -1, age, 0))  # gender unknown: age only
            faces.append((stage, subject, -1, gender, 3, 1 - gender))  # age unknown
    return faces


FOLDS = {k: _fold_faces(k) for k in range(5)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five folds with predictions, aggregated once (the md, csv and png of it)."""
    root = tmp_path_factory.mktemp("cv")
    for k, faces in FOLDS.items():
        _job(root, k, _accuracies(faces), faces)
    aggregate(root)
    return root


def _tables(sweep: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """What aggregate writes (cv_results.csv indexed by row, cv_groups.csv, cv_results.md),
    without drawing the PNG, which takes seconds: the tests that need it call aggregate."""
    runs = collect_runs(sweep)
    predictions = load_predictions(runs)
    table, groups = cv_table(runs, predictions), cv_groups(runs, predictions)
    return table.set_index("row"), groups, cv_markdown(table, setting_labels(runs), groups)


def _rows(sweep: Path) -> pd.DataFrame:
    return pd.read_csv(sweep / "cv_results.csv").set_index("row")


def test_t_interval_is_the_hand_computed_one(tmp_path: Path) -> None:
    """Runs from before test_predictions.csv: the t-interval is there, the bootstrap rows
    are NaN and the md says why."""
    for k in range(5):
        _job(tmp_path, k, {c: 0.40 + 0.02 * k for c in METRIC_COLUMNS}, None)
    table = aggregate(tmp_path).set_index("row")
    # std of 0.40..0.48 = sqrt(0.001); half width = t * std / sqrt(5)
    half = T_975_4 * math.sqrt(0.001) / math.sqrt(5)
    for col in METRIC_COLUMNS:
        assert table.loc["ci_low", col] == pytest.approx(0.44 - half, abs=1e-12)
        assert table.loc["ci_high", col] == pytest.approx(0.44 + half, abs=1e-12)
        assert math.isnan(table.loc["boot_low", col]) and math.isnan(table.loc["boot_high", col])
    assert 0.44 - half == pytest.approx(0.400735, abs=1e-6)
    note = (
        "no per-face predictions: runs before this version (fold 0, fold 1, fold 2, fold 3, fold 4)"
    )
    assert table.loc["boot_low", "error"] == note
    csv = pd.read_csv(tmp_path / "cv_results.csv").set_index("row")
    assert csv.loc["ci_high", "test/gender_acc"] == pytest.approx(0.44 + half)
    md = (tmp_path / "cv_results.md").read_text()
    assert "| mean ± std [95% t-interval] | **44.0 ± 3.2** [40.1, 47.9] |" in md
    assert f"Bootstrap interval: {note}." in md
    assert "bootstrap (subjects)" not in md and "Per group" not in md
    groups = pd.read_csv(tmp_path / "cv_groups.csv")
    assert groups.empty and list(groups.columns)[-3:] == ["value", "low", "high"]


def test_t_interval_needs_two_folds(tmp_path: Path) -> None:
    _job(tmp_path, 0, {c: 0.5 for c in METRIC_COLUMNS}, None)
    _job(tmp_path, 1, {}, None)
    (tmp_path / "1" / "metrics.json").unlink()
    table, _, md = _tables(tmp_path)
    assert table.loc["mean", "status"] == "1/2 folds (failed folds excluded)"
    assert math.isnan(table.loc["ci_low", "test/age_acc"])
    assert "| **50.0** |" in md  # no "± " without a std, no interval from one fold


def test_bootstrap_contains_the_mean_and_is_deterministic(sweep: Path, tmp_path: Path) -> None:
    table = _rows(sweep)
    fold_means = pd.DataFrame([_accuracies(f) for f in FOLDS.values()]).mean()
    for col in METRIC_COLUMNS:
        mean, low, high = (table.loc[r, col] for r in ("mean", "boot_low", "boot_high"))
        assert mean == pytest.approx(fold_means[col])
        assert low < mean < high, col
        assert low >= 0 and high <= 1
    assert (
        table.loc["boot_low", "status"] == "5/5 folds, 1000 resamples of the subjects of each fold"
    )
    assert pd.isna(table.loc["boot_low", "error"])
    # computed again: the same numbers and the same md, to the byte
    again, groups, md = _tables(sweep)
    columns = ["setting", "row", "status", "error", *METRIC_COLUMNS]
    csv = again.reset_index()[columns].to_csv(index=False)
    assert csv == (sweep / "cv_results.csv").read_text()
    assert groups.to_csv(index=False) == (sweep / "cv_groups.csv").read_text()
    assert md == (sweep / "cv_results.md").read_text()
    other = cv_table(collect_runs(sweep), seed=1).set_index("row")
    assert (other.loc["boot_low", METRIC_COLUMNS] != table.loc["boot_low", METRIC_COLUMNS]).any()
    md = (sweep / "cv_results.md").read_text()
    low, high = (
        100 * table.loc["boot_low", "test/gender_acc"],
        100 * table.loc["boot_high", "test/gender_acc"],
    )
    assert "| 95% bootstrap (subjects) | " in md and f"[{low:.1f}, {high:.1f}]" in md


def _one_task_fold(sweep: Path, k: int, subjects: list[list[bool]], repeat: int = 1) -> None:
    """A fold whose subjects have faces right (True) or wrong (False) on every task."""
    faces = []
    for i, answers in enumerate(subjects):
        for right in answers:
            for stage in STAGES:
                pred = 2 if right else 6
                faces += [(stage, f"{k}-{i}", 2, 0, pred, 0 if right else 1)] * repeat
    _job(sweep, k, _accuracies(faces), faces)


def test_bootstrap_resamples_subjects_within_each_fold(tmp_path: Path) -> None:
    """Hand-checkable cases. Each fold: one subject right, one wrong (one face each): a
    resampled fold scores 0, 1/2 or 1 with chances 1/4, 1/2, 1/4, so the 5-fold mean is
    Binomial(10, 1/2) / 10, whose 2.5% and 97.5% points are 0.2 and 0.8 (P(X <= 1) = 11/1024,
    P(X <= 2) = 56/1024)."""
    for k in range(5):
        _one_task_fold(tmp_path / "binomial", k, [[True], [False]])
    table = _tables(tmp_path / "binomial")[0]
    for col in METRIC_COLUMNS:
        assert table.loc["mean", col] == pytest.approx(0.5)
        assert table.loc["boot_low", col] == pytest.approx(0.2)
        assert table.loc["boot_high", col] == pytest.approx(0.8)

    # Whole subjects are drawn: ten identical faces per person change nothing (a bootstrap
    # of faces would give a far narrower interval).
    for k in range(5):
        _one_task_fold(tmp_path / "repeated", k, [[True], [False]], repeat=10)
    repeated = _tables(tmp_path / "repeated")[0]
    pd.testing.assert_frame_equal(
        repeated.loc[["boot_low", "boot_high"], METRIC_COLUMNS],
        table.loc[["boot_low", "boot_high"], METRIC_COLUMNS],
    )

    # Folds are resampled separately: with one subject per fold every fold keeps its score,
    # so the interval has no width (even though that subject's faces disagree).
    answers = [[True, True, False], [True], [False], [True, False], [True, True, True, False]]
    for k, faces in enumerate(answers):
        _one_task_fold(tmp_path / "single", k, [faces])
    single = _tables(tmp_path / "single")[0]
    expected = np.mean([sum(a) / len(a) for a in answers])
    for col in METRIC_COLUMNS:
        assert single.loc["boot_low", col] == pytest.approx(expected)
        assert single.loc["boot_high", col] == pytest.approx(expected)


def test_fold_without_predictions_gives_nan_rows_and_a_note(sweep: Path, tmp_path: Path) -> None:
    shutil.copytree(sweep, tmp_path / "cv")
    (tmp_path / "cv" / "2" / PREDICTIONS_FILE).unlink()
    (tmp_path / "cv" / "4" / PREDICTIONS_FILE).write_text("stage,row,subject\ntest,0,a\n")
    table, groups, md = _tables(tmp_path / "cv")
    for col in METRIC_COLUMNS:
        assert math.isnan(table.loc["boot_low", col]) and math.isnan(table.loc["boot_high", col])
        assert table.loc["ci_low", col] <= table.loc["mean", col] <= table.loc["ci_high", col]
    note = table.loc["boot_high", "error"]
    assert note.startswith("no per-face predictions: runs before this version (fold 2); fold 4: ")
    assert "test_predictions.csv: missing column(s) age, gender, p_age_0.. or p_gender_0.." in note
    assert "Bootstrap interval: no per-face predictions: runs before this version (fold 2)" in md
    # the per-group rows pool the folds that have predictions: 0, 1 and 3
    male = groups.query("protocol == 'test' and metric == 'age_acc' and group == 'male'")
    faces = [f for k in (0, 1, 3) for f in FOLDS[k] if f[0] == "test" and f[3] == 0 and f[2] >= 0]
    assert male["count"].item() == len(faces)
    assert male["value"].item() == pytest.approx(np.mean([f[4] == f[2] for f in faces]))


def test_per_group_values_are_hand_computed(sweep: Path) -> None:
    groups = pd.read_csv(sweep / "cv_groups.csv")
    columns = "setting protocol task metric by group count subjects value low high"
    assert list(groups.columns) == columns.split()
    faces = [f for fold in FOLDS.values() for f in fold]
    expected = []
    for stage in STAGES:
        mine = [f for f in faces if f[0] == stage]
        for cls, name in enumerate(ADIENCE8):  # gender accuracy per true age class
            sel = [f for f in mine if f[2] == cls and f[3] >= 0]
            if sel:
                right = sum(f[5] == f[3] for f in sel)
                expected.append((stage, "gender_acc", "age", name, sel, right))
        for metric in ("age_acc", "age_acc_1off"):
            for g, name in enumerate(["male", "female"]):
                sel = [f for f in mine if f[3] == g and f[2] >= 0]
                tol = 0 if metric == "age_acc" else 1
                right = sum(abs(f[4] - f[2]) <= tol for f in sel)
                expected.append((stage, metric, "gender", name, sel, right))
    assert len(groups) == len(expected)
    for row, (stage, metric, by, name, sel, right) in zip(
        groups.itertuples(), expected, strict=True
    ):
        assert (row.protocol, row.metric, row.by, row.group) == (stage, metric, by, name)
        assert row.task == metric.split("_")[0]
        assert row.count == len(sel) and row.subjects == len({f[1] for f in sel})
        assert row.value == pytest.approx(right / len(sel))
        assert row.low <= row.value <= row.high
    md = (sweep / "cv_results.md").read_text()
    first = groups.iloc[0]
    cell = f"{100 * first['value']:.1f} [{100 * first['low']:.1f}, {100 * first['high']:.1f}]"
    counts = f"{first['count']} | {first['subjects']}"
    line = f"| single crop | Gender | true age | 0-2 | {counts} | {cell} |"
    assert "**Per group**" in md and line in md


def test_groups_use_the_label_sets_class_names(tmp_path: Path) -> None:
    """coarse3 runs: age classes child/teen/adult in the set's order; a file whose age
    probabilities do not match the set is refused with a note, not a crash."""
    folds = {}
    for k in range(2):
        faces = [
            (s, f"{k}-{i}", i % 3, i % 2, (i + k) % 3, i % 2) for s in STAGES for i in range(6)
        ]
        folds[k] = faces
        _job(tmp_path, k, _accuracies(faces), faces, ("labels=coarse3",), "coarse3", classes=3)
    _, groups, md = _tables(tmp_path)
    by_age = groups.query("protocol == 'test' and by == 'age'")
    assert list(by_age["group"]) == COARSE3 and list(by_age["count"]) == [4, 4, 4]
    assert "| single crop | Gender | true age | teen |" in md

    _faces_frame(folds[1], classes=8).to_csv(tmp_path / "1" / PREDICTIONS_FILE, index=False)
    table = _tables(tmp_path)[0]
    assert "8 age probabilities, the run's label set has 3" in table.loc["boot_low", "error"]
    assert math.isnan(table.loc["boot_low", "test/age_acc"])


def test_one_task_network_and_faces_without_a_subject(tmp_path: Path) -> None:
    """A gender-only network's file has no p_age columns: its age outcomes are NaN (no
    figure), not wrong; a face without a subject is its own cluster."""
    path = tmp_path / PREDICTIONS_FILE
    path.write_text(
        "stage,row,subject,age,gender,p_gender_0,p_gender_1\n"
        "test,0,a,3,0,0.9,0.1\n"
        "test,1,,2,1,0.8,0.2\n"
        "test,2,,-1,-1,0.4,0.6\n"
    )
    faces = read_predictions(path, age_classes=8)
    assert faces["age_acc"].isna().all() and faces["age_acc_1off"].isna().all()
    assert faces["gender_acc"].tolist()[:2] == [1.0, 0.0] and np.isnan(faces["gender_acc"][2])
    assert faces["subject"].tolist() == ["a", "row 1", "row 2"]
    path.write_text("stage,row,subject,age,gender,p_gender_0,p_gender_1\ntest,0,a,9,0,0.9,0.1\n")
    with pytest.raises(ValueError, match=r"age must be a class index \(0..7\) or -1"):
        read_predictions(path, age_classes=8)


def test_png_shows_the_bootstrap_interval(sweep: Path) -> None:
    assert (sweep / "cv_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = _rows(sweep).reset_index()
    fig = plot_cv(table, sweep / "again.png")
    rows = table.set_index("row")
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == len(METRIC_COLUMNS)
    for ax, col in zip(axes, METRIC_COLUMNS, strict=True):
        (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
        segment = bars.lines[2][0].get_segments()[0]  # the vertical error line
        low, high = 100 * rows.loc["boot_low", col], 100 * rows.loc["boot_high", col]
        assert segment[:, 1].tolist() == pytest.approx([low, high])
        assert segment[0, 0] == 5  # after folds 0..4
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"mean, 95% bootstrap: [{low:.1f}, {high:.1f}]" in legend
        assert any(t.startswith("Levi & Hassner 2015: ") for t in legend)
        assert len([line for line in ax.get_lines() if line.get_linestyle() == "--"]) == 1
        assert [t.get_text() for t in ax.get_xticklabels()][-1] == "mean"


def test_png_draws_a_zero_width_interval(tmp_path: Path) -> None:
    """One subject per fold gives a zero-width bootstrap interval whose ends can miss the
    mean by a rounding error (a negative error bar, which matplotlib refuses): still drawn."""
    columns = ["setting", "row", "status", "error", *METRIC_COLUMNS]
    rows = [["", f"fold {k}", "ok", "", *[0.1 + 0.1 * k] * 6] for k in range(3)]
    summary = {"mean": 0.2, "std": 0.1, "ci_low": 0.0, "ci_high": 0.4}
    summary |= {"boot_low": 0.2 + 1e-15, "boot_high": 0.2 - 1e-15}
    rows += [["", name, "3/3 folds", "", *[value] * 6] for name, value in summary.items()]
    fig = plot_cv(pd.DataFrame(rows, columns=columns), tmp_path / "cv.png")
    ax = next(ax for ax in fig.axes if ax.get_title())
    (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert bars.lines[2][0].get_segments()[0][:, 1].tolist() == pytest.approx([20, 20])
