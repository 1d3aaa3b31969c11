"""Any labelled face dataset given as one CSV (``data=csv``): the shape custom datasets come in.

Columns: ``path`` (relative to the CSV's folder), optional box ``x1, y1, x2, y2`` (original
pixels; a row with a box is cropped around it, a row without one goes through MTCNN), ``age``
(a class name of the label set, one of its aliases such as K-Face's ``20대``, an Adience
bucket "25-32" / "(25, 32)", a number of years, or empty), ``gender`` (m / f / male / female,
the set's gender aliases such as ``남``/``여``, or empty), and optionally ``group`` (the person:
splits are by group, so no one is in two splits) and/or ``fold`` (explicit test folds).
Without ``fold``, groups are dealt into ``num_folds`` folds by a seeded shuffle, or with
``stratify`` by a stratified group split that keeps the label proportions in every fold;
without ``group`` every image is its own group (a warning says so: splits are then only
image-exclusive). A label the set does not know is a reported row (file and line), fatal
with ``strict_rows``.

Faces go through the same preprocessing and cache as Adience, so batches are identical.

``python -m agegender.data.csv adience ROOT [OUT.csv]`` writes Adience's fold files as such
a CSV (``ROOT/adience.csv`` by default): the face crops of ``faces/``, the raw age and gender
cells (values no label set can read left empty), ``group`` = user and ``fold`` = fold file,
so Adience trains through ``data=csv`` with any label set (``experiment=coarse3``).
"""

from __future__ import annotations

import argparse
import codecs
import csv as csvlib
import io
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.datamodule import FaceDataModule
from agegender.data.folds import FoldFormatError, image_relpath, load_folds
from agegender.data.preprocess import BOX_COLUMNS
from agegender.data.splits import stratified_group_folds
from agegender.errors import handled
from agegender.labels import ADIENCE8, IGNORE_INDEX, LabelSet, load_label_set

REQUIRED: tuple[str, ...] = ("path", "age", "gender")


def _label(value: str, parse, column: str, labels: LabelSet) -> tuple[int, str | None]:
    if value.strip() == "":
        return IGNORE_INDEX, None
    label = parse(value, "remap")
    if label == IGNORE_INDEX:
        if column == "age":
            return label, f"age {value!r} is not a known value of label set {labels.describe()}"
        genders = ", ".join(labels.genders)
        return label, f"gender {value!r} is not a known value (one of {genders}, or an alias)"
    return label, None


def _records(csv: Path, text: str, strict: bool) -> list[tuple[int, list[str]]]:
    """(first line, cells) of every non-blank record; ``strict``: a quote opened and never
    closed is a csv.Error (the lenient reader would swallow the rest of the file)."""
    reader = csvlib.reader(io.StringIO(text, newline=""), strict=strict)
    out, start = [], 1
    try:
        for cells in reader:
            if cells and (len(cells) > 1 or cells[0].strip()):  # a blank line is no record
                out.append((start, cells))
            start = reader.line_num + 1
    except csvlib.Error as exc:
        if str(exc) == "unexpected end of data":
            raise FoldFormatError(
                f'{csv}:{start}: a quote (") opened in this row is never closed; close it or '
                "remove it"
            ) from None
        if strict:
            raise
        raise FoldFormatError(f"{csv}:{reader.line_num}: {exc}") from None
    return out


