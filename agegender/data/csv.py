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
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.datamodule import FaceDataModule
from agegender.data.folds import FoldFormatError, image_relpath, load_folds
from agegender.data.preprocess import BOX_COLUMNS
from agegender.data.splits import stratified_group_folds
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


def _read_table(csv: Path) -> pd.DataFrame:
    """The CSV as strings; a file pandas cannot parse is a FoldFormatError naming the file,
    the line and the fix (UTF-8 with or without a byte-order mark; quote commas)."""
    try:
        return pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        data = csv.read_bytes()
        line = data.count(b"\n", 0, exc.start) + 1
        raise FoldFormatError(
            f"{csv}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+), saw (\d+)", str(exc))
        where = f"{csv}:{match.group(1)}" if match else str(csv)
        detail = f"{match.group(2)} fields where the header has fewer" if match else str(exc)
        raise FoldFormatError(
            f'{where}: {detail}; quote fields that hold commas ("a, b") or remove the extra field'
        ) from None


def read_face_csv(
    csv: str | Path,
    num_folds: int = 5,
    seed: int = 0,
    strict_rows: bool = False,
    labels: LabelSet | str | None = None,
    stratify: bool = False,
) -> tuple[pd.DataFrame, list[str]]:
    """(table with key, path, box, user_id, fold, age, gender; malformed-row messages).

    ``age`` indexes ``labels`` (default adience8). ``stratify``: without a fold column, deal
    groups into folds keeping the label proportions (see module doc)."""
    labels = load_label_set(labels)
    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise FoldFormatError(f"CSV not found: {csv}")
    raw = _read_table(csv)
    raw.columns = [c.strip().lower() for c in raw.columns]
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise FoldFormatError(f"{csv}: missing column(s) {', '.join(missing)}")
    has_box = [c in raw.columns for c in BOX_COLUMNS]
    if any(has_box) and not all(has_box):
        raise FoldFormatError(f"{csv}: a box needs all of {', '.join(BOX_COLUMNS)}")
    base = csv.parent.resolve()
    rows, problems = [], []
    for lineno, rec in enumerate(raw.to_dict("records"), start=2):
        errors = []
        age, err = _label(rec["age"], labels.parse_age, "age", labels)
        errors += [err] if err else []
        gender, err = _label(rec["gender"], labels.parse_gender, "gender", labels)
        errors += [err] if err else []
        path = (base / rec["path"].strip()).resolve()
        if not rec["path"].strip() or not path.is_relative_to(base):
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
        rows.append([key, str(path), *box, group, fold, age, gender, lineno])
    columns = ["key", "path", *BOX_COLUMNS, "user_id", "fold", "age", "gender", "line"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.drop_duplicates(subset=["key", "age", "gender"])
    if not table["key"].is_unique:
        dup = table[table["key"].duplicated()]["key"].iloc[0]
        raise FoldFormatError(f"{csv}: {dup!r} appears twice with different labels")
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
    table = table.astype({"fold": "int64", "age": "int64", "gender": "int64"})
    return table.reset_index(drop=True), problems


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
    try:
        path, rows = adience_to_csv(args.root, args.out, args.kind)
    except FoldFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {rows} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
