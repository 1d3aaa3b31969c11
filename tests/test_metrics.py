"""StageMetrics: every figure derived from one confusion matrix per task, checked key by key
against a direct numpy computation from the raw predictions and labels (unknown labels, a
class with no sample, a task with no sample), and across simulated DDP ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from agegender.labels import IGNORE_INDEX, TASK_NUM_CLASSES
from agegender.training.metrics import CLASS_NAMES, StageMetrics, confusion_scalars

EMPTY_AGE_CLASS = 3  # "25-32": no labelled sample of it in the random data


def _ratio(num: float, den: float) -> float:
    # the figures are float32 ratios (as torchmetrics computes them); numpy's float32
    # division is IEEE-rounded too, so the two agree exactly
    return float(np.float32(num) / np.float32(den))


def _reference(prefix: str, raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The metrics.json figures straight from scores (N x C) and labels (IGNORE_INDEX = unknown)."""
    out: dict[str, float] = {}
    for task, (scores, labels) in raw.items():
        known = labels != IGNORE_INDEX
        pred, true = scores[known].argmax(axis=1), labels[known]
        if true.size == 0:
            continue
        out[f"{prefix}/{task}_acc"] = _ratio((pred == true).sum(), true.size)
        if task == "age":
            out[f"{prefix}/{task}_acc_1off"] = _ratio((np.abs(pred - true) <= 1).sum(), true.size)
        for c, name in enumerate(CLASS_NAMES[task]):
            if (true == c).any():
                out[f"{prefix}/{task}_acc_class/{name}"] = _ratio(
                    (pred[true == c] == c).sum(), (true == c).sum()
                )
        out[f"{prefix}/{task}_count"] = float(true.size)
    accs = [out[f"{prefix}/{t}_acc"] for t in raw if f"{prefix}/{t}_acc" in out]
    if accs:
        out[f"{prefix}/acc"] = sum(accs) / len(accs)
    return out


def _reference_matrix(task: str, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n = TASK_NUM_CLASSES[task]
    known = labels != IGNORE_INDEX
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (labels[known], scores[known].argmax(axis=1)), 1)
    return matrix


def _random(task: str, n: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c = TASK_NUM_CLASSES[task]
    scores = gen.random((n, c)).astype(np.float32)
    labels = gen.integers(IGNORE_INDEX, c, size=n)  # about 1 in c+1 unknown
    if task == "age":
        labels[labels == EMPTY_AGE_CLASS] = EMPTY_AGE_CLASS + 1
        scores[:, EMPTY_AGE_CLASS] += 0.5  # ... but often predicted (a column, no row)
    return scores, labels


def _feed(metrics: StageMetrics, task: str, scores: np.ndarray, labels: np.ndarray, mask: bool):
    for chunk in np.array_split(np.arange(len(labels)), 5):  # several batches, some tiny
        s, y = torch.from_numpy(scores[chunk]), torch.from_numpy(labels[chunk])
        if mask:  # what the module does: labelled samples only
            s, y = s[y != IGNORE_INDEX], y[y != IGNORE_INDEX]
        metrics.update(task, s, y)  # unmasked: the matrix's ignore_index drops the unknowns


@pytest.mark.parametrize("mask", [True, False], ids=["masked", "ignore_index"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_figure_equals_numpy_from_raw_predictions(seed: int, mask: bool) -> None:
    gen = np.random.default_rng(seed)
    raw = {"age": _random("age", 203, gen), "gender": _random("gender", 97, gen)}
    metrics = StageMetrics(("age", "gender"))
    for task, (scores, labels) in raw.items():
        _feed(metrics, task, scores, labels, mask)
    scalars, confusion = metrics.compute_and_reset("val")

    want = _reference("val", raw)
    assert scalars == want  # same keys, same values, exactly
    expected_keys = {
        "val/acc",
        "val/age_acc",
        "val/age_acc_1off",
        "val/age_count",
        "val/gender_acc",
        "val/gender_count",
        *(f"val/age_acc_class/{b}" for i, b in enumerate(CLASS_NAMES["age"]) if i != 3),
        *(f"val/gender_acc_class/{g}" for g in CLASS_NAMES["gender"]),
    }
    assert set(scalars) == expected_keys  # the empty bucket has no key (not NaN, not 0)
    assert "val/gender_acc_1off" not in scalars
    assert all(np.isfinite(v) for v in scalars.values())
    for task, (scores, labels) in raw.items():
        assert confusion[task].dtype == torch.int64
        np.testing.assert_array_equal(
            confusion[task].numpy(), _reference_matrix(task, scores, labels)
        )
    # reset: the next epoch starts from nothing
    assert metrics.compute_and_reset("val") == ({}, {})


def test_a_task_without_samples_reports_nothing_and_acc_is_the_mean_of_the_rest() -> None:
    gen = np.random.default_rng(5)
    scores, labels = _random("gender", 50, gen)
    metrics = StageMetrics(("age", "gender"))
    metrics.update("age", torch.rand(3, 8), torch.full((3,), IGNORE_INDEX))  # all unknown
    _feed(metrics, "gender", scores, labels, mask=False)
    scalars, confusion = metrics.compute_and_reset("test")
    assert scalars == _reference("test", {"gender": (scores, labels)})
    assert not any(k.startswith("test/age") for k in scalars) and set(confusion) == {"gender"}
    assert scalars["test/acc"] == scalars["test/gender_acc"]


def test_ddp_ranks_sum_their_matrices() -> None:
    """Two ranks' states reduced as torchmetrics' sync does (gather, then the state's sum):
    the figures are those of all samples together. Rank 0 saw no gender label at all but
    still syncs and reports the figures of rank 1's."""
    gen = np.random.default_rng(7)
    age = _random("age", 150, gen)
    gender = _random("gender", 60, gen)
    ranks = [StageMetrics(("age", "gender")) for _ in range(2)]
    _feed(ranks[0], "age", age[0][:71], age[1][:71], mask=True)
    _feed(ranks[1], "age", age[0][71:], age[1][71:], mask=True)
    _feed(ranks[1], "gender", *gender, mask=True)

    for task, metric in ranks[0].tasks.items():
        assert metric._reductions == {"confmat": dim_zero_sum}  # the only state, summed
        other = ranks[1].tasks[task]

        def gather(state: torch.Tensor, group=None, other=other) -> list[torch.Tensor]:
            return [state, other.confmat.clone()]  # what all_gather returns on rank 0

        metric.dist_sync_fn = gather
        metric.distributed_available_fn = lambda: True

    scalars, confusion = ranks[0].compute_and_reset("val")
    assert scalars == _reference("val", {"age": age, "gender": gender})
    np.testing.assert_array_equal(confusion["age"].numpy(), _reference_matrix("age", *age))
    np.testing.assert_array_equal(confusion["gender"].numpy(), _reference_matrix("gender", *gender))


def test_one_off_counts_adjacent_buckets_only() -> None:
    matrix = torch.zeros(8, 8, dtype=torch.int64)
    for true, pred in [(1, 0), (1, 1), (5, 3), (6, 7)]:  # off by 1, 0, 2, 1
        matrix[true, pred] += 1
    scalars = confusion_scalars("age", matrix, "val")
    assert scalars["val/age_acc_1off"] == pytest.approx(3 / 4)
    assert scalars["val/age_acc"] == pytest.approx(1 / 4)
    assert "val/gender_acc_1off" not in confusion_scalars("gender", torch.eye(2), "val")
