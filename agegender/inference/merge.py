"""One predictions.csv from the shard CSVs of a sharded prediction run, in input order.

    python -m agegender.inference.merge DIR [--num-shards N]

Shards are contiguous blocks of the sorted inputs (:mod:`agegender.inference.shards`), so
the merged file is the header followed by the rows of shard 0, 1, ... N-1, copied byte for
byte (streamed: memory does not grow with the CSVs). It refuses, naming the shard and the
command that completes it, when a shard CSV is missing, has no completion marker (its job
was killed or is still running), has fewer or more rows than the marker says, or has other
columns than shard 0. ``predictions.csv`` is replaced atomically, so a failed merge leaves
any earlier one intact. :class:`MergeShardsCallback` runs the merge at the end of a
``predict.py -m ... shard=...`` multirun.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agegender.errors import handled
from agegender.fileio import atomic_write
from agegender.inference.shards import (
    CSV_NAME,
    SHARD_CSV_PATTERN,
    ShardError,
    csv_name,
    done_path,
    read_done,
)

log = logging.getLogger(__name__)


def find_num_shards(folder: Path, suffix: str = ".csv") -> int:
    """The N of the ``predictions.shard-*-of-N.csv`` files in ``folder`` (exactly one N)."""
    counts = set()
    for path in folder.iterdir() if folder.is_dir() else ():
        match = SHARD_CSV_PATTERN.fullmatch(path.name)
        if match and match.group(3) == suffix:
            counts.add(int(match.group(2)))
    if not counts:
        raise ShardError(f"no shard CSVs (predictions.shard-<i>-of-<N>.csv) in {folder}")
    if len(counts) > 1:
        raise ShardError(
            f"{folder} holds shard CSVs of several runs (num_shards "
            f"{', '.join(map(str, sorted(counts)))}): pass --num-shards"
        )
    return counts.pop()


def _resume_hint(shard: int, num_shards: int, folder: Path, info: dict[str, Any] | None) -> str:
    source = info.get("input") if info else None
    return (
        f"python predict.py input={source or '<input>'} output={folder} shard={shard} "
        f"num_shards={num_shards} resume=true"
    )


def _count_rows(path: Path) -> tuple[list[str], int]:
    """(header, number of records) of a CSV, read as the csv module reads it; a JSON Lines
    file has no header and one record per non-empty line."""
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return [], sum(1 for line in fh if line.strip())
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        return header, sum(1 for row in reader if row)


def check_shards(
    folder: str | os.PathLike[str], num_shards: int | None = None, suffix: str = ".csv"
) -> list[Path]:
    """The shard files of ``folder`` in shard order, each verified complete; raises
    :class:`ShardError` naming the first shard that is missing or incomplete."""
    folder = Path(folder)
    num_shards = num_shards or find_num_shards(folder, suffix)
    if num_shards < 2:
        raise ShardError(f"num_shards={num_shards}: nothing to merge ({folder / CSV_NAME})")
    paths = []
    header: list[str] | None = None
    for shard in range(num_shards):
        path = folder / csv_name(shard, num_shards, suffix)
        info = read_done(path)
        hint = _resume_hint(shard, num_shards, folder, info)
        if not path.is_file():
            raise ShardError(
                f"shard {shard} of {num_shards} is missing: no {path}. Run it:\n  {hint}"
            )
        if info is None:
            raise ShardError(
                f"shard {shard} of {num_shards} is incomplete: {path} has no completion "
                f"marker {done_path(path).name} (its job was killed, failed or is still "
                f"running). Finish it:\n  {hint}"
            )
        found, rows = _count_rows(path)
        if rows != info.get("rows") or found != info.get("columns"):
            raise ShardError(
                f"shard {shard} of {num_shards} changed after it finished: {path} has "
                f"{rows} rows, its marker says {info.get('rows')}. Run it again:\n  {hint}"
            )
        if header is not None and found != header:
            raise ShardError(
                f"shard {shard} of {num_shards} has other columns than shard 0 ({path}): "
                "were they run with different save_probs?"
            )
        header = found
        paths.append(path)
    return paths


def merge_shards(
    folder: str | os.PathLike[str],
    num_shards: int | None = None,
    output: str | os.PathLike[str] | None = None,
    suffix: str = ".csv",
) -> tuple[Path, int]:
    """Write ``output`` (default ``folder``/predictions.csv, or ``.jsonl`` with that
    ``suffix``) from the complete shards of ``folder``; returns (path, data rows)."""
    folder = Path(folder)
    paths = check_shards(folder, num_shards, suffix)
    target = Path(output) if output else folder / csv_name(0, 1, suffix)
    rows = sum(read_done(p)["rows"] for p in paths)  # type: ignore[index]

    def write(out: Any) -> None:
        for i, path in enumerate(paths):
            with open(path, "rb") as fh:
                if suffix == ".csv":  # one header, shard 0's
                    header = fh.readline()
                    if i == 0:
                        out.write(header)
                while block := fh.read(1 << 20):
                    out.write(block)

    atomic_write(target, write)
    return target, rows


class MergeShardsCallback(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/predict.yaml): after a multirun whose jobs
    are shards (``num_shards`` > 1), merge them into ``output``/predictions.csv.

    A missing or incomplete shard (a failed job) is logged with the command that completes
    it, and the finished shard CSVs stay as they are: nothing is lost by not merging."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        num_shards = int(config.get("num_shards", 1) or 1)
        if num_shards < 2:
            return
        folder = Path(str(config.output))
        suffix = "." + str(config.get("format", "csv"))
        try:
            path, rows = merge_shards(folder, num_shards, suffix=suffix)
        except ShardError as exc:
            log.error("shards not merged: %s", exc)
            print(f"merge: shards not merged: {exc}", file=sys.stderr)
            return
        print(f"merge: {num_shards} shards, {rows} rows -> {path}")


@handled("merge")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.inference.merge",
        description="Merge the shard CSVs of a sharded predict.py run into predictions.csv.",
    )
    parser.add_argument("folder", type=Path, help="the output folder the shards share")
    parser.add_argument("--num-shards", type=int, default=None, help="N (default: found)")
    parser.add_argument("--output", type=Path, default=None, help="default FOLDER/predictions.csv")
    parser.add_argument(
        "--format", choices=("csv", "jsonl"), default="csv", help="the shards' format=..."
    )
    args = parser.parse_args(argv)
    path, rows = merge_shards(args.folder, args.num_shards, args.output, "." + args.format)
    print(f"merge: {rows} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
