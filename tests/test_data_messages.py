"""Training data with mistakes gets a message naming the file, the line and the fix
(issue 20 item 11), never a raw pandas or codec traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agegender.data.csv import read_face_csv
from agegender.data.folds import COLUMNS, FoldFormatError, LoadReport, load_folds, read_fold_file

HEADER = "path,age,gender,group\n"


def _csv(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "faces.csv"
    path.write_bytes(body)
    return path


def test_a_row_with_an_extra_field(tmp_path):
    path = _csv(tmp_path, (HEADER + "a.jpg,25,m,p1\nb.jpg,30,f,p2,extra\n").encode())
    with pytest.raises(FoldFormatError, match=r"faces\.csv:3: 5 fields.*quote fields"):
        read_face_csv(path)


def test_a_latin1_file(tmp_path):
    path = _csv(
        tmp_path, (HEADER + "a.jpg,25,m,p1\n").encode() + "é.jpg,30,f,p2\n".encode("latin-1")
    )
    with pytest.raises(FoldFormatError, match=r"faces\.csv:3: not UTF-8 text.*iconv"):
        read_face_csv(path)


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = _csv(tmp_path, b"\xef\xbb\xbf" + (HEADER + "a.jpg,25,m,p1\n").encode())
    table, problems = read_face_csv(path, num_folds=1)
    assert len(table) == 1 and not problems


def test_an_unknown_gender_names_the_genders(tmp_path):
    path = _csv(tmp_path, (HEADER + "a.jpg,25,m,p1\nb.jpg,30,x,p2\n").encode())
    _, problems = read_face_csv(path, num_folds=1)
    assert len(problems) == 1
    assert "faces.csv:3: gender 'x' is not a known value" in problems[0]
    assert "male, female" in problems[0] and "25-32" not in problems[0]


def _fold_file(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    text = "\t".join(COLUMNS) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _row(user: str, image: str, face: int, age: str, gender: str) -> list[str]:
    cells = dict.fromkeys(COLUMNS, "0")
    cells.update(user_id=user, original_image=image, face_id=str(face), age=age, gender=gender)
    return [cells[c] for c in COLUMNS]


def test_a_fold_file_with_a_byte_order_mark(tmp_path):
    path = _fold_file(
        tmp_path / "fold_0_data.txt", [_row("u1", "a.jpg", 1, "(25, 32)", "m")], bom=True
    )
    frame = read_fold_file(path, 0, LoadReport())
    assert list(frame["user_id"]) == ["u1"]


def test_fold_rows_with_contradicting_labels_are_named(tmp_path):
    rows = [
        _row("u1", "a.jpg", 1, "(25, 32)", "m"),
        _row("u1", "a.jpg", 1, "(25, 32)", "m"),  # an exact duplicate
        _row("u1", "a.jpg", 1, "(38, 43)", "f"),  # the same face, other labels
    ]
    _fold_file(tmp_path / "fold_0_data.txt", rows)
    for k in range(1, 5):
        _fold_file(tmp_path / f"fold_{k}_data.txt", [_row(f"u{k + 1}", "b.jpg", 1, "(8, 12)", "f")])
    _, report = load_folds(tmp_path)
    assert report.duplicates == 2
    assert len(report.conflicts) == 1
    assert "fold_0_data.txt:4:" in report.conflicts[0] and "line 2" in report.conflicts[0]
    assert "1 of them with other labels" in report.summary()


@pytest.mark.parametrize(
    "body",
    [b"", b"\xef\xbb\xbf", b"\n\r\n\n"],
    ids=["zero-bytes", "byte-order-mark-only", "blank-lines"],
)
def test_an_empty_csv_names_the_file(tmp_path, body):
    path = _csv(tmp_path, body)
    with pytest.raises(FoldFormatError, match=rf"^{path}: empty file \(no header line\)"):
        read_face_csv(path)


def test_a_quote_never_closed_names_its_line(tmp_path):
    path = _csv(tmp_path, (HEADER + 'a.jpg,25,m,p1\n"b.jpg,30,f,p2\nc.jpg,30,f,p3\n').encode())
    with pytest.raises(FoldFormatError, match=r"faces\.csv:3: a quote .* never closed"):
        read_face_csv(path)


def test_a_column_named_twice(tmp_path):
    path = _csv(tmp_path, b"path,age,gender,Age\na.jpg,25,m,30\n")
    with pytest.raises(FoldFormatError, match=r"faces\.csv:1: column\(s\) 'age' named more"):
        read_face_csv(path)


def test_spreadsheet_exports_read_as_before(tmp_path):
    """Empty header cells (a spreadsheet's trailing commas) and lines of only spaces are not
    errors, as they were not when pandas read the file; the lines still count."""
    path = _csv(
        tmp_path, b"path,age,gender,group,,\r\na.jpg,25,m,p1,,\r\n   \r\nb.jpg,30,f,p2,,\r\n"
    )
    table, problems = read_face_csv(path, num_folds=1)
    assert table["line"].tolist() == [2, 4] and not problems