def read_csv_cells(csv: str | Path) -> pd.DataFrame:
    """Every row of ``csv`` as strings (a short row padded with empty cells; lines of only
    spaces skipped, as pandas skips them), columns stripped and lower-cased (an empty name
    is ``unnamed: N``, as pandas names it), indexed by the row's own line in the file: the
    header is line 1, blank lines count, a quoted cell over several lines counts them all.
    Problems are reported by that line so that a user can open the file there.

    A file that cannot be read as such a table is a :class:`FoldFormatError` naming the
    file, the line where there is one, and the fix (empty file, not UTF-8, a row with more
    fields than the header, a quote never closed, a column named twice)."""
    csv = Path(csv)
    try:
        data = csv.read_bytes()
    except OSError as exc:
        raise FoldFormatError(f"{csv}: cannot be read ({exc.strerror or exc})") from None
    body = data.removeprefix(codecs.BOM_UTF8)  # editors on Windows add a byte-order mark
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise FoldFormatError(
            f"{csv}:{line}: not UTF-8 text (byte {body[exc.start]:#04x}); save the file as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    try:
        records = _records(csv, text, strict=True)
    except csvlib.Error:  # stray quotes inside a cell (a"b): read as pandas would
        records = _records(csv, text, strict=False)
    if not records:
        raise FoldFormatError(
            f"{csv}: empty file (no header line); its first line names the columns, e.g. "
            f"{','.join(REQUIRED)}"
        )
    (header_line, header), rows = records[0], records[1:]
    columns = [c.strip().lower() or f"unnamed: {i}" for i, c in enumerate(header)]
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise FoldFormatError(
            f"{csv}:{header_line}: column(s) {', '.join(map(repr, twice))} named more than once "
            "(names are compared without case and spaces); rename or remove the copies"
        )
    for line, cells in rows:
        if len(cells) > len(columns):
            raise FoldFormatError(
                f"{csv}:{line}: {len(cells)} fields where the header has {len(columns)}; quote "
                'fields that hold commas ("a, b") or remove the extra field'
            )
    cells = [c + [""] * (len(columns) - len(c)) for _, c in rows]
    index = pd.Index([line for line, _ in rows], dtype="int64", name="line")
    return pd.DataFrame(cells, columns=columns, index=index, dtype=object)


@dataclass
class FaceCsv:
    """A ``data=csv`` file as read: the rows used and every row left out, by file and line.

    ``problems``: rows left out, ``file:line: why`` (a label the set does not know, a path
    outside the folder, a bad box or fold). ``duplicates``: rows repeating an earlier row's
    image, box and labels, ``file:line: ...`` naming that row; they are counted once, and
    listed so that a count never changes without a reason a user can see. ``cells``: every
    row as written (:func:`read_csv_cells`), for columns the table does not keep.
    """

    table: pd.DataFrame
    problems: list[str]
    duplicates: list[str]
    cells: pd.DataFrame


def read_face_csv(
    csv: str | Path,
    num_folds: int = 5,
    seed: int = 0,
    strict_rows: bool = False,
    labels: LabelSet | str | None = None,
    stratify: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """(table with key, path, box, user_id, fold, age, gender, line; malformed-row messages):
    :func:`load_face_csv` for callers that need no more."""
    read = load_face_csv(csv, num_folds, seed, strict_rows, labels, stratify)
    return read.table, read.problems


def load_face_csv(
    csv: str | Path,
    num_folds: int = 5,
    seed: int = 0,
    strict_rows: bool = False,
    labels: LabelSet | str | None = None,
    stratify: bool = False,
) -> FaceCsv:
    """The rows of a ``data=csv`` file with everything left out named (:class:`FaceCsv`).

    ``table``: key, path, box, user_id, fold, age, gender and the row's ``line`` in the file;
    ``age`` indexes ``labels`` (default adience8). ``stratify``: without a fold column, deal
    groups into folds keeping the label proportions (see module doc). The same image (and
    box) twice with other labels is an error naming both lines."""
    labels = load_label_set(labels)
    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise FoldFormatError(f"CSV not found: {csv}")
    raw = read_csv_cells(csv)
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise FoldFormatError(f"{csv}: missing column(s) {', '.join(missing)}")
    has_box = [c in raw.columns for c in BOX_COLUMNS]
    if any(has_box) and not all(has_box):
        raise FoldFormatError(f"{csv}: a box needs all of {', '.join(BOX_COLUMNS)}")
    base = csv.parent.resolve()
    rows, problems = [], []
    for lineno, rec in zip(raw.index, raw.to_dict("records"), strict=True):
        errors = []
        age, err = _label(rec["age"], labels.parse_age, "age", labels)
        errors += [err] if err else []
        gender, err = _label(rec["gender"], labels.parse_gender, "gender", labels)
        errors += [err] if err else []
        path = (base / rec["path"].strip()).resolve()
        if not rec["path"].strip():
            errors.append("no path")
        elif not path.is_relative_to(base):
            errors.append(f"path {rec['path']!r} is not inside {base}")
        box = [np.nan] * 4
        if all(has_box) and any(rec[c].strip() for c in BOX_COLUMNS):
            try:
                box = [float(rec[c]) for c in BOX_COLUMNS]
            except ValueError:
                errors.append("box values must be numbers")
            else:
                if not (box[2] > box[0] and box[3] > box[1]):
                    errors.append(f"empty box {box}")
        fold = None
        if "fold" in rec:
            if not rec["fold"].strip().isdigit():
                errors.append(f"fold {rec['fold']!r} is not a number")
            else:
                fold = int(rec["fold"])
        if errors:
            message = f"{csv}:{lineno}: {'; '.join(errors)}"
            if strict_rows:
                raise FoldFormatError(message)
            problems.append(message)
            continue
        rel = path.relative_to(base).as_posix()
        key = rel if np.isnan(box[0]) else f"{rel}#{','.join(f'{v:g}' for v in box)}"
        group = rec.get("group", "").strip() or rel
        rows.append([key, str(path), *box, group, fold, age, gender, int(lineno)])
    columns = ["key", "path", *BOX_COLUMNS, "user_id", "fold", "age", "gender", "line"]
    table = pd.DataFrame(rows, columns=columns)
    table, duplicates = _drop_duplicates(table, raw, csv)
    if "group" not in raw.columns:
        warnings.warn(
            f"{csv} has no 'group' column: every image is its own group, so one person may "
            "end up in two splits; add a group (person id) column for subject-exclusive splits",
            stacklevel=2,
        )
    if "fold" not in raw.columns and stratify:
        table["fold"] = table["user_id"].map(stratified_group_folds(table, num_folds, seed))
    elif "fold" not in raw.columns:
        groups = sorted(table["user_id"].unique())
        order = np.random.default_rng(seed).permutation(len(groups))
        fold_of = {groups[i]: n % num_folds for n, i in enumerate(order)}
        table["fold"] = table["user_id"].map(fold_of)
    table = table.astype({"fold": "int64", "age": "int64", "gender": "int64", "line": "int64"})
    return FaceCsv(table.reset_index(drop=True), problems, duplicates, raw)


def _drop_duplicates(
    table: pd.DataFrame, raw: pd.DataFrame, csv: Path
) -> tuple[pd.DataFrame, list[str]]:
    """(the table with each image/box/labels once, a ``file:line`` message per dropped copy).
    The same image and box with other labels cannot be counted once: an error naming both
    lines and what each says."""
    copy = table.duplicated(subset=["key", "age", "gender"], keep="first")
    kept = table[~copy]
    clash = kept[kept["key"].duplicated(keep=False)]
    if len(clash):
        first, second = clash.iloc[0], clash[clash["key"] == clash.iloc[0]["key"]].iloc[1]
        said = {
            line: f"age {raw.at[line, 'age']!r}, gender {raw.at[line, 'gender']!r}"
            for line in (int(first["line"]), int(second["line"]))
        }
        raise FoldFormatError(
            f"{csv}:{second['line']}: {first['key']!r} appears twice with different labels: "
            f"this line says {said[int(second['line'])]}, line {first['line']} says "
            f"{said[int(first['line'])]} (correct or delete one of them)"
        )
    line_of = dict(zip(kept["key"], kept["line"], strict=True))
    messages = [
        f"{csv}:{row.line}: {row.key!r} repeats line {line_of[row.key]} (same image"
        f"{'' if np.isnan(row.x1) else ' and box'} and labels): counted once"
        for row in table[copy].itertuples(index=False)
    ]
    return kept, messages


class CsvDataModule(FaceDataModule):
    """The batches of :class:`AdienceDataModule` from a generic CSV (see module doc)."""

    def __init__(
        self,
        csv: str | Path,
        fold: int = 0,
        num_folds: int = 5,
        source: str = "mtcnn",
        strict_rows: bool = False,
        **kwargs: Any,
    ) -> None:
        self.csv = Path(csv).expanduser()
        kwargs.setdefault("auto_preprocess", True)  # a CSV dataset is usually small
        super().__init__(self.csv.parent, fold=fold, source=source, **kwargs)
        self.num_folds = int(num_folds)
        self.strict_rows = bool(strict_rows)

    def _read(self) -> pd.DataFrame:
        table, problems = read_face_csv(
            self.csv, self.num_folds, self.seed, self.strict_rows, self.labels, self.stratify
        )
        if problems:
            shown = "\n  ".join(problems[:10])
            warnings.warn(f"{len(problems)} malformed rows skipped:\n  {shown}", stacklevel=2)
        return table

    def load_table(self) -> pd.DataFrame:
        return self._read()

    def jobs(self) -> pd.DataFrame:
        return self._read()[["key", "path", *BOX_COLUMNS]]

    def default_cache_dir(self) -> Path:
        """``<csv folder>/cache/<csv name>-<source>[-<detector>]-<key>``: several CSVs may
        share a folder, each setting gets its own cache."""
        return self.csv.parent / "cache" / f"{self.csv.stem}-{self.face_options().cache_name()}"

    def preprocess_command(self) -> str:
        return self._command("data=csv", f"data.csv={shlex.quote(str(self.csv))}")


def adience_to_csv(
    root: str | Path, out: str | Path | None = None, kind: str = "faces"
) -> tuple[Path, int]:
    """Write the Adience fold files under ``root`` as a ``data=csv`` CSV; returns (path, rows).

    Image paths are relative to the CSV's folder, which must hold ``root`` (the reader
    refuses paths outside it). Exact duplicate fold rows are written once; an age or gender
    cell that adience8 cannot read even under ``remap`` (``None``, ``u``) is left empty, so
    the row keeps its other label instead of being reported as malformed.
    """
    root = Path(root).expanduser().resolve()
    out = (root / "adience.csv") if out is None else Path(out).expanduser().resolve()
    if not root.is_relative_to(out.parent):
        raise FoldFormatError(f"{out} must be in {root} or a folder above it (paths are relative)")
    table, _ = load_folds(root, "remap", drop_unlabelled=False)
    ages = [v if ADIENCE8.parse_age(v, "remap") != IGNORE_INDEX else "" for v in table["age_raw"]]
    genders = [
        v if ADIENCE8.parse_gender(v, "remap") != IGNORE_INDEX else "" for v in table["gender_raw"]
    ]
    paths = [
        (root / image_relpath(u, f, i, kind)).relative_to(out.parent).as_posix()
        for u, f, i in zip(table["user_id"], table["face_id"], table["original_image"], strict=True)
    ]
    frame = pd.DataFrame(
        {
            "path": paths,
            "age": ages,
            "gender": genders,
            "group": table["user_id"].to_numpy(),
            "fold": table["fold"].to_numpy(),
        }
    )
    frame = frame[(frame["age"] != "") | (frame["gender"] != "")]
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return out, len(frame)


@handled("agegender.data.csv")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.data.csv",
        description="Write a dataset as the CSV of data=csv.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    adience = sub.add_parser(
        "adience", help="Adience fold files -> CSV (path,age,gender,group,fold)"
    )
    adience.add_argument("root", type=Path, help="Adience root (fold_K_data.txt, faces/)")
    adience.add_argument(
        "out", type=Path, nargs="?", help="CSV to write (default ROOT/adience.csv)"
    )
    adience.add_argument("--kind", choices=("faces", "aligned"), default="faces")
    args = parser.parse_args(argv)
    path, rows = adience_to_csv(args.root, args.out, args.kind)
    print(f"wrote {rows} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
