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

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat

from agegender.labels import ADIENCE8, IGNORE_INDEX, TASK_NUM_CLASSES, LabelSet

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


class StagePredictions(Metric):
    """Every evaluated face of one stage: its row in the split's table, its targets (-1 =
    unlabelled for that task) and the network's probabilities, kept to fit temperatures and
    to write ``test_predictions.csv`` (:mod:`agegender.training.calibrate`).

    A torchmetrics metric with concatenated list states, so under DDP :meth:`compute` (which
    every rank calls at epoch end, like the confusion matrices) gathers every rank's share
    of uneven size; the result is sorted by row, so it does not depend on how the faces
    were dealt to processes. States are not persistent: checkpoints are unchanged.

    ``probs_<task>``: N x C, the probabilities the accuracy metrics saw (10-crop: averaged
    over the crops); ``crops_<task>``: N x K x C per-crop probabilities, 10-crop only, since
    a temperature is applied to each crop before averaging.
    """

    full_state_update = False

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        self.add_state("row", default=[], dist_reduce_fx="cat")
        for task in TASK_NUM_CLASSES:
            self.add_state(f"target_{task}", default=[], dist_reduce_fx="cat")
        for task in self.task_names:
            self.add_state(f"probs_{task}", default=[], dist_reduce_fx="cat")
            self.add_state(f"crops_{task}", default=[], dist_reduce_fx="cat")

    def update(
        self,
        rows: torch.Tensor,
        targets: dict[str, torch.Tensor],
        probs: dict[str, torch.Tensor],
        crops: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """``rows``: N row indices; ``targets``: N class indices per task (-1 = unknown);
        ``probs``: N x C per task of the network; ``crops``: N x K x C per task (10-crop)."""
        self.row.append(rows.detach().to(torch.int64))
        for task in TASK_NUM_CLASSES:
            target = targets.get(task)
            if target is None:
                target = torch.full_like(rows, IGNORE_INDEX, dtype=torch.int64)
            getattr(self, f"target_{task}").append(target.detach().to(torch.int64))
        for task in self.task_names:
            getattr(self, f"probs_{task}").append(probs[task].detach().float())
            if crops is not None:
                getattr(self, f"crops_{task}").append(crops[task].detach().float())

    def compute(self) -> dict[str, np.ndarray]:
        """``row``, ``target_<task>``, ``probs_<task>`` (and ``crops_<task>`` when kept) as
        numpy arrays sorted by row; empty dict when the stage saw no face."""
        rows = _concatenated(self.row)
        if rows is None or not len(rows):
            return {}
        out = {"row": rows}
        for task in TASK_NUM_CLASSES:
            out[f"target_{task}"] = _concatenated(getattr(self, f"target_{task}"))
        for task in self.task_names:
            out[f"probs_{task}"] = _concatenated(getattr(self, f"probs_{task}"))
            crops = _concatenated(getattr(self, f"crops_{task}"))
            if crops is not None and crops.size:
                out[f"crops_{task}"] = crops
        order = np.argsort(rows, kind="stable")
        return {key: value[order] for key, value in out.items()}

    def collect(self) -> dict[str, np.ndarray]:
        """:meth:`compute`, then :meth:`reset` (the collective: every rank must call it)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            result = self.compute()
        self.reset()
        return result


def _concatenated(state: list[torch.Tensor] | torch.Tensor) -> np.ndarray | None:
    """A list state (or, after a DDP sync, its gathered tensor) as one numpy array."""
    if isinstance(state, list) and not state:
        return None
    return dim_zero_cat(state).cpu().numpy()
