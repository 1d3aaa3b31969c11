"""predictions.csv: the column contract of DESIGN.md, written row by row as results arrive."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TextIO

import numpy as np

from agegender.inference.pipeline import ImageResult
from agegender.labels import AGE_BUCKETS, GENDERS

COLUMNS: tuple[str, ...] = (
    "path",
    "face",
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


def result_rows(result: ImageResult, save_probs: bool = False) -> list[dict[str, object]]:
    """One row per face, or a single ``no_face`` / ``error: ...`` row for the input."""
    if not result.faces:
        row: dict[str, object] = dict.fromkeys(COLUMNS, "")
        row.update(path=result.item.path, status=result.status)
        if save_probs:
            row.update(dict.fromkeys(PROB_COLUMNS, ""))
        return [row]
    rows = []
    for i, face in enumerate(result.faces):
        x1, y1, x2, y2 = face.box
        row = {
            "path": result.item.path,
            "face": i,
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
                if save_probs:
                    row.update(dict.fromkeys((c for c in PROB_COLUMNS if task in c), ""))
                continue
            best = int(np.argmax(probs[i]))
            row[task] = LABELS[task][best]
            row[f"{task}_prob"] = round(float(probs[i][best]), 4)
            if save_probs:
                for k, p in enumerate(probs[i]):
                    row[f"p_{task}_{k}"] = round(float(p), 6)
        row["status"] = "ok"
        rows.append(row)
    return rows


class PredictionWriter:
    """Streams rows to ``path`` (flushed per input, so an interrupted run keeps its rows)."""

    def __init__(self, path: str | os.PathLike[str], save_probs: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save_probs = save_probs
        self.columns = COLUMNS + (PROB_COLUMNS if save_probs else ())
        self._file: TextIO = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()

    def write(self, result: ImageResult) -> None:
        self._writer.writerows(result_rows(result, self.save_probs))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
