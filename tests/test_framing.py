"""Faces framed as each network was trained: the original nets' framing is what their training
mean image gives, every checkpoint and export carries its own (old files: the legacy one),
box-only detectors put faces where landmark alignment does, training stores the data's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from training_fixtures import FAST, PAPER_TWO_STEPS, compose_train, demo_root

from agegender.checkpoints import FRAMING_KEY, load_model, save_model
from agegender.faces import Face, align_face, build_detector
from agegender.faces.framing import (
    derive_template,
    fit_box_points,
    matched_pairs,
    mean_image_landmarks,
    mean_image_rgb,
    template_error,
)
from agegender.images import load_image
from agegender.models import build_model
from agegender.spec import ADIENCE_FRAMING, LEGACY_FRAMING, Framing, resolve_framing

CUSTOM = Framing(
    template=((0.38, 0.36), (0.62, 0.36), (0.5, 0.5), (0.41, 0.62), (0.59, 0.62)),
    box_scale=1.5,
    box_centre_y=0.45,
)


@pytest.fixture(scope="module")
def mean_rgb(shared_dir: Path) -> np.ndarray:
    from agegender.caffe_io import read_blobproto

    path = shared_dir / "levi_hassner" / "mean.binaryproto"
    require(path.is_file(), f"{path} is missing")
    blob = read_blobproto(path.read_bytes())
    assert blob.shape == (1, 3, 256, 256)
    return mean_image_rgb(blob[0])


def test_adience_framing_is_what_the_mean_image_gives(mean_rgb: np.ndarray) -> None:
    """The stored template is the derivation's output (to its 4 decimals, allowing one unit
    for float noise of another CPU), and aligning the mean image by its own landmarks gives
    the mean image back (0.01 grey levels measured; the legacy framing: 34)."""
    mtcnn = build_detector("mtcnn")
    derived = derive_template(mean_rgb, mtcnn)
    np.testing.assert_allclose(derived, ADIENCE_FRAMING.template, atol=1.5e-4)
    landmarks = (mean_image_landmarks(mean_rgb, mtcnn) * 256).astype(np.float32)
    face = Face((0.0, 0.0, 256.0, 256.0), 1.0, landmarks)
    back = align_face(mean_rgb, face, 256, ADIENCE_FRAMING)
    assert np.abs(back.astype(float) - mean_rgb.astype(float)).mean() < 0.5
    legacy = align_face(mean_rgb, face, 256, LEGACY_FRAMING)
    assert np.abs(legacy.astype(float) - mean_rgb.astype(float)).mean() > 20


def test_blobproto_reader_refuses_a_wrong_size() -> None:
    from agegender.caffe_io import CaffeModelError, read_blobproto

    header = bytes([0x08, 1, 0x10, 3, 0x18, 2, 0x20, 2])  # num 1, channels 3, 2 x 2
    values = np.arange(12, dtype="<f4").tobytes()
    good = header + bytes([0x2A, len(values)]) + values
    np.testing.assert_array_equal(read_blobproto(good).ravel(), np.arange(12))
    with pytest.raises(CaffeModelError, match="12 values"):
        read_blobproto(bytes([0x08, 2]) + good[2:])


@pytest.mark.parametrize(("detector", "worst"), [("haar", 0.08), ("opencv_ssd", 0.08),
                                                 ("retinaface", 0.1)])  # fmt: skip
def test_box_framed_faces_land_on_the_template(
    detector: str, worst: float, samples_dir: Path
) -> None:
    """On the sample photos, a detector's boxes, cropped by its box geometry, put MTCNN's
    landmarks within 0.05 of the crop side of the adience template (mean over the 5 points;
    median over the faces), and every face within ``worst`` (the profile cameraman: 0.072
    with opencv_ssd, 0.093 with RetinaFace's boxes, whose geometry serves boxes a caller
    gives); the stored geometry is what its fit gives on these photos to 0.1 of the box."""
    mtcnn, boxes = build_detector("mtcnn"), build_detector(detector)
    pairs = []
    for photo in sorted(samples_dir.glob("*.[jp][pn]g")):
        image = load_image(photo)
        found = [Face(f.box, f.score) for f in boxes.detect(image)]
        pairs += matched_pairs(found, mtcnn.detect(image))
    assert len(pairs) >= 3
    errors = [
        template_error(box.box, marked.landmarks, ADIENCE_FRAMING, boxes.box_points)
        for box, marked in pairs
    ]
    assert np.median(errors) < 0.05 and max(errors) < worst, errors
    assert np.abs(np.subtract(fit_box_points(pairs), boxes.box_points)).max() < 0.1


def _net(framing: Framing | None):
    torch.manual_seed(0)
    net = build_model("levi_hassner", mode="shared", tasks=["age", "gender"])
    if framing is not None:
        import dataclasses

        net.face_spec = dataclasses.replace(net.face_spec, framing=framing)
    return net.eval()


def test_checkpoints_carry_their_framing_and_old_ones_are_legacy(tmp_path: Path) -> None:
    kwargs = {"mode": "shared", "tasks": ["age", "gender"]}
    path = save_model(_net(CUSTOM), "levi_hassner", kwargs, tmp_path / "custom.pt")
    loaded, meta = load_model(path)
    assert loaded.face_spec.framing == CUSTOM and meta[FRAMING_KEY] == CUSTOM.to_config()
    # a checkpoint written before framings were stored: the framing it was trained with
    payload = torch.load(path, weights_only=True)
    del payload[FRAMING_KEY]
    torch.save(payload, tmp_path / "old.pt")
    old, _ = load_model(tmp_path / "old.pt")
    assert old.face_spec.framing == LEGACY_FRAMING
    payload[FRAMING_KEY] = {"template": [[0.5, 0.5]]}
    torch.save(payload, tmp_path / "bad.pt")
    from agegender.errors import CheckpointError

    with pytest.raises(CheckpointError, match="malformed framing"):
        load_model(tmp_path / "bad.pt")


def test_prediction_frames_faces_with_the_models_framing(tmp_path: Path, samples_dir: Path):
    """predict(): a checkpoint's framing reaches the crops (its probabilities are those of
    faces aligned by hand with it), an old checkpoint's is the legacy one, and both differ."""
    from agegender import AgeGender

    kwargs = {"mode": "shared", "tasks": ["age", "gender"]}
    custom = save_model(_net(CUSTOM), "levi_hassner", kwargs, tmp_path / "custom.pt")
    payload = torch.load(custom, weights_only=True)
    del payload[FRAMING_KEY]
    torch.save(payload, tmp_path / "old.pt")
    image = load_image(samples_dir / "obama.jpg")
    face = build_detector("mtcnn").detect(image)[0]
    probs = {}
    for name, framing in (("custom.pt", CUSTOM), ("old.pt", LEGACY_FRAMING)):
        model = AgeGender(checkpoint=tmp_path / name, backend="torch")
        assert model.classifier.face_spec.framing == framing
        (got,) = model.predict(image)
        classifier = model.classifier
        crop = classifier.preprocess(align_face(image, face, 256, framing))
        expected = classifier.predict(classifier.stack([crop]))["age"][0]
        np.testing.assert_allclose(list(got.age_probs.values()), expected, atol=1e-5)
        probs[name] = expected
    assert np.abs(probs["custom.pt"] - probs["old.pt"]).max() > 1e-3


