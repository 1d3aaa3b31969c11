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

from agegender.labels import ADIENCE_AGE_STRINGS, AGE_BUCKETS, GENDERS, IGNORE_INDEX

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
POLICIES: tuple[str, ...] = ("strict", "remap")
#: What happens to exact duplicate rows: ``drop`` (all but the first) or ``keep`` (every copy).
DUPLICATES: tuple[str, ...] = ("drop", "keep")
#: Columns identifying one face image (the cache key).
KEY: list[str] = ["user_id", "face_id", "original_image"]

#: Bucket bounds (inclusive), in logit order, for the nearest-bucket rule of ``remap``.
_BOUNDS: tuple[tuple[int, int], ...] = tuple(
    (int(a), int(b)) for a, b in (s.split("-") for s in AGE_BUCKETS)
)
_RANGE = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_GENDER_STRICT = {"m": 0, "f": 1}
_GENDER_REMAP = {"m": 0, "f": 1, "male": 0, "female": 1}


class FoldFormatError(ValueError):
    """A fold file (or one of its rows) cannot be used; the message names file and line."""


@dataclass
class LoadReport:
    """What the loader left out and why, so nothing disappears silently."""

    malformed: list[str] = field(default_factory=list)
    duplicates: int = 0  # rows repeating an earlier row (dropped or kept, see ``duplicates_kept``)
    duplicates_kept: bool = False
    unknown_age: int = 0
    unknown_gender: int = 0
    dropped_unlabelled: int = 0

    def summary(self) -> str:
        fate = "kept" if self.duplicates_kept else "dropped"
        return (
            f"{len(self.malformed)} malformed rows skipped, {self.duplicates} duplicate rows "
            f"{fate}, {self.unknown_age} rows without age, {self.unknown_gender} without "
            f"gender, {self.dropped_unlabelled} with neither (dropped)"
        )


def nearest_bucket(age: float) -> int:
    """Index of the bucket nearest to an age in years (ties go to the lower bucket)."""
    best, best_dist = 0, float("inf")
    for i, (lo, hi) in enumerate(_BOUNDS):
        dist = 0.0 if lo <= age <= hi else min(abs(age - lo), abs(age - hi))
        if dist < best_dist:
            best, best_dist = i, dist
    return best


def parse_age(value: object, policy: str = "strict") -> int:
    """Bucket index for one age cell under a policy, IGNORE_INDEX when unknown.

    Accepts the Adience spellings ("(25, 32)"), the bucket names ("25-32"), and under
    ``remap`` bare numbers and odd ranges.
    """
    _check_policy(policy)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return IGNORE_INDEX
    text = str(value).strip()
    if text in ADIENCE_AGE_STRINGS:
        return ADIENCE_AGE_STRINGS.index(text)
    if text in AGE_BUCKETS:
        return AGE_BUCKETS.index(text)
    if policy == "strict":
        return IGNORE_INDEX
    if _NUMBER.match(text):
        return nearest_bucket(float(text))
    m = _RANGE.match(text) or re.match(r"^(\d+)\s*-\s*(\d+)$", text)
    if m:
        # A range goes by its first number: (8, 23) -> 8-12, (25, 23) -> 25-32, (27, 32) -> 25-32.
        return nearest_bucket(float(m.group(1)))
    return IGNORE_INDEX


def parse_gender(value: object, policy: str = "strict") -> int:
    """0 = male, 1 = female, IGNORE_INDEX when unknown ('u', empty, anything else)."""
    _check_policy(policy)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return IGNORE_INDEX
    table = _GENDER_STRICT if policy == "strict" else _GENDER_REMAP
    return table.get(str(value).strip().lower(), IGNORE_INDEX)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown label policy {policy!r}; expected one of {POLICIES}")


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
        lines = path.read_text(encoding="utf-8").splitlines()
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
) -> tuple[pd.DataFrame, LoadReport]:
    """All five folds as one table with integer ``age``/``gender`` (IGNORE_INDEX = unknown).

    Columns: user_id, original_image, face_id, fold, line, age_raw, gender_raw, age, gender,
    and the box/pose columns of the fold file (as written). Exact duplicates (same user, face,
    image and fold) are counted in ``report.duplicates``; ``duplicates="drop"`` keeps the first
    copy only, ``"keep"`` keeps every copy (the Levi-Hassner lists' multiplicity; the copies
    share one cache key).
    """
    _check_policy(policy)
    if duplicates not in DUPLICATES:
        raise ValueError(f"unknown duplicates option {duplicates!r}; expected one of {DUPLICATES}")
    report = LoadReport(duplicates_kept=duplicates == "keep")
    frames = [read_fold_file(p, k, report, strict_rows) for k, p in enumerate(fold_paths(root))]
    table = pd.concat(frames, ignore_index=True)
    table = table.rename(columns={"age": "age_raw", "gender": "gender_raw"})
    table["age"] = table["age_raw"].map(lambda v: parse_age(v, policy)).astype("int64")
    table["gender"] = table["gender_raw"].map(lambda v: parse_gender(v, policy)).astype("int64")
    dup = table.duplicated(subset=[*KEY, "fold"], keep="first")
    report.duplicates = int(dup.sum())
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


def summarize(table: pd.DataFrame) -> dict[str, dict]:
    """Per-fold rows, users, and label counts (bucket order; male, female)."""
    out: dict[str, dict] = {}
    for fold in range(NUM_FOLDS):
        rows = table[table["fold"] == fold]
        out[str(fold)] = {
            "rows": len(rows),
            "users": int(rows["user_id"].nunique()),
            "age_counts": [int((rows["age"] == i).sum()) for i in range(len(AGE_BUCKETS))],
            "gender_counts": [int((rows["gender"] == i).sum()) for i in range(len(GENDERS))],
        }
    return out


def format_summary(summary: dict[str, dict]) -> str:
    header = ["fold", "rows", "users", *AGE_BUCKETS, *GENDERS]
    lines = ["\t".join(header)]
    for fold, s in summary.items():
        cells = [fold, s["rows"], s["users"], *s["age_counts"], *s["gender_counts"]]
        lines.append("\t".join(str(c) for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.data.folds",
        description="Per-fold counts of the Adience fold files under a label policy.",
    )
    parser.add_argument("root", type=Path, help="dataset root (or folder of fold_K_data.txt)")
    parser.add_argument("--policy", choices=POLICIES, default="strict")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--strict-rows", action="store_true", help="malformed rows are fatal")
    parser.add_argument(
        "--duplicates",
        choices=DUPLICATES,
        default="drop",
        help="exact duplicate rows: drop all but the first, or keep every copy (Levi-Hassner)",
    )
    args = parser.parse_args(argv)
    try:
        table, report = load_folds(
            args.root, args.policy, strict_rows=args.strict_rows, duplicates=args.duplicates
        )
    except FoldFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(table)
    print(format_summary(summary))
    print(report.summary(), file=sys.stderr)
    for message in report.malformed:
        print(f"  {message}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
