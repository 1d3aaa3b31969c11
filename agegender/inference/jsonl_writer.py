"""predictions.jsonl (``format=jsonl``): one self-describing JSON object per face."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from agegender.inference.csv_writer import EXPECTED_AGE_COLUMN
from agegender.inference.results import ImageResult, expected_years
from agegender.inference.writer import PredictionWriter, ResumeError
from agegender.labels import LabelSet


class JsonlWriter(PredictionWriter):
    """predictions.jsonl (``format=jsonl``): one JSON object per line, one per face (the
    API's :meth:`~agegender.inference.results.FaceResult.to_dict` plus ``path``, ``face``
    and ``status``),
    or one ``{"path", "status"}`` object for an input without a face or with an error.

    The same guarantees as the CSV: one ``os.write`` per input, ``resume`` keeps the objects
    already written, cuts a torn last line and redoes its input. ``path`` is always the first
    key, so a torn fragment can be matched to its input without parsing it.
    """

    def layout(self, save_probs: bool) -> tuple[tuple[str, ...], str]:
        # No header: every line is a self-describing object, holding all probabilities
        # whatever save_probs says.
        return (), ""

    def records(self, result: ImageResult) -> list[str]:
        objects = jsonl_objects(result, self.labels if self.expected_age else None)
        return [json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects]

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
    result: ImageResult, expected_age: LabelSet | None = None
) -> list[dict[str, object]]:
    """The JSON Lines objects of one input (see :class:`JsonlWriter`); video and stream
    frames add ``track`` (the CSV's column: an id, or null for an unconfirmed face);
    ``expected_age``: the label set whose midpoints give ``age_years_estimate``."""
    if not result.faces:
        return [{"path": result.item.path, "status": result.status}]
    objects: list[dict[str, object]] = []
    for i, face in enumerate(result.faces):
        obj: dict[str, object] = {"path": result.item.path, "face": i, **face.to_dict()}
        if expected_age is not None:
            years = expected_years(face, expected_age)
            if years is not None:
                obj[EXPECTED_AGE_COLUMN] = years
        obj["status"] = face.status
        if result.tracks is not None:
            obj["track"] = result.tracks[i]
        objects.append(obj)
    return objects
