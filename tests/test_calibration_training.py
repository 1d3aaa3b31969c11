"""Temperature scaling fitted by train.py (issue 22): the temperatures fitted on the
validation faces, stored in the evaluated checkpoint only, the ECE/NLL figures of
metrics.json, and the per-face ``test_predictions.csv`` they can be recomputed from."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from training_fixtures import PAPER_TWO_STEPS, REPO, compose_train, demo_root

from agegender.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from agegender.checkpoints import load_model
from agegender.training.calibrate import (
    PREDICTIONS_FILE,
    calibration_figures,
    fit_temperatures,
    prediction_columns,
    predictions_table,
    scaled_probabilities,
)
from agegender.training.fit import train
from agegender.training.metrics import StagePredictions

#: PAPER_TWO_STEPS validates and tests 2 batches of 4 faces (conf/debug/tests.yaml).
RUN = [*PAPER_TWO_STEPS, "trainer.limit_test_batches=2"]
TASKS = ("age", "gender")


# -- the hand-computed core: one confidence, known accuracy --------------------------------------
# Four faces, each p = (0.9, 0.1), three of them class 0: accuracy 0.75. The NLL-optimal
# temperature makes the confidence 0.75: sigmoid(ln 9 / T) = 0.75, T = ln 9 / ln 3 = 2.
HAND = {
    "row": np.array([0, 1, 2, 3]),
    "target_age": np.array([-1, -1, -1, -1]),
    "target_gender": np.array([0, 0, 0, 1]),
    "probs_gender": np.array([[0.9, 0.1]] * 4),
}


def test_fit_temperatures_makes_the_confidence_the_accuracy() -> None:
    temps, faces = fit_temperatures(HAND, ["gender"])
    assert temps["gender"] == pytest.approx(2.0, rel=1e-5)
    assert faces == {"gender": 4}
    # no labelled age face: no age temperature (and no age figures)
    assert fit_temperatures(HAND, ["age", "gender"])[0].keys() == {"gender"}


def test_calibration_figures_by_hand() -> None:
    figures = calibration_figures({"val": HAND, "test": HAND}, ["age", "gender"], {"gender": 2.0})
    assert figures["calibration/gender_temperature"] == 2.0
    for stage in ("val", "test"):
        # uncalibrated: confidence 0.9, accuracy 0.75; calibrated: confidence 0.75
        assert figures[f"{stage}/gender_ece"] == pytest.approx(0.15)
        assert figures[f"{stage}/gender_ece_calibrated"] == pytest.approx(0.0, abs=1e-12)
        assert figures[f"{stage}/gender_nll"] == pytest.approx(
            -(3 * math.log(0.9) + math.log(0.1)) / 4
        )
        entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
        assert figures[f"{stage}/gender_nll_calibrated"] == pytest.approx(entropy)
    assert not any(k.startswith(("test_10crop/", "val/age", "test/age")) for k in figures)
    # calibration=false: the uncalibrated figures only
    assert set(calibration_figures({"val": HAND}, ["gender"], {})) == {
        "val/gender_ece",
        "val/gender_nll",
    }


def test_ten_crop_temperature_goes_on_each_crop_before_the_average() -> None:
    crops = np.array([[[0.9, 0.1], [0.6, 0.4]]])  # one face, two crops
    stage = {"probs_gender": crops.mean(axis=1), "crops_gender": crops}
    got = scaled_probabilities(stage, "gender", 2.0)
    # by hand: softmax(log p / 2) of each crop = sqrt(p) renormalised, then averaged
    first = np.sqrt([0.9, 0.1]) / np.sqrt([0.9, 0.1]).sum()
    second = np.sqrt([0.6, 0.4]) / np.sqrt([0.6, 0.4]).sum()
    np.testing.assert_allclose(got, [(first + second) / 2], rtol=1e-12)
    # not the temperature of the averaged probabilities
    assert not np.allclose(got, apply_temperature(crops.mean(axis=1), 2.0))
    np.testing.assert_array_equal(scaled_probabilities(stage, "gender", 1.0), crops.mean(axis=1))


def test_stage_predictions_sorts_by_row_and_keeps_unlabelled_targets() -> None:
    metric = StagePredictions(("gender",))
    probs = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    metric.update(torch.tensor([5, 1]), {"gender": torch.tensor([1, -1])}, {"gender": probs})
    metric.update(torch.tensor([3]), {"gender": torch.tensor([0])}, {"gender": probs[:1]})
    got = metric.collect()
    np.testing.assert_array_equal(got["row"], [1, 3, 5])
    np.testing.assert_array_equal(got["target_gender"], [-1, 0, 1])
    np.testing.assert_array_equal(got["target_age"], [-1, -1, -1])  # not in the batch
    np.testing.assert_allclose(got["probs_gender"], [[0.7, 0.3], [0.2, 0.8], [0.2, 0.8]])
    assert "crops_gender" not in got
    assert metric.collect() == {}  # reset after collecting


def test_predictions_table_rows_and_subjects() -> None:
    # a gender-only network: a face counts as labelled when its gender is known
    stage = {
        "row": np.array([0, 1, 2, 3]),
        "target_age": np.array([3, -1, -1, 5]),
        "target_gender": np.array([0, 1, -1, -1]),  # rows 2 and 3: no gender, left out
        "probs_gender": np.array([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]),
    }
    table = predictions_table({"test": stage}, {"gender": 2}, ["u0", "u1", "u2", "u3"])
    assert list(table.columns) == [
        "stage", "row", "subject", "age", "gender", "p_gender_0", "p_gender_1"
    ]  # fmt: skip
    assert table["stage"].tolist() == ["test", "test"]
    assert table["row"].tolist() == [0, 1]
    assert table["subject"].tolist() == ["u0", "u1"]
    assert table["age"].tolist() == [3, -1] and table["gender"].tolist() == [0, 1]
    assert table["p_gender_1"].tolist() == [0.75, 0.5]


def test_contracts_doc_lists_the_prediction_columns() -> None:
    doc = (REPO / "docs" / "contracts.md").read_text()
    section = re.search(r"^## test_predictions\.csv\n(.*?)(?=^## |\Z)", doc, re.S | re.M).group(1)
    columns = prediction_columns({"age": 8, "gender": 2})
    assert ",".join(columns) in section.splitlines()
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.M)
    assert documented == columns


# -- train.py end to end on the demo data -----------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:  # noqa: ANN001
    return demo_root(tmp_path_factory)


@pytest.fixture(scope="module")
def run(demo: Path, tmp_path_factory):  # noqa: ANN001, ANN201
    out = tmp_path_factory.mktemp("calibrated")
    cfg = compose_train([*RUN, f"data.root={demo}"], out)
    train(cfg)
    return out, cfg


def _records(out: Path) -> dict[str, dict | None]:
    """checkpoint file name -> its calibration record (None: uncalibrated)."""
    return {
        p.name: load_model(p)[1].get("calibration")
        for p in sorted((out / "checkpoints").glob("*.ckpt"))
    }


def _val_probabilities(cfg, ckpt: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # noqa: ANN001
    """The evaluated checkpoint rerun on the validation faces train.py validated (the first
    limit_val_batches batches, centre crop): task -> (probabilities, targets)."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    val = datamodule.datasets["val"]
    n = min(len(val), int(cfg.trainer.limit_val_batches) * datamodule.eval_batch_size)
    items = [val[i] for i in range(n)]
    model, _ = load_model(ckpt)
    images = torch.stack([item["image"] for item in items])
    kwargs = (
        {"origin": torch.stack([item["origin"] for item in items])} if "origin" in items[0] else {}
    )
    with torch.no_grad():
        logits = model(images, **kwargs)
    return {
        task: (
            logits[task].softmax(dim=1).numpy(),
            torch.stack([item[task] for item in items]).numpy(),
        )
        for task in TASKS
    }


