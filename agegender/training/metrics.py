"""Task metrics (torchmetrics, so they reduce correctly across DDP processes).

Per task and evaluation stage: exact accuracy, the confusion matrix and from it the
per-class accuracy (recall per bucket); for age also the paper's 1-off accuracy (prediction
in the true bucket or an adjacent one). Callers pass only the samples labelled for that task:
masking happens before ``update``, so an unlabelled sample cannot count as right or wrong.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from agegender.labels import AGE_BUCKETS, GENDERS, TASK_NUM_CLASSES

CLASS_NAMES: dict[str, tuple[str, ...]] = {"age": AGE_BUCKETS, "gender": GENDERS}


class OneOffAccuracy(Metric):
    """Fraction of predictions at most ``tolerance`` buckets from the target (ordinal classes)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, tolerance: int = 1) -> None:
        super().__init__()
        self.tolerance = tolerance
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: N x C scores (logits or probabilities) or N class indices."""
        if preds.ndim == 2:
            preds = preds.argmax(dim=1)
        self.correct += ((preds - target).abs() <= self.tolerance).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


def task_metrics(task: str) -> MetricCollection:
    n = TASK_NUM_CLASSES[task]
    metrics: dict[str, Metric] = {
        "acc": MulticlassAccuracy(n, average="micro"),
        "confmat": MulticlassConfusionMatrix(n),
    }
    if task == "age":
        metrics["acc_1off"] = OneOffAccuracy(1)
    return MetricCollection(metrics, compute_groups=False)


class StageMetrics(nn.Module):
    """One :func:`task_metrics` collection per task, for one stage (val, test, test_10crop)."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict({t: task_metrics(t) for t in tasks})

    def update(self, task: str, scores: torch.Tensor, target: torch.Tensor) -> None:
        if target.numel():
            self.tasks[task].update(scores, target)

    def compute_and_reset(self, prefix: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Scalars keyed ``{prefix}/{task}_acc`` etc. (interface 7) and confusion matrices.

        A task with no labelled sample in this stage reports nothing (rather than a made-up 0).
        """
        scalars: dict[str, float] = {}
        confusion: dict[str, torch.Tensor] = {}
        for task, collection in self.tasks.items():
            # compute() before any test on the counts: it is the collective that syncs DDP
            # ranks, so every rank must call it, whatever its local share of labels.
            with warnings.catch_warnings():
                # a rank (or stage) that saw no labelled sample is legitimate, not a bug
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                values = collection.compute()
            collection.reset()
            seen = int(values["confmat"].sum())
            if seen == 0:
                continue
            scalars[f"{prefix}/{task}_acc"] = float(values["acc"])
            if "acc_1off" in values:
                scalars[f"{prefix}/{task}_acc_1off"] = float(values["acc_1off"])
            matrix = values["confmat"].cpu()
            confusion[task] = matrix
            support = matrix.sum(dim=1)
            for i, name in enumerate(CLASS_NAMES[task]):
                if support[i] > 0:
                    scalars[f"{prefix}/{task}_acc_class/{name}"] = float(matrix[i, i] / support[i])
            scalars[f"{prefix}/{task}_count"] = float(seen)
        accs = [scalars[f"{prefix}/{t}_acc"] for t in self.tasks if f"{prefix}/{t}_acc" in scalars]
        if accs:
            scalars[f"{prefix}/acc"] = sum(accs) / len(accs)
        return scalars, confusion
