"""python -m agegender.evaluate: numbers from a hand-made probability table (no network), a
set with planted errors on real photos, an Adience demo fold end to end, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageOps

from agegender.calibration import calibration_record, fit_temperature
from agegender.evaluation.report import (
    EvalSettings,
    FaceTable,
    build_report,
    split_subjects,
)
from agegender.evaluation.sets import EvalSetError
from agegender.labels import load_label_set
from tests.conftest import REPO, SAMPLES, WEIGHTS_HINT, require

COARSE3 = load_label_set("coarse3")


# -- (a) numbers from a table of probabilities ---------------------------------------------------
def _table() -> FaceTable:
    """Six faces of four subjects, two sources; coarse3 (child, teen, adult) both for the
    network and the evaluation. Face 5 has no age label."""
    frame = pd.DataFrame(
        {
            "subject": ["s1", "s1", "s2", "s2", "s3", "s4"],
            "age": [0, 0, 2, 2, 1, -1],
            "gender": [0, 0, 1, 1, 1, 0],
            "source": ["A", "A", "A", "B", "B", "B"],
        }
    )
    age = np.array(
        [
            [0.8, 0.1, 0.1],  # child -> child: exact
            [0.1, 0.7, 0.2],  # child -> teen: 1-off only
            [0.1, 0.2, 0.7],  # adult -> adult: exact
            [0.6, 0.3, 0.1],  # adult -> child: wrong by two classes
            [0.2, 0.5, 0.3],  # teen -> teen: exact
            [0.3, 0.3, 0.4],  # unknown age
        ]
    )
    gender = np.array(
        [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.45, 0.55], [0.95, 0.05]]
    )  # right, wrong, right, wrong, right, right
    return FaceTable(frame, {"age": age, "gender": gender}, COARSE3, COARSE3)


def _block(report: dict, task: str, metric: str, by: str) -> dict:
    (found,) = [
        b for b in report["groups"] if (b["task"], b["metric"], b["by"]) == (task, metric, by)
    ]
    return found


def test_overall_groups_and_minors_match_hand_counts() -> None:
    settings = EvalSettings(resamples=200, bins=10, groups=("source",), gap_min_faces=1)
    report = build_report(_table(), settings).report
    overall = report["overall"]
    assert overall["age_exact"]["value"] == pytest.approx(3 / 5)
    assert overall["age_1off"]["value"] == pytest.approx(4 / 5)
    assert overall["gender"]["value"] == pytest.approx(4 / 6)
    assert (overall["age_exact"]["n"], overall["gender"]["n"]) == (5, 6)
    for block in overall.values():
        assert block["low"] <= block["value"] <= block["high"]
    assert report["dataset"]["subjects"] == 4
    assert report["dataset"]["bootstrap_unit"] == "subject"

    # gender accuracy per true age class (faces with both labels), in the set's order
    rows = _block(report, "gender", "accuracy", "age")["rows"]
    assert [(r["group"], r["count"], r["subjects"]) for r in rows] == [
        ("child", 2, 1),
        ("teen", 1, 1),
        ("adult", 2, 1),
    ]
    assert [r["value"] for r in rows] == pytest.approx([1 / 2, 1.0, 1 / 2])
    rows = _block(report, "age", "exact", "gender")["rows"]
    assert [(r["group"], r["count"]) for r in rows] == [("male", 2), ("female", 3)]
    assert [r["value"] for r in rows] == pytest.approx([1 / 2, 2 / 3])
    # a grouping column: age exact A = faces 0-2 (2 of 3), B = faces 3-4 (1 of 2; 5 unlabelled)
    block = _block(report, "age", "exact", "source")
    assert [(r["group"], r["count"], r["subjects"]) for r in block["rows"]] == [
        ("A", 3, 2),
        ("B", 2, 2),
    ]
    assert [r["value"] for r in block["rows"]] == pytest.approx([2 / 3, 1 / 2])
    assert block["gap"]["high_group"] == "A" and block["gap"]["low_group"] == "B"
    assert block["gap"]["value"] == pytest.approx(2 / 3 - 1 / 2)
    gender = _block(report, "gender", "accuracy", "source")["rows"]
    assert [r["value"] for r in gender] == pytest.approx([2 / 3, 2 / 3])

    # coarse3: child (under 13) is a minor, adult (20+) an adult, teen says nothing
    minors = report["minors"]
    assert minors["minors_called_adults"]["value"] == 0.0  # faces 0, 1: child, teen
    assert minors["minors_called_adults"]["n"] == 2
    assert minors["adults_called_minors"]["value"] == pytest.approx(1 / 2)  # face 3
    assert minors["adults_called_minors"]["n"] == 2


def _ece_by_hand(confidence: list[float], right: list[bool], members: list[list[int]]) -> float:
    """ECE with the bins written out by hand (``members``: face indices per non-empty bin)."""
    total = 0.0
    for faces in members:
        acc = np.mean([right[i] for i in faces])
        conf = np.mean([confidence[i] for i in faces])
        total += len(faces) * abs(acc - conf)
    return total / len(confidence)


def test_ece_before_and_after_a_stored_temperature() -> None:
    record = calibration_record({"gender": 2.0}, "hand", {"gender": 6})
    evaluation = build_report(_table(), EvalSettings(resamples=50, bins=10), calibration=record)
    block = evaluation.report["calibration"]["gender"]
    right = [True, False, True, False, True, True]
    raw = [0.9, 0.6, 0.8, 0.7, 0.55, 0.95]
    # bins of width 0.1: (0.5, 0.6] holds 0.6 and 0.55; every other face is alone
    assert block["ece"] == pytest.approx(_ece_by_hand(raw, right, [[0], [1, 4], [2], [3], [5]]))
    assert block["ece"] == pytest.approx(1.2 / 6)
    # T = 2 on two classes: p -> sqrt(p) / (sqrt(p) + sqrt(1 - p))
    soft = [math.sqrt(p) / (math.sqrt(p) + math.sqrt(1 - p)) for p in raw]
    # 0.75, 0.5505, 0.6667, 0.6044, 0.5251, 0.8134 -> bins 7, 5, 6, 6, 5, 8
    expected = _ece_by_hand(soft, right, [[0], [1, 4], [2, 3], [5]])
    assert block["temperature"] == 2.0
    assert block["ece_calibrated"] == pytest.approx(expected)
    assert block["ece_calibrated"] < block["ece"]
    assert evaluation.report["calibration"]["age"]["temperature"] is None
    # the reported predictions carry the stored temperature (argmax unchanged for 2 classes)
    probs = evaluation.faces["gender_p_male"].to_numpy()
    assert probs[0] == pytest.approx(soft[0])


def test_calibrate_fits_on_some_subjects_and_reports_the_others() -> None:
    table = _table()
    settings = EvalSettings(resamples=50, bins=10, calibrate=True, calibrate_fraction=0.5)
    evaluation = build_report(table, settings)
    fit_rows = split_subjects(table.subjects, 0.5, 0)
    subjects = table.frame["subject"].to_numpy()
    assert not set(subjects[fit_rows]) & set(subjects[~fit_rows])  # subject-exclusive
    assert len(set(subjects[fit_rows])) == 2
    block = evaluation.report["calibration"]["gender"]
    assert block["faces"] == int((~fit_rows).sum())  # every face of the held-out subjects
    targets = np.where(fit_rows, table.frame["gender"].to_numpy(), -1)
    expected = fit_temperature(table.probs["gender"], targets)
    assert block["temperature"] == pytest.approx(expected)
    assert evaluation.fitted["temperature"]["gender"] == pytest.approx(expected)
    assert "held-out subjects" in block["evaluated_on"]


def test_abstention_curve_and_coverage_points() -> None:
    report = build_report(_table(), EvalSettings(resamples=20)).report
    gender = report["abstention"]["gender"]
    # confidences .95 .9 .8 .7 .6 .55 -> right, right, right, wrong, wrong, right
    assert [p["accuracy"] for p in gender["curve"]] == pytest.approx([1, 1, 1, 3 / 4, 3 / 5, 4 / 6])
    assert gender["at_coverage"]["1.0"] == pytest.approx(4 / 6)
    assert gender["at_coverage"]["0.9"] == pytest.approx(4 / 6)  # 5/6 < 0.9 -> all faces
    assert gender["at_coverage"]["0.8"] == pytest.approx(3 / 5)
    assert gender["at_coverage"]["0.5"] == pytest.approx(1.0)
    # trapezoid of risk over coverage (risk 0 0 0 .25 .4 .333 at coverage 1/6 .. 1)
    assert gender["aurc"] == pytest.approx((0.125 + 0.325 + (0.4 + 1 / 3) / 2) / 6)


def test_without_subjects_the_bootstrap_resamples_images() -> None:
    table = _table()
    table.has_subjects = False
    report = build_report(table, EvalSettings(resamples=20)).report
    assert report["dataset"]["bootstrap_unit"] == "image"
    assert report["dataset"]["subjects"] is None
    assert _block(report, "gender", "accuracy", "age")["rows"][0]["subjects"] is None


def test_adience8_probabilities_are_mapped_after_the_temperature() -> None:
    """An adience8 network evaluated in coarse3: bucket probabilities summed per class."""
    adience8 = load_label_set("adience8")
    age = np.zeros((2, 8))
    age[0, [0, 1, 2]] = [0.2, 0.2, 0.2]  # child 0.6
    age[0, 4] = 0.4  # adult 0.4
    age[1, 3] = 1.0  # 15-20 -> teen
    frame = pd.DataFrame({"subject": ["a", "b"], "age": [0, 1], "gender": [0, 1]})
    gender = np.array([[0.6, 0.4], [0.3, 0.7]])
    table = FaceTable(
        frame, {"age": age, "gender": gender}, adience8, COARSE3, age_model=np.array([1, 3])
    )
    evaluation = build_report(table, EvalSettings(resamples=20))
    faces = evaluation.faces
    assert list(faces["pred_age"]) == ["child", "teen"]
    assert faces["age_p_child"].tolist() == pytest.approx([0.6, 0.0])
    assert evaluation.report["overall"]["age_exact"]["value"] == 1.0


DOC = (REPO / "docs" / "evaluation.md").read_text()


def _undocumented(report: dict) -> list[str]:
    """Keys of ``report`` (and of its parts) that docs/evaluation.md's schema does not name."""
    schema = DOC.split("## report.json", 1)[1].split("\n## ", 1)[0]
    keys = set(report)
    for part in ("model", "dataset", "settings", "overall", "minors"):
        keys |= set(report[part])
    for task in ("age", "gender"):
        keys |= set(report["calibration"][task]) | set(report["abstention"][task])
    keys |= {k for block in report["groups"] for k in block}
    keys |= {k for block in report["groups"] for row in block["rows"] for k in row}
    keys |= {k for block in report["groups"] if block["gap"] for k in block["gap"]}
    keys |= {k for interval in report["overall"].values() for k in interval}
    for task in ("age", "gender"):
        errors = report["confident_errors"][task]
        keys |= set(errors) | {k for entry in errors["top"] for k in entry}
    return sorted(k for k in keys if f'"{k}"' not in schema)


