"""Sharded prediction: N jobs split one input between them and share one output folder.

Rule: the sorted input files (:func:`agegender.inference.inputs.scan_inputs`) are cut into
``num_shards`` CONTIGUOUS blocks of nearly equal length (the first ``n % N`` blocks one file
longer); shard ``i`` predicts block ``i``. Contiguous blocks (rather than every N-th file)
make the merged ``predictions.csv`` the plain concatenation of the shard CSVs in shard
order, with no need to scan the input again, and keep each sub-folder's files together. A
video is one file: all its frames belong to one shard.

Shard ``i`` of ``N`` writes ``predictions.shard-<i>-of-<N>.csv`` (``num_shards=1``: the
ordinary ``predictions.csv``) and, once it has gone through its whole block,
``predictions.shard-<i>-of-<N>.done.json``: the merge step
(:mod:`agegender.inference.merge`) refuses a shard without it, since a shard whose job was
killed has a CSV but not all of its rows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from agegender.errors import AgeGenderError
from agegender.fileio import atomic_write

T = TypeVar("T")

CSV_NAME = "predictions.csv"
#: ``predictions.shard-<i>-of-<N>.csv`` (or ``.jsonl``); groups: i, N, suffix.
SHARD_CSV_PATTERN = re.compile(r"predictions\.shard-(\d+)-of-(\d+)(\.csv|\.jsonl)")
DONE_FORMAT = "agegender.predict_shard.v1"


class ShardError(AgeGenderError, ValueError):
    """Bad ``shard``/``num_shards`` values, or shards that cannot be merged (message says
    which shard and what to run)."""


def check_shard(shard: int, num_shards: int) -> None:
    if num_shards < 1:
        raise ShardError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ShardError(
            f"shard must be in 0..{num_shards - 1} for num_shards={num_shards}, got {shard}"
        )


def shard_slice(items: Sequence[T], shard: int, num_shards: int) -> list[T]:
    """Block ``shard`` of ``items`` cut into ``num_shards`` contiguous near-equal blocks."""
    check_shard(shard, num_shards)
    n = len(items)
    start = shard * (n // num_shards) + min(shard, n % num_shards)
    stop = start + n // num_shards + (1 if shard < n % num_shards else 0)
    return list(items[start:stop])


def csv_name(shard: int = 0, num_shards: int = 1, suffix: str = ".csv") -> str:
    """The file a shard writes: ``predictions.csv`` (``.jsonl`` with ``format=jsonl``)
    unless the run is sharded."""
    check_shard(shard, num_shards)
    if num_shards == 1:
        return f"predictions{suffix}"
    return f"predictions.shard-{shard}-of-{num_shards}{suffix}"


def done_path(csv_path: str | os.PathLike[str]) -> Path:
    """The completion marker beside a shard file (``<name>.done.json``, suffix replaced)."""
    path = Path(csv_path)
    return path.with_name(path.stem + ".done.json")


def write_done(csv_path: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Mark the shard CSV complete: ``info`` (rows, inputs, columns...) as JSON, atomically."""
    data = json.dumps({"format": DONE_FORMAT, **info}, indent=2, sort_keys=True).encode()
    return atomic_write(done_path(csv_path), lambda fh: fh.write(data))


def read_done(csv_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The completion marker's content, or None if the shard has not finished."""
    try:
        info = json.loads(done_path(csv_path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("format") == DONE_FORMAT else None


def clear_done(csv_path: str | os.PathLike[str]) -> None:
    """A shard that starts (again) is not complete until it finishes."""
    done_path(csv_path).unlink(missing_ok=True)
