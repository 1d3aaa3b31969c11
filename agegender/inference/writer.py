"""The one prediction file of a run, written input by input as results arrive, and resumed.

:class:`PredictionWriter` holds what every format shares (one ``os.write`` per input, the
resume rules: header check, torn-tail repair, the paths already done); the formats are its
subclasses: :class:`agegender.inference.csv_writer.CsvWriter` (predictions.csv) and
:class:`agegender.inference.jsonl_writer.JsonlWriter` (predictions.jsonl).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agegender.errors import AgeGenderError
from agegender.inference.results import ImageResult
from agegender.labels import ADIENCE8, LabelSet


class ResumeError(AgeGenderError, ValueError):
    """``resume=true`` on a CSV this run cannot continue (other columns): mixing two column
    layouts in one file would corrupt it for every reader, so the run stops before any work."""


class PredictionWriter:
    """Appends each input's records to ``path`` with ONE ``os.write`` of the whole text.

    The file descriptor is unbuffered, so a row is in the file (the page cache) as soon as
    :meth:`write` returns and a SIGKILL can lose only the input being written, never leave
    half of an earlier one. Rows of a partly written input can only be the file's tail.

    ``resume=True`` continues an existing file instead of replacing it (see
    :meth:`_continue`): :attr:`done` holds the ``path`` values already in the file, which the
    caller skips, so no input appears twice. It is read once and not updated while writing,
    so memory stays flat over a long run. :attr:`rows` counts the data rows in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        save_probs: bool = False,
        resume: bool = False,
        labels: LabelSet | None = None,
        expected_age: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save_probs = save_probs
        self.labels = labels or ADIENCE8
        self.expected_age = expected_age
        self.columns, self.header = self.layout(save_probs)
        self.done: set[str] = set()
        self.rows = 0
        #: What resuming found and repaired, for the run's closing message (empty: nothing).
        self.repairs: list[str] = []
        append = resume and self.path.is_file() and self._continue()
        flags = os.O_WRONLY | (os.O_APPEND if append else os.O_CREAT | os.O_TRUNC)
        self._fd: int | None = os.open(self.path, flags, 0o666)
        if not append:
            self._write_all(self.header.encode())

    def layout(self, save_probs: bool) -> tuple[tuple[str, ...], str]:
        """(columns, header line) of a file written with ``save_probs`` (and this writer's
        label set and ``expected_age``); the format's part."""
        raise NotImplementedError

    def write(self, result: ImageResult) -> None:
        """Append the records of one input (its faces, or its one no-face/error record)."""
        records = self.records(result)
        self._write_all("".join(records).encode("utf-8"))
        self.rows += len(records)

    def records(self, result: ImageResult) -> list[str]:
        """The text of each record of one input, line ends included (the format's part)."""
        raise NotImplementedError

    def _write_all(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        # One write(2) per input; the loop only matters if the kernel accepts part of it
        # (a full disk raises instead, leaving a torn tail that resume repairs).
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _continue(self) -> bool:
        """Check the header, cut a torn tail, and read which paths are already done; False
        when there is nothing to continue (empty file, or no complete header line).

        - header other than this run's columns (``save_probs`` changed, an older layout):
          :class:`ResumeError`, file untouched;
        - no complete header line (killed while creating the file): started afresh;
        - a last line without its final newline (killed mid-write) is cut off; if that torn
          fragment may belong to the input of the rows before it (same ``path`` prefix), that
          input's rows go too, because a torn write can have left only some of its faces.
          Either way the input is predicted again, so nothing is lost or duplicated.
        """
        with open(self.path, "r+b") as fh:
            start = self._check_header(fh)
            if start is None:
                return False
            end = self._complete_end(fh, start)
            fh.seek(end)
            fragment = fh.read().decode("utf-8", errors="replace")
            fh.seek(start)
            last_path, last_start, last_count = self._read_done(fh, start, end)
            cut = end
            if fragment:
                self.repairs.append(f"torn last line cut ({len(fragment)} characters)")
                if last_path is not None:
                    prefix = self._record_prefix(last_path)
                    if fragment.startswith(prefix) or prefix.startswith(fragment):
                        cut = last_start
                        self.done.discard(last_path)
                        self.rows -= last_count
                        self.repairs.append(f"rows of {last_path} dropped to be redone")
            if cut < fh.seek(0, os.SEEK_END):
                fh.truncate(cut)
        return True

    def _complete_end(self, fh: BinaryIO, start: int) -> int:
        """Offset just after the last complete record (a torn write leaves a tail after
        it): the file's last newline, unless the format lets a record span lines."""
        return max(start, _complete_end(fh))

    def _check_header(self, fh: BinaryIO) -> int | None:
        """The offset the records start at, or None to start afresh (no complete header);
        :class:`ResumeError` for other columns."""
        first = fh.readline()
        if not first.endswith(b"\n"):
            if first:
                self.repairs.append("torn header rewritten")
            return None
        found = first.decode("utf-8", errors="replace").rstrip("\r\n")
        if found != self.header.rstrip("\r\n"):
            raise ResumeError(
                f"cannot resume {self.path}: its columns are\n  {found}\nbut this run "
                f"writes\n  {self.header.rstrip()}\n(save_probs={self.save_probs}; a "
                "setting changed?). Resume with the settings of the first run, write to "
                "another output, or run without resume=true to start the file afresh."
            )
        return len(first)

    def _record_prefix(self, path: str) -> str:
        """How a record of ``path`` starts (a torn fragment that matches may be its input's)."""
        raise NotImplementedError

    def _records(self, fh: BinaryIO, start: int, end: int) -> Iterator[tuple[int, str]]:
        """(offset, path) of every record between ``start`` and ``end``."""
        raise NotImplementedError

    def _read_done(self, fh: BinaryIO, start: int, end: int) -> tuple[str | None, int, int]:
        """Fill :attr:`done` and :attr:`rows` from the records between ``start`` and ``end``;
        returns the last record's path, the offset its input's rows start at, their count."""
        last_path: str | None = None
        last_start, last_count = start, 0
        for record_start, path in self._records(fh, start, end):
            self.rows += 1
            if path != last_path:
                last_path, last_start, last_count = path, record_start, 0
            last_count += 1
            self.done.add(path)
        return last_path, last_start, last_count

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _complete_end(fh: BinaryIO, chunk: int = 1 << 16) -> int:
    """Offset just after the file's last newline (0 if none), scanning back from the end."""
    end = fh.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - chunk)
        fh.seek(start)
        block = fh.read(end - start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


class NullWriter:
    """``privacy=true``: the writer's interface with nothing written and nothing kept (no
    file is created; the faces only reach the audience counters)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.done: set[str] = set()
        self.rows = 0
        self.columns: tuple[str, ...] = ()
        self.repairs: list[str] = []

    def write(self, result: ImageResult) -> None:
        """Nothing: a privacy run writes no per-face record."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
