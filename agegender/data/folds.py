"""Adience fold files -> one typed table, with the label policy applied.

The fold files are dirty (odd age strings, 'u' genders, duplicated rows), and the two ways
the literature treats them give different numbers, so the policy is an explicit choice:

- ``strict``: exactly Levi-Hassner's behaviour. Only the 8 canonical age strings and m/f
  count; anything else is unknown for that task (their per-fold test lists are reproduced).
- ``remap``: odd values go to the nearest bucket (ties to the lower bucket; a range by its
  first number), as other published work does.

A row unknown for one task keeps its other label (the head's loss masks it). Exact duplicate
rows (same user, face, image and fold) are counted; ``duplicates="drop"`` (the default) keeps
one copy, ``duplicates="keep"`` every copy, as the Levi-Hassner lists do (their line counts
include the copies). Rows that cannot be trusted at all (wrong column count, non-numeric face
id, a path component that would escape the data root) are reported with file and line and
left out; ``strict_rows=True`` makes them fatal instead.

Run ``python -m agegender.data.folds ROOT --policy strict --json OUT.json`` for per-fold counts
(``--duplicates keep`` to count the copies).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agegender.errors import AgeGenderError, handled, translated
from agegender.labels import (
    ADIENCE8,
    IGNORE_INDEX,
    POLICIES,
    LabelSet,
    check_policy,
    load_label_set,
    nearest_bucket,  # noqa: F401 - re-exported (it lived here first)
)

COLUMNS: tuple[str, ...] = (
    "user_id",
    "original_image",
    "face_id",
    "age",
    "gender",
    "x",
    "y",
    "dx",
    "dy",
    "tilt_ang",
    "fiducial_yaw_angle",
    "fiducial_score",
)
NUM_FOLDS = 5
#: What happens to exact duplicate rows: ``drop`` (all but the first) or ``keep`` (every copy).
DUPLICATES: tuple[str, ...] = ("drop", "keep")
#: Columns identifying one face image (the cache key).
KEY: list[str] = ["user_id", "face_id", "original_image"]


class FoldFormatError(AgeGenderError, ValueError):
    """A fold file (or one of its rows) cannot be used; the message names file and line."""


@dataclass
class LoadReport:
    """What the loader left out and why, so nothing disappears silently."""

    malformed: list[str] = field(default_factory=list)
    duplicates: int = 0  # rows repeating an earlier row (dropped or kept, see ``duplicates_kept``)
    #: Rows of a face seen earlier in its fold with OTHER labels ("file:line: ..." each); they
    #: are treated as duplicates (as the Levi-Hassner lists do) but named, not just counted.
    conflicts: list[str] = field(default_factory=list)
    duplicates_kept: bool = False
    unknown_age: int = 0
    unknown_gender: int = 0
    dropped_unlabelled: int = 0

    def summary(self) -> str:
        fate = "kept" if self.duplicates_kept else "dropped"
        return (
            f"{len(self.malformed)} malformed rows skipped, {self.duplicates} duplicate rows "
            f"{fate} ({len(self.conflicts)} of them with other labels than the face's first "
            f"row), {self.unknown_age} rows without age, {self.unknown_gender} without "
            f"gender, {self.dropped_unlabelled} with neither (dropped)"
        )


def parse_age(value: object, policy: str = "strict", labels: LabelSet | None = None) -> int:
    """Class index for one age cell under a policy, IGNORE_INDEX when unknown.

    Accepts the Adience spellings ("(25, 32)"), the bucket names ("25-32"), and under
    ``remap`` bare numbers and odd ranges (a range by its first number). ``labels``: the label
    set (default adience8; :meth:`agegender.labels.LabelSet.parse_age` says how other sets
    read Adience buckets, years and aliases).
    """
    return (labels or ADIENCE8).parse_age(value, policy)


def parse_gender(value: object, policy: str = "strict", labels: LabelSet | None = None) -> int:
    """0 = male, 1 = female, IGNORE_INDEX when unknown ('u', empty, anything else); a label
    set's ``gender_aliases`` add raw spellings (``남``/``여``)."""
    return (labels or ADIENCE8).parse_gender(value, policy)


def _check_policy(policy: str) -> None:
    check_policy(policy)


def safe_component(value: str) -> bool:
    """True when a value can be used as ONE path component under the data root."""
    return (
        bool(value)
        and value not in (".", "..")
        and "/" not in value
        and "\\" not in value
        and "\x00" not in value
        and not re.match(r"^[A-Za-z]:", value)
        and value == value.strip()
    )