def test_evaluated_checkpoint_alone_stores_the_metrics_temperatures(run) -> None:  # noqa: ANN001
    out, cfg = run
    metrics = json.loads((out / "metrics.json").read_text())
    records = {name: record for name, record in _records(out).items() if record}
    assert len(records) == 1 and "last.ckpt" not in records  # the evaluated checkpoint only
    ((name, record),) = records.items()
    assert name.startswith("best-")  # selection=joint: the best-by-val/acc file
    for task in TASKS:
        temperature = record["temperature"][task]
        assert temperature > 0
        assert temperature == metrics[f"calibration/{task}_temperature"]
        assert record["faces"][task] == metrics[f"val/{task}_count"]
    assert record["fitted_on"] == f"validation split of {out}"

    # refitting on the validation probabilities recomputed here gives the stored numbers
    recomputed = _val_probabilities(cfg, out / "checkpoints" / name)
    for task, (probs, targets) in recomputed.items():
        assert int((targets >= 0).sum()) == metrics[f"val/{task}_count"]
        assert fit_temperature(probs, targets) == pytest.approx(
            record["temperature"][task], rel=1e-4
        )
        assert metrics[f"val/{task}_ece"] == pytest.approx(
            expected_calibration_error(probs, targets), abs=1e-5
        )
        temperature = record["temperature"][task]
        assert metrics[f"val/{task}_nll_calibrated"] == pytest.approx(
            negative_log_likelihood(probs, targets, temperature), abs=1e-5
        )


