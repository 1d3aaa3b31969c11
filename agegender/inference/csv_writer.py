"""predictions.csv: the column contract (docs/contracts.md), one row per face, or one row for
an input without a face or with an error. Every column list comes from the label set."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import BinaryIO

from agegender.fileio import from_spreadsheet_safe, spreadsheet_safe
from agegender.inference.results import TASKS, ImageResult, expected_years
from agegender.inference.writer import PredictionWriter
from agegender.labels import ADIENCE8, LabelSet

COLUMNS: tuple[str, ...] = (
    "path",
    "face",
    # video and stream frames: the face's track id (agegender.inference.tracking)
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
#: With ``expected_age=true``: the probability-weighted mean of the age classes' midpoints in
#: years (:attr:`agegender.labels.LabelSet.midpoints`), an estimate, not a measurement.
EXPECTED_AGE_COLUMN = "age_years_estimate"


def prob_columns(labels: LabelSet | None = None) -> tuple[str, ...]:
    """``save_probs`` columns of a label set: ``p_age_0..p_age_<n-1>, p_gender_0, p_gender_1``
    (class order of the set)."""
    labels = labels or ADIENCE8
    return tuple(f"p_{task}_{i}" for task in TASKS for i in range(len(labels.class_names[task])))


#: The adience8 probability columns (the original weights' eight buckets).
PROB_COLUMNS: tuple[str, ...] = prob_columns(ADIENCE8)


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
) -> list[dict[str, object]]:
    """One row per face, or a single ``no_face`` / ``error: ...`` row for the input, with
    the columns of :func:`prediction_columns` (``labels``: default the result's own). The
    path is :func:`~agegender.fileio.spreadsheet_safe`: a spreadsheet never evaluates it."""
    labels = labels or result.labels
    columns = prediction_columns(save_probs, labels, expected_age)
    path = spreadsheet_safe(result.item.path)  # a name such as =HYPERLINK(...).jpg
    if not result.faces:
        row: dict[str, object] = dict.fromkeys(columns, "")
        row.update(path=path, status=result.status)
        return [row]
    rows = []
    for i, face in enumerate(result.faces):
        row = dict.fromkeys(columns, "")
        track = result.track_of(i)
        x1, y1, x2, y2 = face.box
        row.update(
            path=path,
            face=i,
            track="" if track is None else track,
            x1=round(x1, 1),
            y1=round(y1, 1),
            x2=round(x2, 1),
            y2=round(y2, 1),
            det_score=round(face.score, 4),
            status=face.status,
        )
        for task in TASKS:
            probs = face.probs(task)
            if probs is None:  # a model trained without this head: empty cells
                continue
            label = getattr(face, task)  # None when the face abstained on this task
            row[task] = "" if label is None else label
            row[f"{task}_prob"] = round(float(getattr(face, f"{task}_prob")), 4)
            if save_probs:
                row.update({f"p_{task}_{k}": round(float(p), 6) for k, p in enumerate(probs)})
        if expected_age:
            years = expected_years(face, labels)
            row[EXPECTED_AGE_COLUMN] = "" if years is None else years
        rows.append(row)
    return rows


def csv_field(value: str) -> str:
    """``value`` as the csv module writes it as a field (quoted when it holds , " or a newline)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()


class CsvWriter(PredictionWriter):
    """predictions.csv (CR LF line ends, as :mod:`csv` writes by default)."""

    def layout(self, save_probs: bool) -> tuple[tuple[str, ...], str]:
        columns = prediction_columns(save_probs, self.labels, self.expected_age)
        return columns, ",".join(columns) + "\r\n"

    def records(self, result: ImageResult) -> list[str]:
        out = []
        for row in result_rows(result, self.save_probs, self.labels, self.expected_age):
            buffer = io.StringIO()
            csv.DictWriter(buffer, fieldnames=self.columns).writerow(row)
            out.append(buffer.getvalue())
        return out

    def _record_prefix(self, path: str) -> str:
        return csv_field(spreadsheet_safe(path)) + ","

    def _complete_end(self, fh: BinaryIO, start: int) -> int:
        """A quoted field may hold a newline (a file named ``b\\nc.jpg``): a record ends at
        a newline outside quotes, so a write torn inside such a field is cut whole."""
        end = super()._complete_end(fh, start)
        fh.seek(start)
        quoted, complete, pos = False, start, start
        for line in fh.read(end - start).splitlines(keepends=True):
            pos += len(line)
            quoted ^= line.count(b'"') % 2 == 1
            if not quoted:
                complete = pos
        return complete

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
                yield record_start, from_spreadsheet_safe(row[0])
