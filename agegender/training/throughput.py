"""How fast a training run goes, and whether it waits for its data: a Lightning callback.

Between two training steps the trainer asks the loader for the next batch; on a GPU that
wait is what a too-slow loader (decoding, augmentation, too few workers) costs. The clock
times each step after a warm-up: the wait for its batch (from the end of the previous step
to the start of this one) and the step itself (forward, backward, optimiser; synchronised
with the GPU so queued kernels are counted where they run).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch


class StepClock(pl.Callback):
    """Per-step data wait and compute time after ``warmup`` steps; faces per step."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = int(warmup)
        self.waits: list[float] = []
        self.computes: list[float] = []
        self.faces = 0
        self._seen = 0
        self._start: float | None = None
        self._last_end: float | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._seen >= self.warmup and self._last_end is not None:
            self.waits.append(now - self._last_end)
        self._start = now

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        now = time.perf_counter()
        if self._seen >= self.warmup and self._start is not None and self.waits:
            self.computes.append(now - self._start)
            self.faces += batch_size(batch)
        self._seen += 1
        self._last_end = now

    @property
    def steps(self) -> int:
        return len(self.computes)

    @property
    def seconds(self) -> float:
        return sum(self.waits[: self.steps]) + sum(self.computes)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def faces_per_second(self) -> float:
        return self.faces / self.seconds if self.seconds > 0 else 0.0

    @property
    def waiting_share(self) -> float:
        """Share of the measured time spent waiting for batches (0: never, 1: always)."""
        return sum(self.waits[: self.steps]) / self.seconds if self.seconds > 0 else 0.0


def batch_size(batch: Any) -> int:
    """Faces in a training batch: a joint batch (``image``) or per-task batches."""
    if isinstance(batch, Mapping):
        if "image" in batch:
            return int(batch["image"].shape[0])
        return sum(batch_size(b) for b in batch.values())
    if isinstance(batch, (list, tuple)) and batch:
        return batch_size(batch[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 0
