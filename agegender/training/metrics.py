"""Task metrics, all derived from one confusion matrix per task and stage.

The only state is a torchmetrics ``MulticlassConfusionMatrix`` per task (rows = true class,
columns = prediction), which sums across DDP processes. At epoch end every figure comes from
it: exact accuracy (trace / total), for age the paper's 1-off accuracy (cells with
``|true - predicted| <= 1``, i.e. the true bucket or an adjacent one, over total: with any
label set, one class away in the set's order, e.g. teen for child in coarse3), the
per-class accuracy (recall per bucket: diagonal / row sum) and the count (total).

Callers pass only the samples labelled for that task (masking happens before ``update``, so an
unlabelled sample cannot count as right or wrong); the matrix also ignores
:data:`~agegender.labels.IGNORE_INDEX` targets should one get through.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from agegender.labels import ADIENCE8, IGNORE_INDEX, LabelSet

#: The adience8 class names (a run with another label set uses ``labels.class_names``).
CLASS_NAMES: dict[str, tuple[str, ...]] = ADIENCE8.class_names

#: Tasks with ordinal classes, which get an ``_acc_1off`` figure (the paper's age 1-off).
ONE_OFF_TASKS: frozenset[str] = frozenset({"age"})


def confusion_scalars(
    task: str,
    matrix: torch.Tensor,
    prefix: str,
    tolerance: int = 1,
    names: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """The figures of one task from its (true x predicted) count matrix; ``{}`` if empty.

    Keys ``{prefix}/{task}_acc``, ``_acc_1off`` (ordinal tasks), ``_acc_class/<name>`` (classes
    with at least one sample only) and ``_count``. Ratios are taken in float32, as torchmetrics
    computes them, so the figures are those of the former per-metric objects bit for bit.
    ``names``: the classes in order (default adience8's :data:`CLASS_NAMES`).
    """
    matrix = matrix.detach().cpu().to(torch.int64)
    total = int(matrix.sum())
    if total == 0:
        return {}
    counts = matrix.to(torch.float32)  # exact for counts below 2**24
    n = counts.sum()
    scalars = {f"{prefix}/{task}_acc": float(counts.trace() / n)}
    if task in ONE_OFF_TASKS:
        idx = torch.arange(matrix.shape[0])
        near = (idx[:, None] - idx[None, :]).abs() <= tolerance
        scalars[f"{prefix}/{task}_acc_1off"] = float(counts[near].sum() / n)
    support = counts.sum(dim=1)
    names = CLASS_NAMES[task] if names is None else names
    if len(names) != matrix.shape[0]:
        raise ValueError(f"{task}: {matrix.shape[0]} classes in the matrix, {len(names)} names")
    for i, name in enumerate(names):
        if support[i] > 0:
            scalars[f"{prefix}/{task}_acc_class/{name}"] = float(counts[i, i] / support[i])
    scalars[f"{prefix}/{task}_count"] = float(total)
    return scalars


class StageMetrics(nn.Module):
    """One confusion matrix per task, for one stage (val, test, test_10crop), sized and
    named by the run's label set (default adience8)."""

    def __init__(self, tasks: tuple[str, ...], labels: LabelSet | None = None) -> None:
        super().__init__()
        self.labels = labels or ADIENCE8
        sizes = self.labels.num_classes
        self.tasks = nn.ModuleDict(
            {t: MulticlassConfusionMatrix(sizes[t], ignore_index=IGNORE_INDEX) for t in tasks}
        )

    def update(self, task: str, scores: torch.Tensor, target: torch.Tensor) -> None:
        """``scores``: N x C (logits or probabilities; argmax taken) or N class indices."""
        if target.numel():
            self.tasks[task].update(scores, target)

    def compute_and_reset(self, prefix: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Scalars keyed ``{prefix}/{task}_acc`` etc. (interface 7) and confusion matrices.

        A task with no labelled sample in this stage reports nothing (rather than a made-up 0).
        ``{prefix}/acc`` is the mean of the reported tasks' exact accuracies.
        """
        scalars: dict[str, float] = {}
        confusion: dict[str, torch.Tensor] = {}
        for task, metric in self.tasks.items():
            # compute() before any test on the counts: it is the collective that syncs DDP
            # ranks, so every rank must call it, whatever its local share of labels.
            with warnings.catch_warnings():
                # a rank (or stage) that saw no labelled sample is legitimate, not a bug
                warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                matrix = metric.compute().cpu()
            metric.reset()
            names = self.labels.class_names[task]
            figures = confusion_scalars(task, matrix, prefix, names=names)
            if figures:
                scalars.update(figures)
                confusion[task] = matrix
        accs = [scalars[f"{prefix}/{t}_acc"] for t in self.tasks if f"{prefix}/{t}_acc" in scalars]
        if accs:
            scalars[f"{prefix}/acc"] = sum(accs) / len(accs)
        return scalars, confusion
