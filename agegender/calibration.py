"""Confidence calibration: temperature scaling, expected calibration error, reliability bins.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides a task's logits by one number T > 0 fitted on held-out faces: the most probable
class never changes, only how sure the model says it is. Because ``softmax(log p) = p``,
``softmax(log(p) / T)`` equals ``softmax(logits / T)`` exactly, so a temperature can be
applied to probabilities as well as to logits: the PyTorch classifier divides logits, the
onnxruntime one and the evaluation rescale probabilities, with the same result.

A model's calibration is plain data stored in its checkpoint (``"calibration"``) and in its
exports' metadata: ``{"temperature": {"age": T, "gender": T}, "fitted_on": "...",
"faces": {"age": n, "gender": n}}`` (:func:`calibration_record`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agegender.errors import AgeGenderError

#: Equal-width confidence bins of the expected calibration error and reliability diagrams.
DEFAULT_BINS: int = 15
#: Temperatures searched (log-uniformly bounded): beyond these a model is not calibratable.
TEMPERATURE_RANGE: tuple[float, float] = (0.05, 20.0)
#: The smallest probability taken to a log (a float32 softmax can underflow to 0).
_TINY = 1e-30


class CalibrationError(AgeGenderError, ValueError):
    """A calibration record or fit that cannot be used (the message says why)."""


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row-wise (N x C), in the input's dtype.

    T > 1 softens (less confident), T < 1 sharpens, T = 1 returns the input unchanged."""
    probs = np.asarray(probs)
    if temperature == 1.0:
        return probs
    if not temperature > 0:
        raise CalibrationError(f"a temperature must be > 0, got {temperature}")
    logits = np.log(np.clip(probs.astype(np.float64), _TINY, None)) / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    out /= out.sum(axis=-1, keepdims=True)
    return out.astype(probs.dtype if probs.dtype.kind == "f" else np.float64)


def _labelled(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(targets):
        raise CalibrationError(f"probabilities {probs.shape} do not match {len(targets)} targets")
    keep = targets >= 0  # IGNORE_INDEX rows carry no label
    return probs[keep], targets[keep]


def negative_log_likelihood(
    probs: np.ndarray, targets: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean -log p(true class) after ``temperature`` (what the fit minimises)."""
    probs, targets = _labelled(probs, targets)
    if not len(targets):
        return float("nan")
    scaled = apply_temperature(probs, temperature)
    picked = np.clip(scaled[np.arange(len(targets)), targets], _TINY, None)
    return float(-np.log(picked).mean())


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``targets`` (N class
    indices, -1 = unlabelled, skipped) under ``probs`` (N x C): a bounded 1-D search over
    log T (scipy's Brent method), the standard fit of temperature scaling. Needs at least
    one labelled face; a result on the search's bound is returned as is (the model is then
    far from calibratable by one number, which the report's ECE shows)."""
    from scipy.optimize import minimize_scalar  # deferred: only fits need scipy

    probs, targets = _labelled(probs, targets)
    if not len(targets):
        raise CalibrationError("no labelled face to fit a temperature on")
    log_p = np.log(np.clip(probs, _TINY, None))
    rows = np.arange(len(targets))

    def nll(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, targets] - np.log(np.exp(z).sum(axis=1))).mean())

    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    found = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def reliability_bins(
    probs: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS
) -> list[dict[str, float]]:
    """Top-label reliability: faces binned by their highest probability into ``bins``
    equal-width bins over (0, 1] (a confidence of exactly 1.0 falls in the last bin);
    per bin ``lower``, ``upper``, ``count``, mean ``confidence`` and ``accuracy`` (NaN for
    an empty bin)."""
    probs, targets = _labelled(probs, targets)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == targets) if len(probs) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        out.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "confidence": float(confidence[members].mean()) if n else float("nan"),
                "accuracy": float(correct[members].mean()) if n else float("nan"),
            }
        )
    return out


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS
) -> float:
    """ECE: sum over bins of (faces in bin / faces) x |accuracy - mean confidence|
    (Naeini et al. 2015; equal-width top-label bins, as :func:`reliability_bins`).
    NaN without labelled faces."""
    table = reliability_bins(probs, targets, bins)
    total = sum(b["count"] for b in table)
    if not total:
        return float("nan")
    return float(
        sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]) / total
    )


def calibration_record(
    temperatures: Mapping[str, float], fitted_on: str, faces: Mapping[str, int]
) -> dict[str, Any]:
    """The plain data a checkpoint and an export store (see the module doc)."""
    record = {
        "temperature": {task: float(t) for task, t in temperatures.items()},
        "fitted_on": str(fitted_on),
        "faces": {task: int(n) for task, n in faces.items()},
    }
    return check_calibration(record)


def check_calibration(record: Any) -> dict[str, Any]:
    """``record`` if it is a usable calibration (a mapping with positive finite
    temperatures for age and/or gender), else :class:`CalibrationError`."""
    if not isinstance(record, Mapping) or not isinstance(record.get("temperature"), Mapping):
        raise CalibrationError(f"a calibration record maps 'temperature' to tasks, got {record!r}")
    temps = record["temperature"]
    unknown = set(temps) - {"age", "gender"}
    if unknown or not temps:
        raise CalibrationError(f"calibration temperatures for unknown tasks {sorted(unknown)}")
    for task, value in temps.items():
        if not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
            raise CalibrationError(f"calibration temperature of {task} must be > 0, got {value!r}")
    return dict(record)


def temperatures_of(record: Mapping[str, Any] | None) -> dict[str, float]:
    """Task -> temperature of a stored record (``{}`` for None: an uncalibrated model)."""
    if record is None:
        return {}
    return {task: float(t) for task, t in check_calibration(record)["temperature"].items()}
