"""The Python API (agegender.AgeGender) against predict.py, and predict.py's JSON Lines output."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SAMPLES, WEIGHTS_HINT, require

PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def ag():  # noqa: ANN201
    from agegender import AgeGender
    from agegender.store import WeightsNotFoundError

    try:
        return AgeGender()
    except WeightsNotFoundError as error:
        require(False, f"original weights not cached: {WEIGHTS_HINT} ({error})")


def _predict_py(out: Path, *overrides: str) -> list[dict[str, str]]:
    """predict.py on the samples, in its own process (as a user runs it)."""
    cmd = [sys.executable, "predict.py", f"input={SAMPLES}", f"output={out}", "annotate=false"]
    cmd += ["progress=false", "save_probs=true", *overrides]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    name = "predictions.jsonl" if "format=jsonl" in overrides else "predictions.csv"
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in (out / name).read_text().splitlines()]
    with open(out / name, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def csv_rows(tmp_path_factory) -> dict[str, list[dict[str, str]]]:  # noqa: ANN001
    rows = _predict_py(tmp_path_factory.mktemp("predict"))
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(Path(row["path"]).name, []).append(row)
    return by_file


def test_api_on_rgb_arrays_gives_predict_py_faces_and_labels(ag, csv_rows) -> None:  # noqa: ANN001
    assert len(PHOTOS) >= 4
    for photo in PHOTOS:
        faces = ag.predict(_rgb(photo))
        rows = csv_rows[photo.name]
        assert len(faces) == len(rows) >= 1, photo.name
        for face, row in zip(faces, rows, strict=True):
            box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
            np.testing.assert_allclose(face.box, box, atol=0.051)  # the CSV rounds to 0.1
            assert (face.age, face.gender) == (row["age"], row["gender"]), photo.name
            probs = [float(row[f"p_age_{i}"]) for i in range(8)]
            np.testing.assert_allclose(list(face.age_probs.values()), probs, atol=1e-5)
            assert face.gender_prob == pytest.approx(float(row["gender_prob"]), abs=1e-4)
            assert face.landmarks is not None and len(face.landmarks) == 5


def test_paths_pil_images_and_bgr_frames_agree(ag) -> None:  # noqa: ANN001
    photo = SAMPLES / "obama.jpg"
    rgb = _rgb(photo)
    reference = [f.to_dict() for f in ag.predict(rgb)]
    assert [f.to_dict() for f in ag.predict(photo)] == reference
    assert [f.to_dict() for f in ag.predict(str(photo))] == reference
    assert [f.to_dict() for f in ag.predict(Image.open(photo))] == reference
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert [f.to_dict() for f in ag.predict(bgr, bgr=True)] == reference
    # without bgr=True a BGR frame is a different picture: the flag is not a no-op
    assert [f.to_dict() for f in ag.predict(bgr)] != reference
    # a grey PIL image is converted as files are (3 equal channels)
    grey = ag.predict(Image.open(photo).convert("L"))
    assert len(grey) == 1 and grey[0].gender == "male"


def test_boxes_from_predict_py_csv_give_its_labels(ag, tmp_path: Path) -> None:  # noqa: ANN001
    """Boxes from another detector: predict.py with the box-only SSD detector writes boxes,
    the API classifies exactly those boxes and must give the same probabilities."""
    from agegender import AgeGender

    rows = _predict_py(tmp_path, "detector=opencv_ssd")
    ssd_api = AgeGender(detector="opencv_ssd")
    assert rows
    for row in rows:
        box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        # given boxes are read as the instance's detector's boxes (framing): SSD's here
        (face,) = ssd_api.predict(_rgb(Path(row["path"])), boxes=[box])  # no detection run
        assert face.box == tuple(box) and face.score == 1.0 and face.landmarks is None
        assert (face.age, face.gender) == (row["age"], row["gender"])
        probs = [float(row[f"p_age_{i}"]) for i in range(8)]
        # the CSV's boxes are rounded to 0.1 px: crops move by a fraction of a pixel
        np.testing.assert_allclose(list(face.age_probs.values()), probs, atol=0.02)
        detected = ssd_api.predict(_rgb(Path(row["path"])))
        assert [(f.age, f.gender) for f in detected][:1] == [(row["age"], row["gender"])]


def test_predict_batch_equals_single_calls_and_boxes_per_image(ag) -> None:  # noqa: ANN001
    images = [_rgb(p) for p in PHOTOS]
    batch = ag.predict_batch(images)
    for faces, image in zip(batch, images, strict=True):
        single = ag.predict(image)
        assert [(f.box, f.age, f.gender) for f in faces] == [
            (f.box, f.age, f.gender) for f in single
        ]
        for a, b in zip(faces, single, strict=True):  # batch size changes float rounding only
            np.testing.assert_allclose(
                list(a.age_probs.values()), list(b.age_probs.values()), atol=1e-5
            )
    boxes = [[f.box for f in faces] if i % 2 else None for i, faces in enumerate(batch)]
    mixed = ag.predict_batch(images, boxes=boxes)
    for i, faces in enumerate(mixed):
        assert [f.box for f in faces] == [f.box for f in batch[i]]
        assert all((f.landmarks is None) == (i % 2 == 1) for f in faces)
    with pytest.raises(ValueError, match="box lists"):
        ag.predict_batch(images, boxes=[None])


def test_bad_input_raises_one_type_with_the_csv_reasons(ag, tmp_path: Path) -> None:  # noqa: ANN001
    from agegender import ImageLoadError
    from agegender.inference import Pipeline, iter_inputs

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not a picture")
    data = (SAMPLES / "biden.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    pipeline = Pipeline(ag.detector, ag.classifier, workers=1)
    statuses = {Path(r.item.path).name: r.status for r in pipeline.run(iter_inputs(bad))}
    assert set(statuses) == {"empty.jpg", "text.jpg", "truncated.jpg"}
    for name, status in statuses.items():
        assert status.startswith("error: ")
        with pytest.raises(ImageLoadError) as info:
            ag.predict(bad / name)
        assert info.value.reason == status.removeprefix("error: ")
        assert name in str(info.value)
    for array, reason in (
        (np.zeros((8, 8), np.uint8), "unsupported array shape"),
        (np.zeros((8, 8, 4), np.uint8), "unsupported array shape"),
        (np.zeros((8, 8, 3), np.float32), "unsupported array dtype"),
        (np.zeros((0, 8, 3), np.uint8), "empty image"),
    ):
        with pytest.raises(ImageLoadError, match=reason):
            ag.predict(array)
    with pytest.raises(ImageLoadError) as info:
        ag.predict_batch([_rgb(PHOTOS[0]), bad / "text.jpg"])
    assert info.value.reason == "not an image"
    with pytest.raises(ValueError, match="x2 must exceed x1"):
        ag.predict(_rgb(PHOTOS[0]), boxes=[(10, 10, 5, 20)])
    assert ag.predict(np.zeros((64, 64, 3), np.uint8)) == []  # no face is not an error


def test_to_dict_is_json_and_jsonl_output_holds_the_api_faces(
    ag,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    objects = _predict_py(tmp_path, "format=jsonl")
    assert not (tmp_path / "predictions.csv").exists()
    by_path: dict[str, list[dict]] = {}
    for obj in objects:
        assert list(obj)[0] == "path" and obj["status"] == "ok"
        by_path.setdefault(obj["path"], []).append(obj)
    assert {Path(p).name for p in by_path} == {p.name for p in PHOTOS}
    for path, objs in by_path.items():
        faces = [json.loads(json.dumps(f.to_dict())) for f in ag.predict(Path(path))]
        assert len(faces) == len(objs)
        for i, (face, obj) in enumerate(zip(faces, objs, strict=True)):
            assert obj["face"] == i
            assert set(obj) == set(face) | {"path", "face", "status"}
            for key in ("age", "gender"):  # labels, and every probability under its name
                assert obj[key] == face[key]
                assert list(obj[f"{key}_probs"]) == list(face[f"{key}_probs"])
                np.testing.assert_allclose(
                    list(obj[f"{key}_probs"].values()),
                    list(face[f"{key}_probs"].values()),
                    atol=1e-5,  # batches of 4 faces vs 1: float rounding
                )
            np.testing.assert_allclose(obj["box"], face["box"], atol=1e-4)
            np.testing.assert_allclose(obj["landmarks"], face["landmarks"], atol=1e-4)


@pytest.mark.parametrize("name", ["mtcnn", "mtcnn_facenet", "opencv_ssd", "haar", "none"])
def test_detector_configs_equal_the_constructor_defaults(name: str) -> None:
    """AgeGender(detector=name) uses the constructor's defaults and predict.py the YAML's:
    they must be the same settings, or the API and predict.py would find other faces."""
    from omegaconf import OmegaConf

    from agegender.faces.registry import detector_arguments

    cfg = OmegaConf.load(REPO / "conf" / "detector" / f"{name}.yaml")
    skip = (
        "name",
        "_target_",
        "device",
        "backend",
    )  # interpolations of predict.py's top-level keys
    values = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in skip}
    defaults = detector_arguments(name)
    for key, value in values.items():
        expected = defaults[key]
        assert (list(expected) if isinstance(expected, tuple) else expected) == value, key
