"""Temperature scaling (agegender.calibration) and where a stored temperature is applied:
checkpoints, both classifiers, exports; and abstention (min_prob) in CSV, JSON Lines and the API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from agegender.calibration import (
    CalibrationError,
    apply_temperature,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from agegender.checkpoints import load_model, save_model, set_calibration
from agegender.faces import Face, build_detector
from agegender.inference import predict
from agegender.inference.options import PredictOptions, min_prob_of
from agegender.inference.results import FaceResult
from agegender.labels import ADIENCE8
from agegender.models import LeviHassnerNet
from agegender.runtime.build import build_classifier

# -- the arithmetic, by hand -------------------------------------------------------------------


def test_apply_temperature_matches_softmax_of_scaled_logits() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for t in (0.5, 1.0, 2.0, 7.0):
        expected = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
        np.testing.assert_allclose(apply_temperature(probs, t), expected, atol=1e-12)
    # the best class never changes
    assert (apply_temperature(probs, 5.0).argmax(1) == probs.argmax(1)).all()
    with pytest.raises(CalibrationError, match="> 0"):
        apply_temperature(probs, 0.0)


def test_reliability_bins_and_ece_by_hand() -> None:
    # four faces, two bins: confidences 0.9 (right), 0.8 (wrong) -> bin (0.5, 1];
    # 0.4 (right) and 0.3 (wrong) with three classes -> bin (0, 0.5]
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3], [0.3, 0.35, 0.35]])
    targets = np.array([0, 1, 0, 2, -1])[:4]
    bins = reliability_bins(probs, targets, bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[1]["confidence"] == pytest.approx(0.85) and bins[1]["accuracy"] == 0.5
    # face 4: best class is index 1 (0.35, first of the tie), target 2: wrong
    assert bins[0]["confidence"] == pytest.approx(0.375) and bins[0]["accuracy"] == 0.5
    expected = 0.5 * abs(0.5 - 0.375) + 0.5 * abs(0.5 - 0.85)
    assert expected_calibration_error(probs, targets, bins=2) == pytest.approx(expected)
    # unlabelled faces are left out, not counted wrong
    with_unknown = np.vstack([probs, [[1.0, 0.0, 0.0]]])
    assert expected_calibration_error(
        with_unknown, np.array([0, 1, 0, 2, -1]), bins=2
    ) == pytest.approx(expected)


def test_fit_temperature_recovers_a_planted_one() -> None:
    """Labels drawn from softmax(z); the model says softmax(3 z): overconfident by T = 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5))
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    targets = np.array([rng.choice(5, p=p) for p in true])
    said = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    t = fit_temperature(said, targets)
    assert 2.7 < t < 3.3
    assert negative_log_likelihood(said, targets, t) < negative_log_likelihood(said, targets)
    assert expected_calibration_error(apply_temperature(said, t), targets) < 0.5 * (
        expected_calibration_error(said, targets)
    )
    with pytest.raises(CalibrationError, match="no labelled face"):
        fit_temperature(said[:3], np.array([-1, -1, -1]))


# -- stored and applied ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_checkpoint(tmp_path_factory):  # noqa: ANN201
    torch.manual_seed(0)
    net = LeviHassnerNet()
    folder = tmp_path_factory.mktemp("calibrated")
    raw = save_model(net, "levi_hassner", {}, folder / "raw.pt")
    record = calibration_record({"age": 2.5, "gender": 0.5}, "a test", {"age": 10, "gender": 10})
    calibrated = set_calibration(raw, record, folder / "calibrated.pt")
    return raw, calibrated, record


def _faces(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(n)]


def test_checkpoint_stores_and_torch_classifier_applies_temperature(calibrated_checkpoint) -> None:
    raw_path, path, record = calibrated_checkpoint
    assert load_model(path)[1]["calibration"] == record
    assert "calibration" not in load_model(raw_path)[1]
    raw, _ = build_classifier(raw_path)
    on, _ = build_classifier(path)
    off, _ = build_classifier(path, calibration=False)
    assert on.calibrated and on.calibration == record
    assert not off.calibrated and off.calibration == record and not raw.calibrated
    batch = raw.stack([raw.preprocess(f) for f in _faces()])
    p_raw, p_on, p_off = (c.predict(batch) for c in (raw, on, off))
    for task, t in record["temperature"].items():
        np.testing.assert_allclose(p_off[task], p_raw[task], atol=1e-6)
        np.testing.assert_allclose(p_on[task], apply_temperature(p_raw[task], t), atol=1e-5)
        assert (p_on[task].argmax(1) == p_raw[task].argmax(1)).all()
    # gender T = 0.5 sharpens, age T = 2.5 softens
    assert (p_on["gender"].max(1) >= p_raw["gender"].max(1) - 1e-6).all()
    assert (p_on["age"].max(1) <= p_raw["age"].max(1) + 1e-6).all()
    # removing it again
    set_calibration(path, None, path.with_name("removed.pt"))
    assert "calibration" not in load_model(path.with_name("removed.pt"))[1]


