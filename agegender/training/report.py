"""What a run leaves on disk: ``metrics.json`` (flat name -> float, the training contract of
docs/contracts.md, read by the CV aggregation) and one confusion-matrix PNG per stage and task."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def write_metrics_json(metrics: Mapping[str, float], path: str | Path) -> Path:
    """Write sorted, finite floats; a NaN/inf would make the file unreadable to strict JSON."""
    clean = {}
    for key, value in sorted(metrics.items()):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metric {key} is not finite: {value}")
        clean[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n")
    tmp.replace(path)  # atomic: an aggregator never reads half a file
    return path


def plot_confusion(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    title: str,
    path: str | Path,
) -> Path:
    """Row-normalised confusion matrix (rows = true class) with the raw counts in each cell."""
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix {counts.shape} does not match {len(class_names)} classes")
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = 1.2 + 0.6 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right")
        ax.set_yticks(ticks, class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
