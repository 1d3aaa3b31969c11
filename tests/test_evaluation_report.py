"""What report.md, report.json and the figures tell a reader, from hand-made probability
tables (no network): no interval claims certainty (a 4-of-4 group is not [1, 1]), each row
names its interval method (bootstrap for many subjects that differ, exact otherwise), small
sets and groups are called too few to conclude, the most confident errors are listed with
their files, settings are written in words, and the figures carry their counts."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.calibration import calibration_record
from agegender.evaluation.outputs import headline_text, report_markdown, write_outputs
from agegender.evaluation.report import EvalSettings, FaceTable, build_report
from agegender.labels import load_label_set
from agegender.stats import exact_interval

COARSE3 = load_label_set("coarse3")


def _probs(predicted: np.ndarray, classes: int, sure: np.ndarray) -> np.ndarray:
    """One row per face: ``sure`` on the predicted class, the rest spread evenly."""
    probs = np.repeat(((1 - sure) / (classes - 1))[:, None], classes, axis=1)
    probs[np.arange(len(predicted)), predicted] = sure
    return probs


def _table(
    subjects: list[str],
    age: list[int],
    pred_age: list[int],
    gender: list[int],
    pred_gender: list[int],
    source: list[str],
    sure: float | np.ndarray = 0.8,
    **kwargs: object,
) -> FaceTable:
    n = len(subjects)
    sure_values = np.broadcast_to(np.asarray(sure, dtype=float), (n,)).copy()
    frame = pd.DataFrame(
        {
            "subject": subjects,
            "age": age,
            "gender": gender,
            "source": source,
            "path": [f"img_{i:03d}.jpg" for i in range(n)],
        }
    )
    probs = {
        "age": _probs(np.asarray(pred_age), 3, sure_values),
        "gender": _probs(np.asarray(pred_gender), 2, sure_values),
    }
    return FaceTable(frame, probs, COARSE3, COARSE3, **kwargs)  # type: ignore[arg-type]


def _block(report: dict, task: str, metric: str, by: str) -> dict:
    (found,) = [
        b for b in report["groups"] if (b["task"], b["metric"], b["by"]) == (task, metric, by)
    ]
    return found


def _md_row(markdown: str, first_cell: str) -> list[str]:
    """The cells of report.md's table rows starting with ``first_cell`` (the first found
    after the last heading that precedes it is enough here: callers slice by section)."""
    for line in markdown.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r}")


# -- no interval claims certainty ------------------------------------------------------------
def _fifteen(has_subjects: bool = True) -> FaceTable:
    """The issue's 15-face set: source C is 4 faces, every one right on every task."""
    age = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 0, 1, 2, 2]
    pred = [0, 1, 0, 1, 2, 1, 2, 0, 2, 2, 1, 0, 1, 2, 2]
    gender = [0, 1] * 7 + [0]
    pred_gender = [0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    pred_gender[11:] = gender[11:]
    source = ["A"] * 6 + ["B"] * 5 + ["C"] * 4
    subjects = [f"s{i}" for i in range(15)]
    table = _table(subjects, age, pred, gender, pred_gender, source)
    table.has_subjects = has_subjects
    return table


@pytest.mark.parametrize("has_subjects", [True, False])
def test_a_four_of_four_group_is_not_zero_width(has_subjects: bool) -> None:
    settings = EvalSettings(resamples=200, groups=("source",))
    report = build_report(_fifteen(has_subjects), settings).report
    for task, metric in (("age", "exact"), ("age", "1off"), ("gender", "accuracy")):
        (c,) = [r for r in _block(report, task, metric, "source")["rows"] if r["group"] == "C"]
        assert (c["count"], c["value"], c["units"], c["method"]) == (4, 1.0, 4, "exact")
        # Clopper-Pearson of 4 of 4: [0.398, 1], not the bootstrap's [1, 1]
        assert (c["low"], c["high"]) == pytest.approx((0.3976, 1.0), abs=1e-4)
        assert c["small"] is True
    # no interval of the report has zero width: overall, groups, gaps, minors
    intervals = list(report["overall"].values())
    intervals += [r for b in report["groups"] for r in b["rows"]]
    intervals += [b["gap"] for b in report["groups"] if b["gap"]]
    intervals += [v for v in report["minors"].values() if "undefined" not in v]
    assert len(intervals) > 12
    assert all(i["low"] < i["high"] for i in intervals), [
        (i.get("group"), i["low"], i["high"]) for i in intervals if not i["low"] < i["high"]
    ]
    unit = "subjects" if has_subjects else "faces"
    markdown = report_markdown(json.loads(json.dumps(report)))
    section = markdown.split("### age exact accuracy by source")[1]
    assert _md_row(section, "C") == [
        "C", "4", "4" if has_subjects else "", "1.000", "[0.398, 1.000]",
        f"exact: 4 {unit}, under 30, too few to conclude",
    ]  # fmt: skip
    assert "[1.000, 1.000]" not in markdown and "[0.000, 0.000]" not in markdown


def test_interval_method_switch() -> None:
    """A: 40 subjects, mixed: bootstrap. B: 40 subjects all right: exact. D: 6 subjects,
    mixed: exact. Each row of report.md names its method; the A-B gap is MOVER."""
    rng = np.random.default_rng(2)
    subjects, source, right = [], [], []
    for name, count, rate in (("A", 40, 0.6), ("B", 40, 1.0), ("D", 6, 0.5)):
        person_right = rng.random(count) < rate if rate < 1 else np.ones(count, bool)
        if name == "D":
            person_right = np.array([True, False] * 3)
        for p in range(count):
            for _ in range(2):  # two faces per subject, right or wrong together
                subjects.append(f"{name}{p}")
                source.append(name)
                right.append(bool(person_right[p]))
    right = np.array(right)
    n = len(right)
    age = np.full(n, 2)
    pred_age = np.where(right, 2, 1)
    gender = np.zeros(n, int)
    report = build_report(
        _table(subjects, age, pred_age, gender, gender, source),
        EvalSettings(resamples=300, groups=("source",)),
    ).report
    rows = {r["group"]: r for r in _block(report, "age", "exact", "source")["rows"]}
    assert (rows["A"]["method"], rows["A"]["units"], rows["A"]["small"]) == ("bootstrap", 40, False)
    assert (rows["B"]["method"], rows["B"]["units"], rows["B"]["small"]) == ("exact", 40, False)
    assert (rows["B"]["low"], rows["B"]["high"]) == pytest.approx(exact_interval(40, 40))
    assert (rows["D"]["method"], rows["D"]["units"], rows["D"]["small"]) == ("exact", 6, True)
    assert (rows["D"]["low"], rows["D"]["high"]) == pytest.approx(exact_interval(3, 6))
    gap = _block(report, "age", "exact", "source")["gap"]
    assert (gap["high_group"], gap["low_group"], gap["method"]) == ("B", "D", "mover")
    assert report["overall"]["age_exact"]["method"] == "bootstrap"  # 86 subjects, mixed
    assert report["overall"]["gender"]["method"] == "exact"  # all right
    text = report_markdown(json.loads(json.dumps(report)))
    section = text.split("### age exact accuracy by source")[1].split("###")[0]
    assert _md_row(section, "A")[-1] == "bootstrap over 40 subjects"
    assert _md_row(section, "B")[-1] == "exact: all right"
    assert _md_row(section, "D")[-1] == "exact: 6 subjects, under 30, too few to conclude"
    assert "from the two groups' intervals (MOVER)" in section
    console = headline_text(report).splitlines()
    assert console[0].split()[-2:] == ["interval", "method"]
    assert console[1].endswith("bootstrap over 86 subjects")
    assert console[3].endswith("exact: all right")


# -- too few faces, most confident errors, settings in words ----------------------------------
def test_too_few_faces_to_conclude() -> None:
    small = build_report(_fifteen(), EvalSettings(resamples=50, groups=("source",))).report
    (warning,) = small["warnings"]
    assert warning.startswith("Too few faces to conclude: the set has 15 faces of 15 subjects")
    assert "under 30 subjects" in warning
    assert f"- **Warning**: {warning}" in report_markdown(json.loads(json.dumps(small)))
    assert all(i["small"] for i in small["overall"].values())

    # 300 faces of 100 subjects, one source of 4 faces: the set is fine, source C is not
    n = 300
    subjects = [f"p{i // 3}" for i in range(n)]
    source = ["A"] * 150 + ["B"] * 146 + ["C"] * 4
    age = np.arange(n) % 3
    pred_age = np.where(np.arange(n) % 4 == 0, (age + 1) % 3, age)
    gender = (np.arange(n) // 3) % 2
    big = build_report(
        _table(subjects, age, pred_age, gender, gender, source),
        EvalSettings(resamples=50, groups=("source",)),
    ).report
    assert not any(i["small"] for i in big["overall"].values())
    by_source = [w for w in big["warnings"] if " by source: " in w]
    assert len(by_source) == 3 and all("C (4 faces of 2 subjects)" in w for w in by_source)
    assert not any(w.startswith("Too few faces to conclude: the set") for w in big["warnings"])


def test_most_confident_errors(tmp_path: Path) -> None:
    sure = np.array([0.95, 0.6, 0.99, 0.7, 0.9, 0.5])
    table = _table(
        ["a", "a", "b", "c", "d", "e"],
        [0, 1, 2, 2, 0, 1],
        [0, 2, 1, 2, 1, 0],  # faces 1, 2, 4, 5 wrong
        [0, 1, 0, 1, 0, 1],
        [1, 1, 0, 1, 0, 0],  # faces 0 and 5 wrong
        ["x"] * 6,
        sure=sure,
    )
    report = build_report(table, EvalSettings(resamples=20, top_errors=3)).report
    age = report["confident_errors"]["age"]
    assert (age["faces"], age["wrong"], age["wrong_confident"], age["confident_at"]) == (
        6, 4, 2, 0.9,
    )  # fmt: skip
    # the three surest of the four wrong faces: 2 (0.99), 4 (0.9), 1 (0.6)
    assert [(e["face"], e["path"], e["true"], e["predicted"]) for e in age["top"]] == [
        (2, "img_002.jpg", "adult", "teen"),
        (4, "img_004.jpg", "child", "teen"),
        (1, "img_001.jpg", "teen", "adult"),
    ]
    assert [e["probability"] for e in age["top"]] == pytest.approx([0.99, 0.9, 0.6])
    assert age["top"][0]["true_probability"] == pytest.approx(0.005)
    assert age["top"][0]["subject"] == "b"
    gender = report["confident_errors"]["gender"]
    assert [e["face"] for e in gender["top"]] == [0, 5] and gender["wrong_confident"] == 1

    # report.md: file names without image files, thumbnails with them
    write_outputs(build_report(table, EvalSettings(resamples=20, top_errors=3)), tmp_path / "a")
    text = (tmp_path / "a" / "report.md").read_text()
    assert "**age**: 4 of 6 labelled faces wrong, 2 of them at probability 0.90 or more" in text
    assert "| `img_002.jpg` | b | adult | teen | 0.990 | 0.005 |" in text
    assert "errors/" not in text

    files = []
    for i in range(6):
        pixels = np.full((60, 40, 3), 40 * i, np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img_{i:03d}.png")
        files.append(str(tmp_path / f"img_{i:03d}.png"))
    files[4] = str(tmp_path / "missing.png")  # an image gone since: no thumbnail, no failure
    with_files = _table(
        ["a", "a", "b", "c", "d", "e"], [0, 1, 2, 2, 0, 1], [0, 2, 1, 2, 1, 0],
        [0, 1, 0, 1, 0, 1], [1, 1, 0, 1, 0, 0], ["x"] * 6, sure=sure, files=files,
    )  # fmt: skip
    out = tmp_path / "b"
    (out / "errors").mkdir(parents=True)
    (out / "errors" / "age_09.jpg").write_bytes(b"from an earlier run")
    (out / "errors" / "holiday_01.jpg").write_bytes(b"a file of the user's")
    evaluation = build_report(with_files, EvalSettings(resamples=20, top_errors=3))
    write_outputs(evaluation, out)
    saved = json.loads((out / "report.json").read_text())["confident_errors"]["age"]["top"]
    assert [e["thumbnail"] for e in saved] == ["errors/age_01.jpg", None, "errors/age_03.jpg"]
    assert sorted(p.name for p in (out / "errors").iterdir()) == [
        "age_01.jpg", "age_03.jpg", "gender_01.jpg", "gender_02.jpg", "holiday_01.jpg",
    ]  # fmt: skip
    thumb = Image.open(out / "errors" / "age_01.jpg")
    assert max(thumb.size) <= 96 and thumb.getpixel((5, 5))[0] == pytest.approx(80, abs=3)
    text = (out / "report.md").read_text()
    assert "| ![adult](errors/age_01.jpg) | `img_002.jpg` | b | adult | teen |" in text
    assert "|  | `img_004.jpg` | d | child | teen |" in text


def test_settings_are_written_in_words() -> None:
    record = calibration_record({"age": 1.5, "gender": 0.8}, "hand", {"age": 6, "gender": 6})
    report = build_report(
        _fifteen(), EvalSettings(resamples=20, groups=("source",)), calibration=record
    ).report
    text = report_markdown(json.loads(json.dumps(report)))
    settings = next(line for line in text.splitlines() if line.startswith("- Settings:"))
    assert "extra groups: source" in settings and "calibration: off" in settings
    assert "too few to conclude: under 30 subjects" in settings
    assert "stored temperature age T = 1.500, gender T = 0.800" in text
    for python in ("False", "True", "['", "{'", "None"):
        assert python not in text, python
    fitted = build_report(_fifteen(), EvalSettings(resamples=20, calibrate=True)).report
    text = report_markdown(json.loads(json.dumps(fitted)))
    assert "calibration: on (a temperature per task fitted on 50% of the subjects, seed 0" in text
    assert "other subjects, 50% of the subjects, seed 0)" in text
    assert "| age | " in text and "(the fit's limit" not in text
    fitted["calibration"]["age"]["temperature"] = 20.0  # calibration.TEMPERATURE_RANGE's top
    text = report_markdown(json.loads(json.dumps(fitted)))
    assert "| 20.000 (the fit's limit, 0.05-20) |" in text


# -- the figures -------------------------------------------------------------------------------
def test_figures_show_counts_and_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each figure draws, read off the figure before it is saved: a count on every
    reliability bar, a y axis above 1, ticks of a readable size, n in the coverage legend
    and in every group label."""
    drawn: dict[str, matplotlib.figure.Figure] = {}
    save = matplotlib.figure.Figure.savefig

    def record(self: matplotlib.figure.Figure, fname: object, *args: object, **kw: object) -> None:
        drawn[Path(str(fname)).name] = self
        save(self, fname, *args, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    record_t = calibration_record({"gender": 2.0}, "hand", {"gender": 6})
    evaluation = build_report(
        _fifteen(), EvalSettings(resamples=50, bins=10, groups=("source",)), calibration=record_t
    )
    write_outputs(evaluation, tmp_path)
    report = evaluation.report

    gender = drawn["reliability_gender.png"]
    raw, scaled = gender.axes  # raw and temperature-scaled panels
    for ax, bins in ((raw, "bins"), (scaled, "bins_calibrated")):
        counts = [b["count"] for b in report["calibration"]["gender"][bins] if b["count"]]
        assert sorted(int(t.get_text()) for t in ax.texts) == sorted(counts)
        assert sum(counts) == 15 and "n = 15 faces" in ax.get_title()
        assert ax.get_ylim()[1] > 1.05  # a bar of accuracy 1 and its count stay inside
        assert all(t.get_fontsize() >= 11 for t in ax.get_xticklabels())
    assert len(drawn["reliability_age.png"].axes) == 1  # no age temperature: one panel
    (coverage,) = drawn["coverage.png"].axes
    legend = [t.get_text() for t in coverage.get_legend().get_texts()]
    assert legend == ["age: n = 15 faces, AURC " + f"{report['abstention']['age']['aurc']:.3f}",
                      "gender: n = 15 faces, AURC "
                      + f"{report['abstention']['gender']['aurc']:.3f}"]  # fmt: skip
    # one confidence for every face: each curve is one point, drawn as a dot at coverage 1
    dots = [line for line in coverage.get_lines() if line.get_marker() == "o"]
    assert [d.get_xdata()[0] for d in dots] == [1.0, 1.0]
    assert [d.get_ydata()[0] for d in dots] == pytest.approx(
        [report["overall"]["age_exact"]["value"], 13 / 15]
    )
    groups = drawn["groups.png"].axes
    assert len(groups) == len(report["groups"])
    labels = [t.get_text() for t in groups[3].get_yticklabels()]
    assert labels == ["A (n=6, 6 subj.)", "B (n=5, 5 subj.)", "C (n=4, 4 subj.)"]
    assert all("n = " in ax.get_title() for ax in groups)
    for name in ("reliability_age.png", "reliability_gender.png", "coverage.png", "groups.png"):
        assert Image.open(tmp_path / name).size[0] > 300
