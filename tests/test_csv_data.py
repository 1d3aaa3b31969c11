"""data=csv: label spellings, boxes, groups/folds, bad rows, and the same batches as Adience."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from agegender.data import CsvDataModule
from agegender.data.cache import FaceCache
from agegender.data.csv import load_face_csv, read_face_csv
from agegender.data.folds import FoldFormatError


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 255, (60, 50, 3), dtype=np.uint8))


def test_label_spellings_and_malformed_rows(tmp_path):
    _images(tmp_path / "img", 4)
    (tmp_path / "labels.csv").write_text(
        "path,age,gender,group\n"
        "img/p0.png,25-32,m,a\n"
        'img/p1.png,"(0, 2)",female,a\n'
        "img/p2.png,35,,b\n"
        "img/p3.png,,F,b\n"
        "img/p3.png,old,m,c\n"  # line 6: bad age
        "../outside.png,4-6,m,c\n"  # line 7: escapes the folder
        "img/p0.png,25-32,x,c\n"  # line 8: bad gender
    )
    table, problems = read_face_csv(tmp_path / "labels.csv")
    assert table["age"].tolist() == [4, 0, 4, -1]  # 35 -> nearest bucket (25-32)
    assert table["gender"].tolist() == [0, 1, -1, 1]
    assert [p.split(":")[-2] for p in problems] == ["6", "7", "8"]
    assert "age 'old'" in problems[0] and "not inside" in problems[1]
    assert set(table.groupby("user_id")["fold"].nunique()) == {1}  # a group stays in one fold
    with pytest.raises(FoldFormatError, match=r"labels.csv:6: age 'old'"):
        read_face_csv(tmp_path / "labels.csv", strict_rows=True)


def test_missing_columns_and_partial_box_are_errors(tmp_path):
    (tmp_path / "a.csv").write_text("path,age\nx.png,25-32\n")
    with pytest.raises(FoldFormatError, match="missing column"):
        read_face_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,age,gender,x1,y1\nx.png,25-32,m,1,2\n")
    with pytest.raises(FoldFormatError, match="box needs"):
        read_face_csv(tmp_path / "b.csv")
    with pytest.raises(FoldFormatError, match="not found"):
        read_face_csv(tmp_path / "none.csv")


def test_no_group_column_warns(tmp_path):
    (tmp_path / "c.csv").write_text("path,age,gender\nx.png,25-32,m\n")
    with pytest.warns(UserWarning, match="no 'group' column"):
        read_face_csv(tmp_path / "c.csv")


def test_datamodule_with_boxes_and_explicit_folds(tmp_path, samples_dir):
    shutil.copy(samples_dir / "obama.jpg", tmp_path / "obama.jpg")
    _images(tmp_path / "faces", 6)
    lines = ["path,x1,y1,x2,y2,age,gender,group,fold"]
    lines += [f"faces/p{i}.png,5,5,45,55,{i % 8 * 10},{'mf'[i % 2]},g{i},{i % 3}" for i in range(6)]
    lines += ["obama.jpg,,,,,48-53,m,obama,2", "faces/gone.png,1,1,9,9,0-2,f,g9,0"]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    dm = CsvDataModule(tmp_path / "data.csv", fold=2, num_workers=0, batch_size=4,
                       val_fraction=0.25, preprocess={"progress": False, "workers": 1})  # fmt: skip
    dm.prepare_data()
    index = FaceCache(dm.cache_dir).all_rows
    assert index.loc["obama.jpg", "detected"]  # no box: MTCNN
    assert (index[index["key"].str.startswith("faces/p")]["fallback"] == "given_box").all()
    assert index.loc["faces/gone.png#1,1,9,9", "status"] == "missing"
    with pytest.warns(UserWarning, match="1 rows left out"):
        dm.setup("fit")
    assert set(dm.splits["test"]["user_id"]) == {"g2", "g5", "obama"}
    assert not set(dm.splits["train"]["user_id"]) & set(dm.splits["val"]["user_id"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 227, 227) and batch["age"].dtype == torch.int64
    assert next(iter(dm.test_dataloader()[1]))["image"].shape[1:] == (10, 3, 227, 227)


def test_rows_are_named_by_the_files_own_lines(tmp_path):
    """Blank lines and a cell quoted over two lines count, so an editor opens the right line."""
    _images(tmp_path / "img", 2)
    (tmp_path / "labels.csv").write_text(
        "path,age,gender,note\n"  # line 1
        "img/p0.png,25-32,m,\n"  # 2
        "\n"  # 3: blank
        'img/p1.png,4-6,f,"two\nlines"\n'  # 4-5
        "img/p1.png,old,f,\n"  # 6: bad age
        "\n"  # 7
        "img/p0.png,25-32,m,copy\n"  # 8: the same image and labels as line 2
    )
    read = load_face_csv(tmp_path / "labels.csv")
    assert read.table["line"].tolist() == [2, 4]
    assert read.cells.loc[4, "note"] == "two\nlines"
    assert read.problems == [f"{tmp_path / 'labels.csv'}:6: age 'old' is not a known value of "
                             "label set adience8 (0-2, 4-6, 8-12, 15-20, 25-32, 38-43, 48-53, "
                             "60-100)"]  # fmt: skip
    assert read.duplicates == [
        f"{tmp_path / 'labels.csv'}:8: 'img/p0.png' repeats line 2 (same image and labels): "
        "counted once"
    ]
    assert read_face_csv(tmp_path / "labels.csv")[0]["key"].tolist() == ["img/p0.png", "img/p1.png"]


def test_a_duplicate_with_a_box_and_a_contradiction(tmp_path):
    _images(tmp_path / "img", 1)
    head = "path,x1,y1,x2,y2,age,gender\n"
    row = "img/p0.png,1,1,20,20,25-32,m\n"
    (tmp_path / "a.csv").write_text(head + row + "img/p0.png,,,,,25-32,m\n" + row)
    read = load_face_csv(tmp_path / "a.csv")
    assert len(read.table) == 2  # the whole image and the box are two faces
    assert read.duplicates == [
        f"{tmp_path / 'a.csv'}:4: 'img/p0.png#1,1,20,20' repeats line 2 (same image and box "
        "and labels): counted once"
    ]
    (tmp_path / "b.csv").write_text(head + row + "img/p0.png,1,1,20,20,38-43,m\n")
    with pytest.raises(
        FoldFormatError,
        match=r"b\.csv:3: .* different labels: this line says age '38-43', gender 'm', line 2 "
        r"says age '25-32', gender 'm'",
    ):
        load_face_csv(tmp_path / "b.csv")
