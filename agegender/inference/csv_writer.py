"""predictions.csv (the column contract of DESIGN.md) or predictions.jsonl, written input by
input as results arrive."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from agegender.inference.pipeline import ImageResult
from agegender.labels import ADIENCE8, AGE_BUCKETS, GENDERS, LabelSet

COLUMNS: tuple[str, ...] = (
    "path",
    "face",
    # video frames: the face's track id (agegender.inference.tracking); empty otherwise
    "track",
    "x1",
    "y1",
    "x2",
    "y2",
    "det_score",
    "age",
    "age_prob",
    "gender",
    "gender_prob",
    "status",
)
#: Extra columns with ``save_probs=true`` (age buckets and genders in logit order).
PROB_COLUMNS: tuple[str, ...] = tuple(f"p_age_{i}" for i in range(len(AGE_BUCKETS))) + tuple(
    f"p_gender_{i}" for i in range(len(GENDERS))
)
LABELS: dict[str, tuple[str, ...]] = {"age": AGE_BUCKETS, "gender": GENDERS}
#: With ``expected_age=true``: the probability-weighted mean of the age classes' midpoints in
#: years (:attr:`agegender.labels.LabelSet.midpoints`), an estimate, not a measurement.
EXPECTED_AGE_COLUMN = "age_years_estimate"


def expected_years(age_probs: np.ndarray, labels: LabelSet) -> float:
    """``age_years_estimate`` of one face: its age probabilities times the classes' midpoints
    (:attr:`agegender.labels.LabelSet.midpoints`), rounded to 0.1 year: an estimate."""
    return round(float(np.dot(age_probs, np.asarray(labels.midpoints, dtype=np.float64))), 1)


def prob_columns(labels: LabelSet | None = None) -> tuple[str, ...]:
    """``save_probs`` columns for a label set: ``p_age_0..p_age_<n-1>, p_gender_0, p_gender_1``
    (:data:`PROB_COLUMNS` for adience8)."""
    labels = labels or ADIENCE8
    return tuple(f"p_age_{i}" for i in range(len(labels.age))) + tuple(
        f"p_gender_{i}" for i in range(len(labels.genders))
    )


def prediction_columns(
    save_probs: bool = False, labels: LabelSet | None = None, expected_age: bool = False
) -> tuple[str, ...]:
    """The header of a run: :data:`COLUMNS`, then ``age_years_estimate`` with
    ``expected_age``, then the probability columns with ``save_probs``."""
    extra = (EXPECTED_AGE_COLUMN,) if expected_age else ()
    return COLUMNS + extra + (prob_columns(labels) if save_probs else ())


def result_rows(
    result: ImageResult,
    save_probs: bool = False,
    labels: LabelSet | None = None,
    expected_age: bool = False,
    tracks: Sequence[int | None] | None = None,
) -> list[dict[str, object]]:
    """One row per face, or a single ``no_face`` / ``error: ...`` row for the input.
    ``labels``: the label set the age probabilities are over (default adience8);
    ``tracks``: the track id of each face of a video frame (None: no track)."""
    labels = labels or ADIENCE8
    names = labels.class_names
    if not result.faces:
        row: dict[str, object] = dict.fromkeys(COLUMNS, "")
        row.update(path=result.item.path, status=result.status)
        if expected_age:
            row[EXPECTED_AGE_COLUMN] = ""
        if save_probs:
            row.update(dict.fromkeys(prob_columns(labels), ""))
        return [row]
    rows = []
    for i, face in enumerate(result.faces):
        x1, y1, x2, y2 = face.box
        row = {
            "path": result.item.path,
            "face": i,
            "track": "" if not tracks or tracks[i] is None else tracks[i],
            "x1": round(x1, 1),
            "y1": round(y1, 1),
            "x2": round(x2, 1),
            "y2": round(y2, 1),
            "det_score": round(face.score, 4),
        }
        for task in ("age", "gender"):
            probs = result.probs.get(task)
            if probs is None:  # a model trained without this head
                row[task], row[f"{task}_prob"] = "", ""
                if task == "age" and expected_age:
                    row[EXPECTED_AGE_COLUMN] = ""
                if save_probs:
                    row.update(dict.fromkeys((c for c in prob_columns(labels) if task in c), ""))
                continue
            best = int(np.argmax(probs[i]))
            row[task] = names[task][best]
            if task == "age" and expected_age:
                row[EXPECTED_AGE_COLUMN] = expected_years(probs[i], labels)
            row[f"{task}_prob"] = round(float(probs[i][best]), 4)
            if save_probs:
                for k, p in enumerate(probs[i]):
                    row[f"p_{task}_{k}"] = round(float(p), 6)
        row["status"] = "ok"
        rows.append(row)
    return rows


class ResumeError(ValueError):
    """``resume=true`` on a CSV this run cannot continue (other columns): mixing two column
    layouts in one file would corrupt it for every reader, so the run stops before any work."""


def format_rows(
    result: ImageResult,
    columns: tuple[str, ...],
    save_probs: bool,
    labels: LabelSet | None = None,
    expected_age: bool = False,
    tracks: Sequence[int | None] | None = None,
) -> str:
    """The CSV text of one input's rows (CR LF line ends, as :mod:`csv` writes by default)."""
    buffer = io.StringIO()
    rows = result_rows(result, save_probs, labels, expected_age, tracks)
    csv.DictWriter(buffer, fieldnames=columns).writerows(rows)
    return buffer.getvalue()


