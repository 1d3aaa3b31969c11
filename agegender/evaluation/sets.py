"""Labelled face sets to evaluate a model on: an Adience-format tree or a CSV.

Both are read by the training side's own parsers (:func:`agegender.data.folds.load_folds`,
:func:`agegender.data.csv.read_face_csv`), so a label means here exactly what it meant when
a model was trained on the same files. Each set becomes one :class:`EvalSet`: a table with
one row per labelled face (the image file, an optional box, the person, the true classes in
the evaluation label set, the raw label cells and any extra columns to group results by).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.config import load_yaml
from agegender.errors import AgeGenderError
from agegender.labels import IGNORE_INDEX, LabelSet

#: ``set=``: the kinds of labelled set the evaluation reads.
SET_KINDS: tuple[str, ...] = ("adience", "csv")
#: The box columns of a CSV set (x1, y1, x2, y2 in the image's pixels).
BOX: tuple[str, ...] = ("x1", "y1", "x2", "y2")
#: Columns of :attr:`EvalSet.table` (group columns come after them).
BASE_COLUMNS: tuple[str, ...] = (
    "file",
    "path",
    "subject",
    "age",
    "gender",
    "age_raw",
    "gender_raw",
    *BOX,
    "where",
)
#: Names a ``groups=`` column may not take: the table's own columns.
_RESERVED = frozenset({*BASE_COLUMNS, "group", "fold", "line", "key", "user_id"})


class EvalSetError(AgeGenderError, ValueError):
    """A set that cannot be evaluated (missing file, unknown column, empty fold); the
    message says which setting or file and what to do."""


@dataclass
class EvalSet:
    """One labelled set, read and filtered (one fold or all rows).

    ``table``: :data:`BASE_COLUMNS` (``file`` is the image to open, ``path`` how reports
    name it, ``subject`` the person or None, ``age``/``gender`` the true class indices in
    ``labels`` with -1 for unknown, the raw cells as written, the box or NaN, ``where`` the
    row's ``file:line`` for messages) and one column per ``groups`` entry.
    ``has_subjects``: the set names its people (bootstrap intervals resample people);
    otherwise every image is its own unit. ``policy``: how the raw cells were parsed
    (``strict``/``remap``), reused to read them in a model's own label set.
    """

    kind: str
    source: str
    fold: int | None
    labels: LabelSet
    policy: str
    table: pd.DataFrame
    has_subjects: bool
    groups: tuple[str, ...] = ()
    #: Rows left out before evaluation, each ``file:line: why`` (labels no parser reads).
    skipped_rows: list[str] = field(default_factory=list)
    #: Rows counted once as copies of an earlier row, each ``file:line: ...`` naming it.
    duplicate_rows: list[str] = field(default_factory=list)
    #: Lines for the report on how the set was read.
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)

    def age_in(self, labels: LabelSet) -> np.ndarray:
        """The true age classes in another label set (a model's own, to fit its temperature
        on): the same cells parsed again under the same policy; -1 where that set cannot
        read them (``child`` says nothing about an Adience bucket)."""
        if labels == self.labels:
            return self.table["age"].to_numpy(dtype=np.int64)
        return np.array(
            [labels.parse_age(v, self.policy) for v in self.table["age_raw"]], dtype=np.int64
        )


def adience_policy() -> str:
    """The label policy of ``conf/data/adience.yaml`` (training's default, read once there)."""
    return str(load_yaml("data/adience.yaml")["label_policy"])


def load_adience(
    root: str | Path, fold: int | None, labels: LabelSet, policy: str | None = None
) -> EvalSet:
    """The labelled rows of fold ``fold`` (all five folds: None) of an Adience-format tree
    (``fold_K_data.txt`` + ``faces/<user>/coarse_tilt_aligned_face.<face>.<image>``), parsed
    by :func:`agegender.data.folds.load_folds` under ``policy`` (None: the data config's
    default); the subject is the Flickr user. Rows of a face repeated with other labels
    (dropped as duplicates) are listed in ``duplicate_rows``."""
    from agegender.data.folds import FoldFormatError, fold_paths, image_relpath, load_folds

    policy = policy or adience_policy()
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EvalSetError(f"set=adience: root {str(root)!r} is not a folder")
    try:
        table, report = load_folds(root, policy, labels=labels)
    except FoldFormatError as exc:
        raise EvalSetError(f"set=adience: {exc}") from None
    if fold is not None:
        folds = sorted(int(f) for f in table["fold"].unique())
        if int(fold) not in folds:
            raise EvalSetError(f"set=adience: fold={fold} has no labelled rows (folds: {folds})")
        table = table[table["fold"] == int(fold)]
    files = fold_paths(root)
    rel = [
        image_relpath(u, f, i, "faces")
        for u, f, i in zip(table["user_id"], table["face_id"], table["original_image"], strict=True)
    ]
    out = pd.DataFrame(
        {
            "file": [str(root / r) for r in rel],
            "path": rel,
            "subject": table["user_id"].astype(str).to_numpy(),
            "age": table["age"].to_numpy(dtype=np.int64),
            "gender": table["gender"].to_numpy(dtype=np.int64),
            "age_raw": table["age_raw"].astype(str).to_numpy(),
            "gender_raw": table["gender_raw"].astype(str).to_numpy(),
            **{c: np.nan for c in BOX},
            "where": [f"{files[f]}:{n}" for f, n in zip(table["fold"], table["line"], strict=True)],
        }
    )
    notes = [f"label policy {policy} (agegender.data.folds); {report.summary()}"]
    return EvalSet(
        kind="adience",
        source=str(root),
        fold=None if fold is None else int(fold),
        labels=labels,
        policy=policy,
        table=out.reset_index(drop=True),
        has_subjects=True,
        skipped_rows=list(report.malformed),
        duplicate_rows=list(report.conflicts),
        notes=notes,
    )


def load_csv(
    csv: str | Path, fold: int | None, labels: LabelSet, groups: tuple[str, ...] = ()
) -> EvalSet:
    """The rows of a ``data=csv`` CSV (:func:`agegender.data.csv.load_face_csv`: ``path``
    relative to the CSV, optional box, ``age`` in any spelling the label set reads, years
    included, ``gender``), restricted to ``fold`` when given (the CSV's ``fold`` column).
    The person is the ``group`` column, else a ``subject`` column; ``groups`` names extra
    columns to report results by. Every row left out is named by its line in the file
    (``skipped_rows``: unreadable labels or path, no label at all; ``duplicate_rows``)."""
    # deferred: agegender.data.csv imports Lightning and torch (~5 s) for its DataModule
    from agegender.data.csv import load_face_csv
    from agegender.data.folds import FoldFormatError

    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise EvalSetError(f"set=csv: CSV not found: {csv}")
    try:
        with warnings.catch_warnings():  # "no group column": said in the report instead
            warnings.simplefilter("ignore", UserWarning)
            read = load_face_csv(csv, labels=labels)
    except FoldFormatError as exc:
        raise EvalSetError(f"set=csv: {exc}") from None
    table, raw = read.table, read.cells
    check_groups(groups, list(raw.columns), str(csv))
    if fold is not None and "fold" not in raw.columns:
        raise EvalSetError(
            f"set=csv: fold={fold} needs a 'fold' column in {csv} (its columns: "
            f"{', '.join(raw.columns)}); leave fold=null to evaluate every row"
        )
    subject_column = next((c for c in ("group", "subject") if c in raw.columns), None)
    if fold is not None:
        table = table[table["fold"] == int(fold)]
        if table.empty:
            raise EvalSetError(f"set=csv: no usable row of {csv} has fold {fold}")
    # load_face_csv keeps its own columns: the raw cells and extra columns come by line
    source = raw.loc[table["line"].to_numpy()].reset_index(drop=True)
    subjects = source[subject_column].str.strip() if subject_column else None
    if subjects is not None and (subjects == "").any():
        subjects = subjects.where(subjects != "", table["path"].to_numpy())  # as read_face_csv
    out = pd.DataFrame(
        {
            "file": table["path"].to_numpy(),
            "path": [Path(p).relative_to(csv.parent.resolve()).as_posix() for p in table["path"]],
            "subject": None if subjects is None else subjects.to_numpy(),
            "age": table["age"].to_numpy(dtype=np.int64),
            "gender": table["gender"].to_numpy(dtype=np.int64),
            "age_raw": source["age"].to_numpy(),
            "gender_raw": source["gender"].to_numpy(),
            **{c: table[c].to_numpy(dtype=np.float64) for c in BOX},
            "where": [f"{csv}:{n}" for n in table["line"]],
        }
    )
    for column in groups:
        out[column] = source[column].str.strip().to_numpy()
    notes = []
    if subject_column is None:
        notes.append(
            "no group/subject column: every image counts as its own person (intervals "
            "resample images, which is too narrow when a person has several images)"
        )
    neither = (out["age"] == IGNORE_INDEX) & (out["gender"] == IGNORE_INDEX)
    skipped = [(_line_of(m, csv), m) for m in read.problems]
    skipped += [
        (_line_of(w, csv), f"{w}: no age and no gender: nothing to score")
        for w in out["where"][neither]
    ]
    out = out[~neither]
    return EvalSet(
        kind="csv",
        source=str(csv),
        fold=None if fold is None else int(fold),
        labels=labels,
        policy="remap",  # read_face_csv's policy (any spelling, years included)
        table=out.reset_index(drop=True),
        has_subjects=subject_column is not None,
        groups=tuple(groups),
        skipped_rows=[message for _, message in sorted(skipped)],
        duplicate_rows=list(read.duplicates),
        notes=notes,
    )


def _line_of(message: str, csv: Path) -> int:
    """The line of a ``{csv}:{line}: ...`` message (to list the rows in file order)."""
    return int(message[len(f"{csv}:") :].split(":", 1)[0])


def check_groups(groups: tuple[str, ...], columns: list[str], where: str) -> None:
    """An error naming the columns when a ``groups=`` entry is not a usable column."""
    unknown = [g for g in groups if g not in columns]
    reserved = [g for g in groups if g in _RESERVED]
    if unknown:
        raise EvalSetError(
            f"groups={list(groups)}: no column {', '.join(map(repr, unknown))} in {where}; "
            f"its columns are {', '.join(columns)}"
        )
    if reserved:
        raise EvalSetError(
            f"groups={list(groups)}: {', '.join(reserved)} is not a grouping column (age and "
            "gender are always reported; the person is the bootstrap unit)"
        )


def load_set(
    kind: str,
    labels: LabelSet,
    *,
    root: Any = None,
    csv: Any = None,
    fold: int | None = None,
    groups: tuple[str, ...] = (),
    policy: str | None = None,
) -> EvalSet:
    """The set ``set=kind`` names (see :func:`load_adience`, :func:`load_csv`)."""
    if kind == "adience":
        if root is None:
            raise EvalSetError("set=adience needs root=DIR (the folder of fold_K_data.txt)")
        if groups:
            raise EvalSetError(
                f"groups={list(groups)}: an Adience set has no extra columns to group by "
                "(age and gender groups are always reported)"
            )
        return load_adience(root, fold, labels, policy)
    if kind == "csv":
        if csv is None:
            raise EvalSetError("set=csv needs csv=FILE (columns path, age, gender, ...)")
        return load_csv(csv, fold, labels, tuple(groups))
    raise EvalSetError(f"set must be one of {', '.join(SET_KINDS)}, got {kind!r}")
