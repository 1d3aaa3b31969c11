"""Fold parsing: label policies, dirty and malformed rows, path escapes, the summary command,
and (with ../shared) exact equality with the Levi-Hassner test lists."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agegender.data.folds import (
    COLUMNS,
    FoldFormatError,
    levi_hassner_lines,
    load_folds,
    main,
    parse_age,
    parse_gender,
    summarize,
)
from agegender.labels import ADIENCE_AGE_STRINGS, IGNORE_INDEX

# The README's remap table: odd value -> canonical bucket index.
REMAP = {
    "2": 0, "3": 0, "13": 2, "(8, 23)": 2, "22": 3, "23": 4, "29": 4, "32": 4, "34": 4,
    "35": 4, "(27, 32)": 4, "(25, 23)": 4, "36": 5, "42": 5, "45": 5, "(38, 42)": 5,
    "(38, 48)": 5, "46": 6, "55": 6, "56": 6, "57": 7, "58": 7,
}  # fmt: skip


def test_canonical_ages_in_both_policies():
    for i, text in enumerate(ADIENCE_AGE_STRINGS):
        assert parse_age(text, "strict") == parse_age(text, "remap") == i
    assert parse_age("25-32", "strict") == 4


@pytest.mark.parametrize(("raw", "bucket"), sorted(REMAP.items()))
def test_remap_follows_the_readme_and_strict_drops(raw, bucket):
    assert parse_age(raw, "remap") == bucket
    assert parse_age(raw, "strict") == IGNORE_INDEX


def test_unknowns_and_genders():
    for raw in ("None", "", None, float("nan"), "old", "(a, b)"):
        assert parse_age(raw, "remap") == IGNORE_INDEX
    assert [parse_gender(g) for g in ("m", "f", "u", "", None)] == [0, 1, -1, -1, -1]
    assert parse_gender("female", "remap") == 1 and parse_gender("female", "strict") == -1
    with pytest.raises(ValueError, match="label policy"):
        parse_age("(0, 2)", "lenient")


def _row(user="u1", image="img.jpg", face_id="1", age="(25, 32)", gender="m", extra=()):
    return "\t".join([user, image, face_id, age, gender, "0", "0", "9", "9", "0", "0", "1", *extra])


def write_folds(root, rows_by_fold):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(5):
        rows = rows_by_fold.get(k, [_row(user=f"user{k}", face_id=str(100 + k))])
        (root / f"fold_{k}_data.txt").write_text("\t".join(COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return root


def test_dirty_rows_keep_their_other_label_and_duplicates_drop_once(tmp_path):
    root = write_folds(
        tmp_path,
        {
            0: [
                _row(face_id="1", age="None", gender="f"),
                _row(face_id="2", age="(4, 6)", gender="u"),
                _row(face_id="3", age="None", gender=""),
                _row(face_id="4", age="35", gender="m"),
                _row(face_id="4", age="35", gender="m"),
            ]
        },
    )
    table, report = load_folds(root, "strict")
    fold0 = table[table["fold"] == 0].set_index("face_id")
    assert report.duplicates == 1
    assert report.dropped_unlabelled == 1  # face 3: neither label
    assert (fold0.loc[4, "age"], fold0.loc[4, "gender"]) == (IGNORE_INDEX, 0)  # 35 not strict
    assert (fold0.loc[1, "age"], fold0.loc[1, "gender"]) == (IGNORE_INDEX, 1)
    assert (fold0.loc[2, "age"], fold0.loc[2, "gender"]) == (1, IGNORE_INDEX)
    remap, _ = load_folds(root, "remap")
    assert remap[(remap["fold"] == 0) & (remap["face_id"] == 4)]["age"].tolist() == [4]


def test_duplicates_drop_or_keep(tmp_path):
    row = _row(user="u1", image="a.jpg", face_id="7", age="(0, 2)", gender="f")
    root = write_folds(tmp_path, {0: [row, _row(face_id="8"), row]})
    dropped, report = load_folds(root, "strict")
    assert report.duplicates == 1 and not report.duplicates_kept
    assert "1 duplicate rows dropped" in report.summary()
    assert dropped[dropped["fold"] == 0]["face_id"].tolist() == [7, 8]
    kept, report = load_folds(root, "strict", duplicates="keep")
    assert report.duplicates == 1 and report.duplicates_kept
    assert "1 duplicate rows kept" in report.summary()
    fold0 = kept[kept["fold"] == 0]
    assert fold0["face_id"].tolist() == [7, 8, 7] and fold0["line"].tolist() == [2, 3, 4]
    face7 = "u1/landmark_aligned_face.7.a.jpg"
    assert levi_hassner_lines(kept, 0, "age") == [
        f"{face7} 0",
        f"{face7} 0",
        "u1/landmark_aligned_face.8.img.jpg 4",
    ]
    assert levi_hassner_lines(dropped, 0, "gender") == [
        f"{face7} 1",
        "u1/landmark_aligned_face.8.img.jpg 0",
    ]
    with pytest.raises(ValueError, match="duplicates option"):
        load_folds(root, duplicates="once")
    out = tmp_path / "kept.json"
    assert main([str(root), "--duplicates", "keep", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["0"]["rows"] == 3
    assert main([str(root), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["0"]["rows"] == 2


def test_datamodule_keeps_duplicates_in_the_table_but_not_in_the_jobs(tmp_path):
    from agegender.data import AdienceDataModule

    row = _row(user="u1", image="a.jpg", face_id="7", age="(0, 2)", gender="f")
    root = write_folds(tmp_path, {0: [row, row]})
    for duplicates, copies in (("drop", 1), ("keep", 2)):
        dm = AdienceDataModule(root, duplicates=duplicates)
        table = dm.load_table()
        assert (table["face_id"] == 7).sum() == copies, duplicates
        jobs = dm.jobs()
        assert jobs["key"].is_unique and len(jobs) == 5, duplicates  # one job per face


def test_malformed_rows_are_reported_with_file_and_line(tmp_path):
    bad = [
        _row(face_id="1"),
        _row(face_id="x2"),  # line 3
        _row(face_id="3", extra=("surplus",)),  # line 4
        _row(user="../../etc", face_id="4"),  # line 5
        _row(image="../../../etc/passwd", face_id="5"),  # line 6
        _row(image="sub/dir.jpg", face_id="6"),  # line 7
        _row(user="..", face_id="7"),  # line 8
        _row(image="C:evil.jpg", face_id="8"),  # line 9
    ]
    root = write_folds(tmp_path, {2: bad})
    table, report = load_folds(root, "strict")
    assert len(report.malformed) == 7
    for line, message in zip(range(3, 10), report.malformed, strict=True):
        assert message.startswith(f"{root / 'fold_2_data.txt'}:{line}: ")
    assert "face_id 'x2'" in report.malformed[0] and "13 columns" in report.malformed[1]
    assert "path escape" in report.malformed[2]
    assert table[table["fold"] == 2]["face_id"].tolist() == [1]
    with pytest.raises(FoldFormatError, match=r"fold_2_data.txt:3: face_id"):
        load_folds(root, "strict", strict_rows=True)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FoldFormatError, match="missing fold_0_data.txt"):
        load_folds(tmp_path)
    root = write_folds(tmp_path / "a", {})
    (root / "fold_3_data.txt").write_text("user\timage\n")
    with pytest.raises(FoldFormatError, match="fold_3_data.txt:1: header"):
        load_folds(root)
    root = write_folds(tmp_path / "b", {1: [_row(user="same")], 2: [_row(user="same")]})
    with pytest.raises(FoldFormatError, match="more than one fold"):
        load_folds(root)


def test_summary_command(tmp_path, capsys):
    root = write_folds(
        tmp_path / "d",
        {0: [_row(face_id="1", age="(0, 2)", gender="f"), _row(face_id="2", age="13")]},
    )
    out = tmp_path / "summary.json"
    assert main([str(root), "--policy", "remap", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["0"] == {
        "rows": 2,
        "users": 1,
        "age_counts": [1, 0, 1, 0, 0, 0, 0, 0],
        "gender_counts": [1, 1],
    }
    assert summary["1"]["age_counts"] == [0, 0, 0, 0, 1, 0, 0, 0]
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("fold\trows\tusers\t0-2")
    assert main([str(tmp_path / "nowhere")]) == 2


def test_real_folds_match_levi_hassner_test_lists(shared_dir):
    """duplicates="keep" gives the published lists line for line, copies included;
    duplicates="drop" gives their distinct lines."""
    adience = shared_dir / "adience"
    table, report = load_folds(adience, "strict", drop_unlabelled=False)
    kept, kept_report = load_folds(adience, "strict", drop_unlabelled=False, duplicates="keep")
    assert report.malformed == [] and report.duplicates == kept_report.duplicates == 117
    assert len(table) + report.duplicates == len(kept) == 19487
    assert table["user_id"].nunique() == 168
    summary = summarize(table[(table["age"] >= 0) | (table["gender"] >= 0)])
    kept_summary = summarize(kept[(kept["age"] >= 0) | (kept["gender"] >= 0)])
    for fold in range(5):
        lists = adience / "levi_hassner_test_lists" / f"test_fold_is_{fold}"
        for task in ("age", "gender"):
            lines = (lists / f"{task}_test.txt").read_text().splitlines()
            published = sorted(line.strip() for line in lines if line.strip())
            assert levi_hassner_lines(kept, fold, task) == published, (fold, task)
            assert Counter(levi_hassner_lines(kept, fold, task)) == Counter(published)
            assert sum(kept_summary[str(fold)][f"{task}_counts"]) == len(published)
            distinct = sorted(set(published))
            assert levi_hassner_lines(table, fold, task) == distinct, (fold, task)
            assert sum(summary[str(fold)][f"{task}_counts"]) == len(distinct)