def csv_field(value: str) -> str:
    """``value`` as the csv module writes it as a field (quoted when it holds , " or a newline)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()


class PredictionWriter:
    """Appends each input's rows to ``path`` with ONE ``os.write`` of the whole text.

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
        label set and ``expected_age``)."""
        columns = prediction_columns(save_probs, self.labels, self.expected_age)
        return columns, ",".join(columns) + "\r\n"

    def write(self, result: ImageResult, tracks: Sequence[int | None] | None = None) -> None:
        text = format_rows(
            result, self.columns, self.save_probs, self.labels, self.expected_age, tracks
        )
        self._write_all(text.encode("utf-8"))
        self.rows += len(result.faces) or 1

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
            end = _complete_end(fh)
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
        return csv_field(path) + ","

    def _records(self, fh: BinaryIO, start: int, end: int) -> Iterator[tuple[int, str]]:
        """(offset, path) of every record between ``start`` and ``end``."""
        pos = start

        def lines() -> Iterator[str]:
            nonlocal pos
            while pos < end:
                raw = fh.readline(end - pos)
                if not raw:
                    return
                pos += len(raw)
                yield raw.decode("utf-8", errors="replace")

        reader = csv.reader(lines())
        while True:
            record_start = pos
            row = next(reader, None)
            if row is None:
                return
            if row:
                yield record_start, row[0]

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


class JsonlWriter(PredictionWriter):
    """predictions.jsonl (``format=jsonl``): one JSON object per line, one per face (the
    API's :meth:`agegender.api.FaceResult.to_dict` plus ``path``, ``face`` and ``status``),
    or one ``{"path", "status"}`` object for an input without a face or with an error.

    The same guarantees as the CSV: one ``os.write`` per input, ``resume`` keeps the objects
    already written, cuts a torn last line and redoes its input. ``path`` is always the first
    key, so a torn fragment can be matched to its input without parsing it.
    """

    def layout(self, save_probs: bool) -> tuple[tuple[str, ...], str]:
        # No header: every line is a self-describing object, holding all probabilities
        # whatever save_probs says.
        return (), ""

    def write(self, result: ImageResult, tracks: Sequence[int | None] | None = None) -> None:
        objects = jsonl_objects(result, tracks, self.labels if self.expected_age else None)
        lines = [json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects]
        self._write_all("".join(lines).encode("utf-8"))
        self.rows += len(lines)

    def _check_header(self, fh: BinaryIO) -> int | None:
        return 0  # no header: records from the first byte

    def _record_prefix(self, path: str) -> str:
        return json.dumps({"path": path}, ensure_ascii=False)[:-1] + ","

    def _records(self, fh: BinaryIO, start: int, end: int) -> Iterator[tuple[int, str]]:
        pos = start
        while pos < end:
            raw = fh.readline(end - pos)
            record_start, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            try:
                path = json.loads(raw)["path"]
            except (ValueError, KeyError, TypeError):
                raise ResumeError(
                    f"cannot resume {self.path}: line at byte {record_start} is not an object "
                    'with a "path" (not a predictions.jsonl of agegender?)'
                ) from None
            yield record_start, path


def jsonl_objects(
    result: ImageResult,
    tracks: Sequence[int | None] | None = None,
    expected_age: LabelSet | None = None,
) -> list[dict[str, object]]:
    """The JSON Lines objects of one input (see :class:`JsonlWriter`); video and stream
    frames add ``track`` (the CSV's column: an id, or null for an unconfirmed face);
    ``expected_age``: the label set whose midpoints give ``age_years_estimate``."""
    if not result.faces:
        return [{"path": result.item.path, "status": result.status}]
    from agegender.api import face_results

    age = result.probs.get("age")
    objects: list[dict[str, object]] = []
    for i, face in enumerate(face_results(result)):
        obj: dict[str, object] = {"path": result.item.path, "face": i, **face.to_dict()}
        if expected_age is not None and age is not None:
            obj[EXPECTED_AGE_COLUMN] = expected_years(age[i], expected_age)
        obj["status"] = "ok"
        objects.append(obj)
    if tracks is not None:
        for obj, track in zip(objects, tracks, strict=True):
            obj["track"] = track
    return objects


#: ``format=`` of predict.py: the writer class and the file suffix.
WRITERS: dict[str, tuple[type[PredictionWriter], str]] = {
    "csv": (PredictionWriter, ".csv"),
    "jsonl": (JsonlWriter, ".jsonl"),
}