def test_test_predictions_csv_reproduces_the_test_metrics(run) -> None:  # noqa: ANN001
    out, cfg = run
    from hydra.utils import instantiate

    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / PREDICTIONS_FILE, keep_default_na=False)
    assert list(table.columns) == [
        "stage", "row", "subject", "age", "gender",
        *(f"p_age_{i}" for i in range(8)), "p_gender_0", "p_gender_1",
    ]  # fmt: skip
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    split = datamodule.splits["test"]
    tested = split.iloc[: int(cfg.trainer.limit_test_batches) * datamodule.eval_batch_size]
    labelled = tested[(tested["age"] >= 0) | (tested["gender"] >= 0)]
    temperature = {t: metrics[f"calibration/{t}_temperature"] for t in TASKS}
    for stage in ("test", "test_10crop"):
        rows = table[table["stage"] == stage]
        # one row per labelled tested face, with its table row's subject and true classes
        assert rows["row"].tolist() == labelled.index.tolist()
        assert rows["subject"].tolist() == labelled["user_id"].astype(str).tolist()
        assert rows["age"].tolist() == labelled["age"].tolist()
        assert rows["gender"].tolist() == labelled["gender"].tolist()
        for task, size in (("age", 8), ("gender", 2)):
            probs = rows[[f"p_{task}_{i}" for i in range(size)]].to_numpy()
            assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            targets = rows[task].to_numpy()
            known = targets >= 0
            assert known.sum() == metrics[f"{stage}/{task}_count"]
            correct = int((probs[known].argmax(axis=1) == targets[known]).sum())
            # the file's argmax accuracy is metrics.json's (a float32 ratio there)
            assert correct == round(metrics[f"{stage}/{task}_acc"] * known.sum())
            assert correct / known.sum() == pytest.approx(metrics[f"{stage}/{task}_acc"], rel=1e-6)
            assert metrics[f"{stage}/{task}_ece"] == pytest.approx(
                expected_calibration_error(probs, targets), abs=1e-4
            )
            assert metrics[f"{stage}/{task}_nll"] == pytest.approx(
                negative_log_likelihood(probs, targets), abs=1e-4
            )
            if stage == "test":  # single crop: the temperature applies to the row's probabilities
                scaled = apply_temperature(probs, temperature[task])
                assert metrics[f"{stage}/{task}_ece_calibrated"] == pytest.approx(
                    expected_calibration_error(scaled, targets), abs=1e-4
                )


def test_every_calibration_key_is_present_and_finite(run) -> None:  # noqa: ANN001
    out, _ = run
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("val", "test", "test_10crop"):
        for task in TASKS:
            for name in ("ece", "ece_calibrated", "nll", "nll_calibrated"):
                value = metrics[f"{stage}/{task}_{name}"]
                assert math.isfinite(value) and value >= 0, (stage, task, name)
            assert metrics[f"{stage}/{task}_ece"] <= 1.0


def test_calibration_false_stores_no_temperature(demo: Path, tmp_path: Path) -> None:
    cheap = [*RUN, "trainer.max_steps=1", "trainer.val_check_interval=1", "test=false"]
    train(compose_train([*cheap, f"data.root={demo}", "calibration=false"], tmp_path))
    records = _records(tmp_path)
    assert records and all(record is None for record in records.values()), records
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not [k for k in metrics if k.startswith("calibration/") or k.endswith("_calibrated")]
    assert {"val/age_ece", "val/gender_ece"} <= metrics.keys()  # still reported, uncalibrated
    assert not (tmp_path / PREDICTIONS_FILE).exists()  # test=false: nothing tested