def test_every_report_key_is_documented() -> None:
    record = calibration_record({"gender": 2.0}, "hand", {"gender": 6})
    settings = EvalSettings(resamples=20, groups=("source",))
    assert _undocumented(build_report(_table(), settings, calibration=record).report) == []


# -- real photos and the original weights ---------------------------------------------------------
@pytest.fixture(scope="module")
def original_weights() -> None:
    """The original nets in the cache (the README's install command); skip or fail (CI)."""
    from agegender.store import original_checkpoint_path, original_onnx_path

    found = original_checkpoint_path().is_file() and original_onnx_path().is_file()
    require(found, f"original weights not cached: {WEIGHTS_HINT}")


def _evaluate(overrides: list[str]):  # noqa: ANN202 (an Evaluation)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from agegender.config import CONF_DIR
    from agegender.evaluation.runner import evaluate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    return evaluate(OmegaConf.to_container(cfg, resolve=True))


PERSONS = ("astronaut.jpg", "biden.jpg", "camera.png", "obama.jpg")


def _photo_set(folder: Path) -> pd.DataFrame:
    """40 images from the 4 sample photos (mirror, crop, brightness; PNG and JPEG), each
    copy its own subject within its person, alternately source A and B."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for person in PERSONS:
        image = Image.open(SAMPLES / person).convert("RGB")
        width, height = image.size
        stem = Path(person).stem
        for k in range(10):
            copy = ImageOps.mirror(image) if k % 2 else image
            m = (k // 2) * 0.03
            box = (
                int(width * m),
                int(height * m),
                int(width * (1 - m / 2)),
                int(height * (1 - m / 2)),
            )
            copy = ImageEnhance.Brightness(copy.crop(box)).enhance(0.8 + 0.1 * (k % 5))
            name = f"{stem}_{k}.{'png' if k % 3 == 0 else 'jpg'}"
            copy.save(folder / name)
            rows.append({"path": name, "group": f"{stem}-{k}", "source": "AB"[k % 2]})
    return pd.DataFrame(rows)


def _plant(folder: Path, model: list[str]) -> pd.DataFrame:
    """The photo set labelled with ``model``'s own predictions, then half the gender labels
    of source B flipped: the model is right on all of A and on half of B."""
    rows = _photo_set(folder)
    rows["age"], rows["gender"] = "25-32", "m"  # placeholders: the model's answers come next
    rows.to_csv(folder / "labels.csv", index=False)
    first = _evaluate(
        [
            "set=csv",
            f"csv={folder / 'labels.csv'}",
            "detector=none",
            "resamples=10",
            f"output={folder / 'first'}",
            *model,
        ]  # fmt: skip
    )
    predicted = first.faces.set_index("path")
    rows["age"] = [predicted.loc[p, "pred_age"] for p in rows["path"]]
    gender = [predicted.loc[p, "pred_gender"] for p in rows["path"]]
    b_rows = [i for i, s in enumerate(rows["source"]) if s == "B"]
    flip = set(b_rows[::2])  # 10 of B's 20 rows
    other = {"male": "female", "female": "male"}
    rows["gender"] = [other[g] if i in flip else g for i, g in enumerate(gender)]
    rows.to_csv(folder / "labels.csv", index=False)
    return rows


@pytest.fixture(scope="module")
def planted(original_weights, tmp_path_factory) -> tuple[Path, pd.DataFrame]:  # noqa: ANN001
    """The planted set for the original nets (:func:`_plant`)."""
    folder = tmp_path_factory.mktemp("planted")
    return folder, _plant(folder, [])


def test_planted_errors_are_found_in_their_group(planted, tmp_path: Path) -> None:  # noqa: ANN001
    folder, rows = planted
    out = tmp_path / "report"
    evaluation = _evaluate(
        [
            "set=csv",
            f"csv={folder / 'labels.csv'}",
            "detector=none",
            "groups=[source]",
            "calibrate=true",
            "resamples=500",
            f"output={out}",
        ]  # fmt: skip
    )
    report = json.loads((out / "report.json").read_text())  # strict JSON (no NaN)
    assert _undocumented(report) == []
    assert report["format"] == "agegender.evaluation.v1"
    assert report["dataset"]["faces"] == 40 and report["dataset"]["subjects"] == 40
    assert report["overall"]["age_exact"]["value"] == 1.0  # age labels = its own answers
    assert report["overall"]["gender"]["value"] == pytest.approx(30 / 40)
    block = _block(report, "gender", "accuracy", "source")
    assert [(r["group"], r["count"]) for r in block["rows"]] == [("A", 20), ("B", 20)]
    assert [r["value"] for r in block["rows"]] == pytest.approx([1.0, 0.5])
    gap = block["gap"]
    assert (gap["high_group"], gap["low_group"]) == ("A", "B")
    assert gap["value"] == pytest.approx(0.5) and gap["low"] > 0  # the interval excludes 0
    assert _block(report, "age", "exact", "source")["gap"]["value"] == 0.0

    curve = report["abstention"]["gender"]["curve"]
    coverage = [p["coverage"] for p in curve]
    assert coverage == sorted(coverage) and coverage[-1] == 1.0
    assert np.all(np.diff([p["threshold"] for p in curve]) < 0)

    # the nets are ~97% sure of genders that are wrong on a quarter of the faces: a
    # temperature fitted on half the subjects softens them, and the other half gets better
    gender = report["calibration"]["gender"]
    assert gender["temperature"] > 1.0
    assert gender["ece_calibrated"] < gender["ece"]
    assert gender["faces"] == 20  # the held-out half of the 40 subjects
    from agegender.checkpoints import load_model

    _, meta = load_model(out / "calibrated.ckpt")
    assert meta["calibration"]["temperature"]["gender"] == pytest.approx(gender["temperature"])
    faces = pd.read_csv(out / "faces.csv", keep_default_na=False)
    assert len(faces) == 40 and set(faces["detection"]) == {"detected"}
    assert faces["gender_correct"].sum() == 30
    assert evaluation.report["calibrated_checkpoint"] == str(out / "calibrated.ckpt")
    assert "| gender | accuracy | 0.750 |" in (out / "report.md").read_text()
    for name in ("reliability_age.png", "reliability_gender.png", "coverage.png", "groups.png"):
        assert Image.open(out / name).size[0] > 100


def test_adience_demo_fold_end_to_end(original_weights, tmp_path: Path) -> None:  # noqa: ANN001
    from agegender.data.demo import generate_demo
    from agegender.data.folds import load_folds

    root = generate_demo(tmp_path / "demo", users=8, images_per_user=4)
    out = tmp_path / "report"
    evaluation = _evaluate(
        ["set=adience", f"root={root}", "fold=0", "resamples=50", f"output={out}"]
    )
    table, _ = load_folds(root, "strict")  # conf/data/adience.yaml's policy
    fold = table[table["fold"] == 0]
    data = evaluation.report["dataset"]
    assert data["faces"] == len(fold) and data["errors"] == 0
    assert data["subjects"] == fold["user_id"].nunique() == 2  # users 0 and 5
    overall = evaluation.report["overall"]
    assert overall["age_exact"]["n"] == int((fold["age"] >= 0).sum())
    assert overall["gender"]["n"] == int((fold["gender"] >= 0).sum())
    faces = pd.read_csv(out / "faces.csv")
    detected = (faces["detection"] == "detected").sum()
    assert detected + data["faces_without_detection"] == len(fold)


def test_unreadable_image_is_counted_not_fatal(original_weights, tmp_path: Path) -> None:  # noqa: ANN001
    Image.open(SAMPLES / "obama.jpg").save(tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_text("not an image")
    pd.DataFrame(
        {"path": ["good.jpg", "broken.jpg"], "age": ["40", "(25, 32)"], "gender": ["m", "f"]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    evaluation = _evaluate(
        [
            "set=csv",
            f"csv={tmp_path / 'labels.csv'}",
            "detector=none",
            "resamples=10",
            f"output={tmp_path / 'out'}",
        ]  # fmt: skip
    )
    data = evaluation.report["dataset"]
    assert (data["faces"], data["errors"]) == (1, 1)
    assert data["error_list"][0]["path"] == "broken.jpg"
    assert data["bootstrap_unit"] == "image"  # no group/subject column
    assert evaluation.faces["true_age"].tolist() == ["38-43"]  # 40 years: nearest bucket


def test_unknown_group_column_names_the_columns(original_weights, tmp_path: Path) -> None:  # noqa: ANN001
    pd.DataFrame({"path": ["a.jpg"], "age": ["40"], "gender": ["m"], "source": ["A"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    with pytest.raises(EvalSetError, match=r"no column 'ethnicity'.*path, age, gender, source"):
        _evaluate(
            [
                "set=csv",
                f"csv={tmp_path / 'labels.csv'}",
                "groups=[ethnicity]",
                f"output={tmp_path / 'out'}",
            ]  # fmt: skip
        )


def test_missing_csv_is_one_line_and_exit_2(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agegender.evaluate",
            "set=csv",
            f"csv={tmp_path / 'missing.csv'}",
            f"output={tmp_path / 'out'}",
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"evaluate: set=csv: CSV not found: {tmp_path / 'missing.csv'}"


def _run_evaluate(*overrides: str) -> subprocess.CompletedProcess:
    """``python -m agegender.evaluate`` as a user runs it (stdout and stderr apart)."""
    return subprocess.run(
        [sys.executable, "-m", "agegender.evaluate", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_every_row_left_out_is_on_the_console(original_weights, tmp_path: Path) -> None:  # noqa: ANN001
    """Unknown labels, paths outside the folder or empty, a row without labels, duplicates
    and an unreadable image: each on stderr with the CSV's own line (header = line 1, the
    blank line counts), 20 of a kind at most, all of them in report.json."""
    for name in ("good.jpg", "other.jpg"):
        Image.open(SAMPLES / "obama.jpg").save(tmp_path / name)
    (tmp_path / "broken.jpg").write_text("not an image")
    csv = tmp_path / "labels.csv"
    lines = [
        "path,age,gender",  # 1
        "good.jpg,40,m",  # 2
        "other.jpg,banana,m",  # 3: unknown age
        "../outside.jpg,30,f",  # 4: outside the folder
        "",  # 5: blank
        "good.jpg,40,m",  # 6: the same as line 2
        "other.jpg,25,x",  # 7: unknown gender
        "broken.jpg,30,f",  # 8: unreadable
        ",30,f",  # 9: no path
        "nolabel.jpg,,",  # 10: no label at all
        'other.jpg,"(25, 32)",f',  # 11: evaluated
    ]
    lines += [f"other.jpg,{age},m" for age in ("2", "5")]  # 12, 13: other.jpg twice more
    lines += [f"other.jpg,unknown-{k},m" for k in range(22)]  # 14-35: 22 more unknown ages
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run = _run_evaluate("set=csv", f"csv={csv}", "detector=none", "resamples=10", f"output={out}")
    assert run.returncode == 2, run.stderr  # other.jpg with three different ages: named
    assert run.stderr.strip().startswith(f"evaluate: set=csv: {csv}:12: 'other.jpg' appears twice")
    assert "Traceback" not in run.stderr
    csv.write_text("\n".join(lines[:11] + lines[13:]) + "\n")  # now lines 12-33 unknown ages

    run = _run_evaluate("set=csv", f"csv={csv}", "detector=none", "resamples=10", f"output={out}")
    assert run.returncode == 0, run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    assert summary == (
        "evaluate: 2 faces (0 without a detection, 1 unreadable, 27 rows skipped, 1 duplicate "
        f"rows counted once) -> {out / 'report.md'}"
    )
    shown = [line.strip() for line in run.stderr.strip().splitlines()]
    age = "is not a known value of label set adience8"
    assert shown[:5] == [
        f"skipped row: {csv}:3: age 'banana' {age} (0-2, 4-6, 8-12, 15-20, 25-32, 38-43, "
        "48-53, 60-100)",
        f"skipped row: {csv}:4: path '../outside.jpg' is not inside {tmp_path}",
        f"skipped row: {csv}:7: gender 'x' is not a known value (one of male, female, or an alias)",
        f"skipped row: {csv}:9: no path",
        f"skipped row: {csv}:10: no age and no gender: nothing to score",
    ]
    assert [line.split(":")[2] for line in shown[5:20]] == [str(n) for n in range(12, 27)]
    assert all("age 'unknown-" in line for line in shown[5:20])
    assert shown[20:] == [
        "... and 7 more skipped rows (all in report.json)",
        f"duplicate row: {csv}:6: 'good.jpg' repeats line 2 (same image and labels): counted once",
        f"unreadable: {csv}:8: broken.jpg: not an image",
    ]
    report = json.loads((out / "report.json").read_text())
    assert _undocumented(report) == []
    data = report["dataset"]
    assert data["skipped_rows"] == len(data["skipped_row_list"]) == 27
    assert [r.split(":")[1] for r in data["skipped_row_list"]][-7:] == [
        str(n) for n in range(27, 34)
    ]
    assert data["duplicate_row_list"] == [shown[21].removeprefix("duplicate row: ")]
    assert data["error_list"] == [
        {"path": "broken.jpg", "where": f"{csv}:8", "error": "not an image"}
    ]


def test_an_empty_csv_is_one_line_naming_it_and_exit_2(original_weights, tmp_path: Path) -> None:  # noqa: ANN001
    csv = tmp_path / "labels.csv"
    csv.write_bytes(b"")
    run = _run_evaluate("set=csv", f"csv={csv}", f"output={tmp_path / 'out'}")
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"evaluate: set=csv: {csv}: empty file (no header line); its first line names the "
        "columns, e.g. path,age,gender"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xef\xbb\xbf\r\n", "{csv}: empty file (no header line)"),
        (b"path,age,gender\nx.jpg,\xe9,m\n", "{csv}:2: not UTF-8 text"),
        (b"path,age,gender\nx.jpg,40,m,extra\n", "{csv}:2: 4 fields where the header has 3"),
        (b'path,age,gender\n"x.jpg,40,m\n', "{csv}:2: a quote"),
    ],
    ids=["bom-and-blank", "latin1", "extra-field", "open-quote"],
)
def test_a_set_that_cannot_be_read_names_the_file(tmp_path: Path, body: bytes, says: str) -> None:
    from agegender.evaluation.sets import load_csv

    csv = tmp_path / "labels.csv"
    csv.write_bytes(body)
    with pytest.raises(EvalSetError) as caught:
        load_csv(csv, None, load_label_set("adience8"))
    assert str(caught.value).startswith(f"set=csv: {says.format(csv=csv)}")


def test_no_usable_row_says_why(original_weights, tmp_path: Path) -> None:  # noqa: ANN001
    csv = tmp_path / "labels.csv"
    csv.write_text("path,age,gender\nx.jpg,old,m\ny.jpg,,\n")
    with pytest.raises(EvalSetError) as caught:
        _evaluate(["set=csv", f"csv={csv}", f"output={tmp_path / 'out'}"])
    assert str(caught.value) == (
        f"CSV {csv} (all rows, label set adience8): no labelled row to evaluate; 2 rows "
        f"skipped, the first: {csv}:2: age 'old' is not a known value of label set adience8 "
        "(0-2, 4-6, 8-12, 15-20, 25-32, 38-43, 48-53, 60-100)"
    )


# -- a train.py checkpoint and its ONNX export ------------------------------------------------
@pytest.mark.slow  # trains 2 steps on the demo tree and exports it (~40 s); CI runs slow tests
def test_train_py_checkpoint_and_its_export(tmp_path_factory, tmp_path: Path) -> None:  # noqa: ANN001
    from training_fixtures import PAPER_TWO_STEPS, compose_train, demo_root

    from agegender.checkpoints import load_model
    from agegender.export import export_model
    from agegender.training.fit import train

    demo = demo_root(tmp_path_factory)
    run = tmp_path_factory.mktemp("evaluate_run")
    train(compose_train([*PAPER_TWO_STEPS, f"data.root={demo}"], run))
    checkpoint = run / "checkpoints" / "last.ckpt"
    common = ["set=adience", f"root={demo}", "fold=1", "detector=none", "resamples=50"]
    out = tmp_path / "ckpt"
    evaluation = _evaluate([*common, f"checkpoint={checkpoint}", "calibrate=true", f"output={out}"])
    report = evaluation.report
    assert report["model"]["checkpoint"] == str(checkpoint)
    assert report["model"]["backend"] == "torch"
    temperatures = {t: report["calibration"][t]["temperature"] for t in ("age", "gender")}
    _, meta = load_model(out / "calibrated.ckpt")
    assert meta["calibration"]["temperature"] == pytest.approx(temperatures)

    onnx = tmp_path / "model.onnx"
    export_model(onnx, checkpoint, download=False)
    exported = _evaluate(
        [*common, f"checkpoint={onnx}", "calibrate=true", f"output={tmp_path / 'x'}"]
    )
    assert exported.report["model"]["backend"] == "onnxruntime"
    assert exported.report["calibrated_checkpoint"] is None
    assert any(
        "needs the checkpoint it was exported from" in n
        for n in exported.report["dataset"]["notes"]
    )
    assert (tmp_path / "x" / "calibration.json").is_file()
    # the same network on the same faces: the same numbers on either runtime
    for key in ("age_exact", "gender"):
        assert exported.report["overall"][key]["value"] == report["overall"][key]["value"]

    # errors planted in one group are found for this model too
    folder = tmp_path / "planted"
    _plant(folder, [f"checkpoint={checkpoint}"])
    planted = _evaluate(
        [
            "set=csv", f"csv={folder / 'labels.csv'}", "detector=none", "groups=[source]",
            "resamples=500", f"checkpoint={checkpoint}", f"output={tmp_path / 'planted_report'}",
        ]
    )  # fmt: skip
    block = _block(planted.report, "gender", "accuracy", "source")
    assert [r["value"] for r in block["rows"]] == pytest.approx([1.0, 0.5])
    assert block["gap"]["value"] == pytest.approx(0.5) and block["gap"]["low"] > 0


def test_api_and_in_process_evaluation_leave_torch_threads_as_found(
    original_weights,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Library code run inside another program does not change its process-wide PyTorch
    thread count (evaluation sets its own while it runs, then restores it)."""
    import torch

    from agegender import AgeGender

    torch.set_num_threads(1)
    AgeGender(backend="torch", threads=2).predict(SAMPLES / "obama.jpg")
    assert torch.get_num_threads() == 1
    Image.open(SAMPLES / "obama.jpg").save(tmp_path / "a.jpg")
    pd.DataFrame({"path": ["a.jpg"], "age": ["40"], "gender": ["m"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    _evaluate(
        [
            "set=csv",
            f"csv={tmp_path / 'labels.csv'}",
            "backend=torch",
            "threads=2",
            "resamples=10",
            f"output={tmp_path / 'out'}",
        ]  # fmt: skip
    )
    assert torch.get_num_threads() == 1