@pytest.mark.slow  # two ONNX exports, each checked in onnxruntime and OpenCV (~45 s)
def test_export_bakes_temperature_into_the_graph(calibrated_checkpoint, tmp_path) -> None:
    from agegender.export import export_model, read_metadata

    raw_path, path, record = calibrated_checkpoint
    export_model(tmp_path / "on.onnx", path)
    export_model(tmp_path / "off.onnx", path, calibration=False)
    assert json.loads(read_metadata(tmp_path / "on.onnx")["calibration"]) == record
    assert "calibration" not in read_metadata(tmp_path / "off.onnx")
    torch_raw, _ = build_classifier(raw_path)
    torch_on, _ = build_classifier(path)
    ort = {"backend": "onnxruntime"}
    on, _ = build_classifier(tmp_path / "on.onnx", **ort)
    undone, _ = build_classifier(tmp_path / "on.onnx", calibration=False, **ort)
    plain, _ = build_classifier(tmp_path / "off.onnx", **ort)
    assert on.backend == "onnxruntime" and on.calibrated and not plain.calibrated
    faces = _faces()
    x_torch = torch_raw.stack([torch_raw.preprocess(f) for f in faces])
    x_onnx = on.stack([on.preprocess(f) for f in faces])
    for task in ("age", "gender"):
        expected_on = torch_on.predict(x_torch)[task]
        expected_raw = torch_raw.predict(x_torch)[task]
        np.testing.assert_allclose(on.predict(x_onnx)[task], expected_on, atol=1e-4)
        np.testing.assert_allclose(plain.predict(x_onnx)[task], expected_raw, atol=1e-4)
        np.testing.assert_allclose(undone.predict(x_onnx)[task], expected_raw, atol=1e-4)


def test_malformed_calibration_in_a_checkpoint_is_a_clear_error(tmp_path) -> None:
    from agegender.errors import CheckpointError

    path = save_model(LeviHassnerNet(), "levi_hassner", {}, tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["calibration"] = {"temperature": {"age": -1.0}}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="temperature of age must be > 0"):
        load_model(path)


# -- abstention ----------------------------------------------------------------------------------


def test_min_prob_leaves_the_label_empty_by_hand() -> None:
    face = Face(box=np.array([0, 0, 10, 10], dtype=np.float32), score=0.9)
    probs = {
        "age": np.array([0.05, 0.05, 0.1, 0.1, 0.45, 0.1, 0.1, 0.05]),
        "gender": np.array([0.2, 0.8]),
    }
    plain = FaceResult.decode(face, probs, ADIENCE8)
    assert (plain.age, plain.gender, plain.status) == ("25-32", "female", "ok")
    unsure = FaceResult.decode(face, probs, ADIENCE8, {"age": 0.5, "gender": 0.8})
    # 0.45 < 0.5 abstains; 0.8 is not below 0.8
    assert unsure.age is None and unsure.age_prob == pytest.approx(0.45)
    assert unsure.gender == "female" and unsure.abstained == ("age",)
    assert unsure.status == "abstained: age"
    assert unsure.to_dict()["abstained"] == ["age"] and unsure.to_dict()["age"] is None
    assert unsure.label() == ("female 0.80, age? 0.45", "female", True)  # drawn as unsure
    both = FaceResult.decode(face, probs, ADIENCE8, min_prob_of(0.9))
    assert both.status == "abstained: age, gender"


def test_min_prob_settings_are_checked() -> None:
    assert min_prob_of(None) == {"age": None, "gender": None}
    assert min_prob_of({"age": 0.6}) == {"age": 0.6, "gender": None}
    assert PredictOptions.defaults(min_prob=0.7).min_prob == {"age": 0.7, "gender": 0.7}
    assert PredictOptions.defaults().min_prob == {"age": None, "gender": None}
    for bad, match in (({"height": 0.5}, "unknown task"), (1.5, r"\[0, 1\]"), ("x", "number")):
        with pytest.raises(ValueError, match=match):
            min_prob_of(bad)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_min_prob_in_prediction_files_and_api(
    tmp_path, samples_dir, original_classifier, fmt
) -> None:
    """One run labels everything; the same run with min_prob between the faces' age
    probabilities leaves exactly the less sure faces' age empty, in both formats and the API."""
    from agegender.api import AgeGender

    detector = build_detector("none")
    base = dict(annotate=False, workers=1, format=fmt)
    predict(samples_dir, tmp_path / "all", detector, original_classifier, **base)
    name = "predictions." + fmt
    if fmt == "csv":
        rows = pd.read_csv(tmp_path / "all" / name, keep_default_na=False).to_dict("records")
    else:
        lines = (tmp_path / "all" / name).read_text().splitlines()
        rows = [json.loads(line) for line in lines]
    probs = sorted(float(r["age_prob"]) for r in rows)
    floor = (probs[1] + probs[2]) / 2  # two faces below, two above
    predict(
        samples_dir, tmp_path / "unsure", detector, original_classifier,
        min_prob={"age": floor}, **base,
    )  # fmt: skip
    if fmt == "csv":
        got = pd.read_csv(tmp_path / "unsure" / name, keep_default_na=False).to_dict("records")
    else:
        got = [json.loads(line) for line in (tmp_path / "unsure" / name).read_text().splitlines()]
    for before, after in zip(rows, got, strict=True):
        sure = float(before["age_prob"]) >= floor
        assert after["gender"] == before["gender"]
        assert float(after["age_prob"]) == pytest.approx(float(before["age_prob"]))
        if sure:
            assert after["age"] == before["age"] and after["status"] == "ok"
        else:
            assert after["age"] in ("", None) and after["status"] == "abstained: age"
    api = AgeGender("none", min_prob={"age": floor}, backend=original_classifier.backend)
    from agegender.images import load_image

    for before in rows:
        face = api.predict(load_image(before["path"]))[0]
        assert (face.age is None) == (float(before["age_prob"]) < floor)
        assert face.abstained == (() if face.age else ("age",))