def test_onnx_export_carries_the_framing(tmp_path: Path) -> None:
    from agegender.export import export_model, read_metadata
    from agegender.runtime.onnx_classifier import OnnxFaceClassifier

    kwargs = {"mode": "shared", "tasks": ["age", "gender"]}
    ckpt = save_model(_net(CUSTOM), "levi_hassner", kwargs, tmp_path / "custom.pt")
    onnx_path = tmp_path / "custom.onnx"
    export_model(onnx_path, ckpt, "onnx", download=False)
    assert json.loads(read_metadata(onnx_path)["framing"]) == CUSTOM.to_config()
    assert OnnxFaceClassifier(onnx_path).face_spec.framing == CUSTOM
    # an export without the key (written before framings were stored): legacy
    import onnx

    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != "framing"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert OnnxFaceClassifier(tmp_path / "old.onnx").face_spec.framing == LEGACY_FRAMING


def test_resume_over_another_framing_is_refused(tmp_path: Path) -> None:
    from agegender.inference.settings import check_resume, write_settings
    from agegender.inference.writer import ResumeError

    csv = tmp_path / "predictions.csv"
    csv.write_text("path\n")
    recorded = {"input": "x", "input_resolved": "/x", "framing": LEGACY_FRAMING.to_config()}
    write_settings(csv, recorded)
    now = {**recorded, "framing": ADIENCE_FRAMING.to_config()}
    with pytest.raises(ResumeError, match="framing: .*legacy.* then, .*adience.* now"):
        check_resume(csv, now)
    # a record from before framings were recorded: those runs framed faces the legacy way
    write_settings(csv, {"input": "x", "input_resolved": "/x"})
    check_resume(csv, recorded)
    with pytest.raises(ResumeError, match="framing"):
        check_resume(csv, now)


def test_named_and_custom_framings_resolve() -> None:
    assert resolve_framing("adience") is ADIENCE_FRAMING
    assert resolve_framing(CUSTOM.to_config()) == CUSTOM
    assert Framing.from_config(json.loads(json.dumps(CUSTOM.to_config()))) == CUSTOM
    with pytest.raises(ValueError, match="unknown framing 'adiense'; known: adience, legacy"):
        resolve_framing("adiense")
    with pytest.raises(ValueError, match="5 \\(x, y\\) points"):
        Framing(template=((0.4, 0.4),))
    with pytest.raises(ValueError, match="right eye"):
        Framing(template=((0.6, 0.3), (0.4, 0.3), (0.5, 0.5), (0.4, 0.6), (0.6, 0.6)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:  # noqa: ANN001
    return demo_root(tmp_path_factory)


def test_training_stores_the_datas_framing_and_evaluation_checks_it(
    demo: Path, tmp_path: Path
) -> None:
    """A net trained on legacy-framed faces carries the legacy framing (its checkpoints
    predict with it); evaluating that checkpoint on adience-framed faces is refused."""
    from agegender.training.fit import train

    # the demo's default source is Adience-style aligned faces (always the adience framing):
    # our alignment (haar, quick on the cartoons) is where a framing is chosen
    ours = ["data.source=mtcnn", "data.preprocess.detector=haar", "data.preprocess.workers=1"]
    legacy = [*ours, "data.preprocess.framing=legacy", "data.auto_preprocess=true"]
    cfg = compose_train([*PAPER_TWO_STEPS, f"data.root={demo}", *legacy], tmp_path / "run")
    train(cfg)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert ckpts
    for ckpt in ckpts:
        net, _ = load_model(ckpt)
        assert net.face_spec.framing == LEGACY_FRAMING
    evaluate = compose_train(
        [
            *FAST,
            "experiment=levi_hassner",
            f"data.root={demo}",
            "train=false",
            f"ckpt_path={ckpts[0]}",
            "model.model_kwargs.mode=shared",
        ],  # fmt: skip
        tmp_path / "eval",
    )
    with pytest.raises(ValueError, match="framing=legacy"):
        train(evaluate)