def read_fold_file(
    path: str | Path, fold: int, report: LoadReport, strict_rows: bool = False
) -> pd.DataFrame:
    """Raw rows of one fold file (strings as written), malformed rows reported, not kept."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (editors on Windows add one) is not part of the header
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise FoldFormatError(f"fold file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise FoldFormatError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not lines or lines[0].split("\t")[: len(COLUMNS)] != list(COLUMNS):
        raise FoldFormatError(f"{path}:1: header is not the Adience header {'<TAB>'.join(COLUMNS)}")
    records = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        problem = None
        if len(cells) != len(COLUMNS):
            problem = f"{len(cells)} columns instead of {len(COLUMNS)}"
        elif not cells[2].strip().isdigit():
            problem = f"face_id {cells[2]!r} is not a number"
        elif not safe_component(cells[0]):
            problem = f"user_id {cells[0]!r} is not a plain folder name (path escape?)"
        elif not safe_component(cells[1]):
            problem = f"original_image {cells[1]!r} is not a plain file name (path escape?)"
        if problem:
            message = f"{path}:{lineno}: {problem}"
            if strict_rows:
                raise FoldFormatError(message)
            report.malformed.append(message)
            continue
        rec = dict(zip(COLUMNS, cells, strict=True))
        rec["face_id"] = int(cells[2])
        rec["fold"] = fold
        rec["line"] = lineno
        records.append(rec)
    frame = pd.DataFrame.from_records(records, columns=[*COLUMNS, "fold", "line"])
    return frame.astype({"face_id": "int64", "fold": "int64", "line": "int64"})


def fold_paths(root: str | Path) -> list[Path]:
    """The five fold files under a dataset root (or the folder holding them)."""
    root = Path(root)
    paths = [root / f"fold_{k}_data.txt" for k in range(NUM_FOLDS)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FoldFormatError(
            f"{root}: missing {', '.join(missing)} (see data/README.md for the expected layout)"
        )
    return paths


def load_folds(
    root: str | Path,
    policy: str = "strict",
    strict_rows: bool = False,
    drop_unlabelled: bool = True,
    duplicates: str = "drop",
    labels: LabelSet | None = None,
) -> tuple[pd.DataFrame, LoadReport]:
    """All five folds as one table with integer ``age``/``gender`` (IGNORE_INDEX = unknown).

    Columns: user_id, original_image, face_id, fold, line, age_raw, gender_raw, age, gender,
    and the box/pose columns of the fold file (as written). Exact duplicates (same user, face,
    image and fold) are counted in ``report.duplicates``; ``duplicates="drop"`` keeps the first
    copy only, ``"keep"`` keeps every copy (the Levi-Hassner lists' multiplicity; the copies
    share one cache key). ``labels``: the label set the ``age`` column indexes (default
    adience8: the bucket index).
    """
    _check_policy(policy)
    if duplicates not in DUPLICATES:
        raise ValueError(f"unknown duplicates option {duplicates!r}; expected one of {DUPLICATES}")
    report = LoadReport(duplicates_kept=duplicates == "keep")
    frames = [read_fold_file(p, k, report, strict_rows) for k, p in enumerate(fold_paths(root))]
    table = pd.concat(frames, ignore_index=True)
    table = table.rename(columns={"age": "age_raw", "gender": "gender_raw"})
    labels = labels or ADIENCE8
    table["age"] = table["age_raw"].map(lambda v: labels.parse_age(v, policy)).astype("int64")
    table["gender"] = table["gender_raw"].map(lambda v: labels.parse_gender(v, policy))
    table["gender"] = table["gender"].astype("int64")
    dup = table.duplicated(subset=[*KEY, "fold"], keep="first")
    report.duplicates = int(dup.sum())
    report.conflicts = _conflicts(table, dup, fold_paths(root))
    if duplicates == "drop":
        table = table[~dup]
    users_per_fold = table.groupby("user_id")["fold"].nunique()
    leaky = users_per_fold[users_per_fold > 1]
    if len(leaky):
        raise FoldFormatError(
            f"{root}: users in more than one fold (folds must be subject-exclusive): "
            f"{', '.join(leaky.index[:5])}"
        )
    report.unknown_age = int((table["age"] == IGNORE_INDEX).sum())
    report.unknown_gender = int((table["gender"] == IGNORE_INDEX).sum())
    neither = (table["age"] == IGNORE_INDEX) & (table["gender"] == IGNORE_INDEX)
    if drop_unlabelled:
        report.dropped_unlabelled = int(neither.sum())
        table = table[~neither]
    return table.reset_index(drop=True), report


def _conflicts(table: pd.DataFrame, dup: pd.Series, paths: list[Path]) -> list[str]:
    """``file:line`` messages for duplicate rows whose labels differ from the first row of
    the same face (the fix: correct or delete one of the two lines)."""
    first = table[~dup].set_index([*KEY, "fold"])
    out = []
    for row in table[dup].itertuples(index=False):
        key = (row.user_id, row.face_id, row.original_image, row.fold)
        head = first.loc[key]
        if (head["age_raw"], head["gender_raw"]) == (row.age_raw, row.gender_raw):
            continue
        out.append(
            f"{paths[row.fold]}:{row.line}: face {row.face_id} of {row.user_id}/"
            f"{row.original_image} says age {row.age_raw!r}, gender {row.gender_raw!r}; line "
            f"{head['line']} says age {head['age_raw']!r}, gender {head['gender_raw']!r} "
            "(correct or delete one of them)"
        )
    return out


def image_relpath(user_id: str, face_id: int, original_image: str, kind: str = "faces") -> str:
    """Relative path of a face image in the Adience layout (``faces`` or ``aligned``)."""
    prefix = {"faces": "coarse_tilt_aligned_face", "aligned": "landmark_aligned_face"}[kind]
    return f"{kind}/{user_id}/{prefix}.{face_id}.{original_image}"


def levi_hassner_lines(table: pd.DataFrame, fold: int, task: str) -> list[str]:
    """A fold's labelled rows for one task in the Levi-Hassner test-list format
    (``<user>/landmark_aligned_face.<face_id>.<image> <label>``), sorted, one line per row (a
    table loaded with ``duplicates="keep"`` gives the duplicated rows' lines more than once)."""
    rows = table[(table["fold"] == fold) & (table[task] != IGNORE_INDEX)]
    return sorted(
        f"{u}/landmark_aligned_face.{f}.{i} {label}"
        for u, f, i, label in zip(
            rows["user_id"], rows["face_id"], rows["original_image"], rows[task], strict=True
        )
    )


def summarize(table: pd.DataFrame, labels: LabelSet | None = None) -> dict[str, dict]:
    """Per-fold rows, users, and label counts (the set's class order; male, female)."""
    labels = labels or ADIENCE8
    out: dict[str, dict] = {}
    for fold in range(NUM_FOLDS):
        rows = table[table["fold"] == fold]
        out[str(fold)] = {
            "rows": len(rows),
            "users": int(rows["user_id"].nunique()),
            "age_counts": [int((rows["age"] == i).sum()) for i in range(len(labels.age))],
            "gender_counts": [int((rows["gender"] == i).sum()) for i in range(len(labels.genders))],
        }
    return out


def format_summary(summary: dict[str, dict], labels: LabelSet | None = None) -> str:
    labels = labels or ADIENCE8
    header = ["fold", "rows", "users", *labels.age, *labels.genders]
    lines = ["\t".join(header)]
    for fold, s in summary.items():
        cells = [fold, s["rows"], s["users"], *s["age_counts"], *s["gender_counts"]]
        lines.append("\t".join(str(c) for c in cells))
    return "\n".join(lines)


@handled("agegender.data.folds")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.data.folds",
        description="Per-fold counts of the Adience fold files under a label policy.",
    )
    parser.add_argument("root", type=Path, help="dataset root (or folder of fold_K_data.txt)")
    parser.add_argument("--policy", choices=POLICIES, default="strict")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument(
        "--labels",
        default=None,
        help="label set: adience8 (default), coarse3, coarse2, decades or a YAML file",
    )
    parser.add_argument("--strict-rows", action="store_true", help="malformed rows are fatal")
    parser.add_argument(
        "--duplicates",
        choices=DUPLICATES,
        default="drop",
        help="exact duplicate rows: drop all but the first, or keep every copy (Levi-Hassner)",
    )
    args = parser.parse_args(argv)
    with translated(ValueError):  # e.g. a --labels YAML file that does not parse
        labels = load_label_set(args.labels)
        table, report = load_folds(
            args.root,
            args.policy,
            strict_rows=args.strict_rows,
            duplicates=args.duplicates,
            labels=labels,
        )
    summary = summarize(table, labels)
    print(format_summary(summary, labels))
    print(report.summary(), file=sys.stderr)
    for message in [*report.malformed, *report.conflicts]:
        print(f"  {message}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
