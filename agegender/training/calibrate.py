"""Temperature scaling as train.py fits it, its figures, and the per-face test predictions.

After the evaluated checkpoint's validation pass (centre crop), one temperature per task is
fitted on the validation faces' probabilities (:func:`agegender.calibration.fit_temperature`,
minimum negative log-likelihood) and stored in that checkpoint; the test folds then tell
how well it transfers to held-out faces: ``metrics.json`` gets each stage's expected
calibration error and NLL before and after the temperature (``<stage>/<task>_ece``,
``_ece_calibrated``, ``_nll``, ``_nll_calibrated``) and ``calibration/<task>_temperature``.

A temperature never changes the most probable class of one crop, so the accuracies stay as
they are. With 10-crop over-sampling the temperature is applied to each crop before the
crops' probabilities are averaged (what a calibrated model does at prediction time), which
can move an average's argmax: the reported ``test_10crop`` accuracies stay the uncalibrated
ones, comparable with the paper and with runs made before calibration existed.

``test_predictions.csv`` holds every labelled test face's uncalibrated probabilities per
protocol, for analyses that need faces rather than totals (cross-validation intervals over
subjects, per-group accuracy); see docs/contracts.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.calibration import (
    DEFAULT_BINS,
    apply_temperature,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from agegender.fileio import atomic_write
from agegender.labels import IGNORE_INDEX, TASK_NUM_CLASSES

log = logging.getLogger(__name__)

#: File name of the per-face test predictions in the run directory.
PREDICTIONS_FILE = "test_predictions.csv"
#: Evaluation stages, in the order they are reported; the test protocols are the CSV's.
STAGES: tuple[str, ...] = ("val", "test", "test_10crop")
TEST_STAGES: tuple[str, ...] = ("test", "test_10crop")
#: Decimals of the probabilities in ``test_predictions.csv``.
DECIMALS = 6

Predictions = Mapping[str, np.ndarray]


def prediction_columns(num_classes: Mapping[str, int]) -> list[str]:
    """The header of ``test_predictions.csv`` for a network with these task sizes (tasks
    in :data:`~agegender.labels.TASK_NUM_CLASSES` order; a task the network does not
    predict has no ``p_`` columns)."""
    probs = [
        f"p_{t}_{i}" for t in TASK_NUM_CLASSES if t in num_classes for i in range(num_classes[t])
    ]
    return ["stage", "row", "subject", *TASK_NUM_CLASSES, *probs]


def scaled_probabilities(predictions: Predictions, task: str, temperature: float) -> np.ndarray:
    """The stage's probabilities of ``task`` after ``temperature``: each crop's when the
    stage kept crops (10-crop, then averaged over the crops, as at prediction time), else
    the faces' own."""
    if temperature == 1.0:
        return predictions[f"probs_{task}"]
    crops = predictions.get(f"crops_{task}")
    if crops is None:
        return apply_temperature(predictions[f"probs_{task}"], temperature)
    n, k, c = crops.shape
    return apply_temperature(crops.reshape(n * k, c), temperature).reshape(n, k, c).mean(axis=1)


def _labelled(predictions: Predictions | None, task: str) -> int:
    if not predictions or f"probs_{task}" not in predictions:
        return 0
    return int((predictions[f"target_{task}"] != IGNORE_INDEX).sum())


def fit_temperatures(
    val: Predictions | None, tasks: Sequence[str]
) -> tuple[dict[str, float], dict[str, int]]:
    """(task -> temperature, task -> labelled faces it was fitted on) from the validation
    predictions; a task without a labelled validation face gets none (a warning says so)."""
    temperatures, faces = {}, {}
    for task in tasks:
        n = _labelled(val, task)
        if not n:
            log.warning(
                "calibration: no labelled %s face in the validation split, no temperature", task
            )
            continue
        temperatures[task] = fit_temperature(val[f"probs_{task}"], val[f"target_{task}"])
        faces[task] = n
        log.info(
            "calibration: %s temperature %.4f fitted on %d validation faces",
            task,
            temperatures[task],
            n,
        )
    return temperatures, faces


def run_record(
    temperatures: Mapping[str, float], faces: Mapping[str, int], run: str | Path
) -> dict[str, Any] | None:
    """The checkpoint's calibration record (None without any temperature)."""
    if not temperatures:
        return None
    return calibration_record(temperatures, f"validation split of {run}", faces)


def calibration_figures(
    predictions: Mapping[str, Predictions],
    tasks: Sequence[str],
    temperatures: Mapping[str, float],
    bins: int = DEFAULT_BINS,
) -> dict[str, float]:
    """The metrics.json figures: ``calibration/<task>_temperature`` and, per stage and task
    with labelled faces, ``_ece`` and ``_nll`` of the uncalibrated probabilities and, when
    the task has a temperature, ``_ece_calibrated`` and ``_nll_calibrated``."""
    figures = {f"calibration/{t}_temperature": float(v) for t, v in temperatures.items()}
    for stage in STAGES:
        stage_predictions = predictions.get(stage)
        for task in tasks:
            if not _labelled(stage_predictions, task):
                continue
            targets = stage_predictions[f"target_{task}"]
            probs = stage_predictions[f"probs_{task}"]
            figures[f"{stage}/{task}_ece"] = expected_calibration_error(probs, targets, bins)
            figures[f"{stage}/{task}_nll"] = negative_log_likelihood(probs, targets)
            if task in temperatures:
                scaled = scaled_probabilities(stage_predictions, task, temperatures[task])
                figures[f"{stage}/{task}_ece_calibrated"] = expected_calibration_error(
                    scaled, targets, bins
                )
                figures[f"{stage}/{task}_nll_calibrated"] = negative_log_likelihood(scaled, targets)
    return figures


def predictions_table(
    predictions: Mapping[str, Predictions],
    num_classes: Mapping[str, int],
    subjects: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """One row per test face labelled for at least one of the network's tasks
    (``num_classes``) and per test protocol, in the columns of :func:`prediction_columns`.
    ``subjects``: the test split's subject per row (None: empty)."""
    frames = []
    subject_of = None if subjects is None else np.asarray(subjects, dtype=object)
    for stage in TEST_STAGES:
        stage_predictions = predictions.get(stage)
        if not stage_predictions:
            continue
        rows = stage_predictions["row"]
        labelled = np.zeros(len(rows), dtype=bool)
        for task in num_classes:
            labelled |= stage_predictions[f"target_{task}"] != IGNORE_INDEX
        frame = {
            "stage": stage,
            "row": rows[labelled],
            "subject": "" if subject_of is None else subject_of[rows[labelled]],
        }
        for task in TASK_NUM_CLASSES:
            target = stage_predictions.get(f"target_{task}")
            frame[task] = IGNORE_INDEX if target is None else target[labelled]
        for task in (t for t in TASK_NUM_CLASSES if t in num_classes):
            probs = stage_predictions[f"probs_{task}"][labelled]
            for i in range(num_classes[task]):
                frame[f"p_{task}_{i}"] = probs[:, i]
        frames.append(pd.DataFrame(frame))
    columns = prediction_columns(num_classes)
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def write_predictions_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """``table`` as CSV, probabilities with :data:`DECIMALS` decimals, replaced atomically."""
    text = table.to_csv(index=False, float_format=f"%.{DECIMALS}f", lineterminator="\n")
    return atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))
