"""Label sets: built-in and YAML definitions, how Adience buckets and years map onto them,
parsing with aliases, metrics and confusion matrices in the set's names, checkpoints that
store the set, prediction in the set's names (and coarser sets from the original buckets),
and the expected age."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from training_fixtures import FAST, REPO, compose_train, demo_root

from agegender.data.csv import read_face_csv
from agegender.data.folds import FoldFormatError, load_folds, parse_age
from agegender.labels import (
    ADIENCE8,
    ADIENCE_AGE_STRINGS,
    AGE_BUCKETS,
    IGNORE_INDEX,
    LabelSetError,
    load_label_set,
)
from agegender.training.metrics import StageMetrics, confusion_scalars

KFACE = REPO / "conf" / "labels" / "kface.yaml"


def _names(labels, indices):  # noqa: ANN001, ANN202
    return [None if i == IGNORE_INDEX else labels.age[i] for i in indices]


def test_builtin_sets_and_how_adience_buckets_map() -> None:
    coarse3 = load_label_set("coarse3")
    assert coarse3.age == ("child", "teen", "adult")
    # 15-20: five teen years (15-19), one adult year (20): majority -> teen
    assert _names(coarse3, coarse3.adience) == ["child"] * 3 + ["teen"] + ["adult"] * 4
    coarse2 = load_label_set("coarse2")
    assert _names(coarse2, coarse2.adience) == ["child"] * 3 + ["adult"] * 5
    decades = load_label_set("decades")
    assert decades.age[0] == "0-9" and decades.age[-1] == "70+" and len(decades.age) == 8
    assert _names(decades, decades.adience)[2:4] == ["10-19", "10-19"]  # 8-12, 15-20
    assert load_label_set(None) is ADIENCE8 and load_label_set("adience8") is ADIENCE8


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"straddle": "upper"}, "adult"),
        ({"straddle": "lower"}, "teen"),
        ({"straddle": "unknown"}, None),
        ({"adience": {"15-20": "adult"}}, "adult"),
        ({"adience": {"(15, 20)": None}}, None),
    ],
)
def test_the_15_20_bucket_is_a_setting(settings: dict, expected: str | None) -> None:
    labels = load_label_set({"name": "coarse3", **settings})
    assert _names(labels, [labels.adience[3]]) == [expected]
    assert labels.parse_age("(15, 20)") == (
        IGNORE_INDEX if expected is None else 2 - (expected == "teen")
    )


def test_years_aliases_and_policies() -> None:
    coarse3 = load_label_set("coarse3")
    assert [coarse3.parse_age(v, "remap") for v in ("12", "13", "19", "20", "85.5")] == [
        0,
        1,
        1,
        2,
        2,
    ]
    assert coarse3.parse_age("12", "strict") == IGNORE_INDEX  # strict: Adience strings only
    assert coarse3.parse_age("(8, 23)", "remap") == 0  # an odd range goes by its first number
    assert coarse3.parse_age("teen") == 1 and coarse3.parse_age("(38, 43)") == 2
    kface = load_label_set(str(KFACE))
    assert kface.name == "kface"
    assert [kface.parse_age(v, "remap") for v in ("20대", "30대", "59", "19", "60")] == [
        0,
        1,
        3,
        -1,
        3,
    ]
    assert [kface.parse_gender(v) for v in ("남", "여", "m", "x")] == [0, 1, 0, -1]
    assert kface.to_config()["aliases"]["50대"] == "50-59"
    assert load_label_set(kface.to_config()) == kface  # what checkpoints store reloads equal


def test_adience8_parsing_is_the_old_rule() -> None:
    # the nearest-bucket rule for numbers and odd ranges, canonical strings in both policies
    cases = {"(25, 32)": 4, "25-32": 4, "35": 4, "13": 2, "(8, 23)": 2, "57": 7, "old": -1}
    for value, bucket in cases.items():
        assert parse_age(value, "remap") == bucket, value
    assert parse_age("35", "strict") == IGNORE_INDEX and parse_age(None) == IGNORE_INDEX


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"age": ["a", "b"], "boundaries": [10, 5]}, "strictly increasing"),
        ({"age": ["a", "b"], "boundaries": [0]}, "first year of each"),
        ({"age": ["a", "a"], "boundaries": [0, 5]}, "duplicate class names"),
        ({"age": ["a", "b"], "boundaries": [0, 5], "aliases": {"x": "c"}}, "'x' -> 'c'"),
        ({"age": ["a", "b"], "boundaries": [0, 5], "straddle": "middle"}, "straddle"),
        ({"age": ["a", "b"], "boundaries": [0, 5], "colour": 1}, "unknown key"),
        ({"age": ["a", "b"], "boundaries": [0, 5], "adience": {"1-9": "a"}}, "not Adience"),
        ({"age": ["a", "b"], "boundaries": [0, 50], "max_age": 40}, "max_age"),
    ],
)
def test_bad_yaml_sets_are_clear_errors(tmp_path: Path, definition: dict, message: str) -> None:
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", **definition}))
    with pytest.raises(LabelSetError, match=message) as err:
        load_label_set(str(path))
    assert str(path) in str(err.value)  # the error names the file
    with pytest.raises(LabelSetError, match="not found"):
        load_label_set(str(tmp_path / "none.yaml"))
    with pytest.raises(LabelSetError, match="unknown label set 'coarse5'"):
        load_label_set("coarse5")


def test_real_fold_files_under_coarse3_are_the_buckets_summed(shared_dir: Path) -> None:
    coarse3 = load_label_set("coarse3")
    root = shared_dir / "adience"
    eight, _ = load_folds(root, "strict")
    three, _ = load_folds(root, "strict", labels=coarse3)
    assert len(three) == len(eight)
    mapped = [coarse3.adience[a] if a >= 0 else -1 for a in eight["age"]]
    assert three["age"].tolist() == mapped
    assert (three["gender"] == eight["gender"]).all()
    # every range spelling of the real files: the set reads it through its Adience bucket
    raw = set(eight["age_raw"].dropna().astype(str))
    ranges = [v for v in raw if v.startswith("(") and v in ADIENCE_AGE_STRINGS]
    for value in ranges:
        assert coarse3.parse_age(value) == coarse3.adience[ADIENCE8.parse_age(value)]


def test_csv_with_kface_values_and_unknown_values(tmp_path: Path) -> None:
    (tmp_path / "k.csv").write_text(
        "path,age,gender,group\na.jpg,20대,남,p1\nb.jpg,50대,여,p2\nc.jpg,10대,남,p3\n",
        encoding="utf-8",
    )
    table, problems = read_face_csv(tmp_path / "k.csv", labels=str(KFACE))
    assert table["age"].tolist() == [0, 3] and table["gender"].tolist() == [0, 1]
    assert (
        len(problems) == 1
        and "k.csv:4: age '10대' is not a known value of label set kface" in problems[0]
    )
    with pytest.raises(FoldFormatError, match="k.csv:4: age '10대'"):
        read_face_csv(tmp_path / "k.csv", labels=str(KFACE), strict_rows=True)


def test_one_off_and_names_follow_the_set() -> None:
    coarse3 = load_label_set("coarse3")
    # true child predicted teen (one class away) and adult (two away)
    matrix = torch.tensor([[2, 1, 1], [0, 3, 0], [0, 0, 4]])
    scalars = confusion_scalars("age", matrix, "test", names=coarse3.age)
    assert scalars["test/age_acc"] == pytest.approx(9 / 11)
    assert scalars["test/age_acc_1off"] == pytest.approx(10 / 11)
    assert scalars["test/age_acc_class/child"] == pytest.approx(0.5)
    metrics = StageMetrics(("age", "gender"), coarse3)
    metrics.update("age", torch.tensor([0, 2, 1]), torch.tensor([0, 2, 2]))
    out, confusion = metrics.compute_and_reset("val")
    assert confusion["age"].shape == (3, 3) and "val/age_acc_class/adult" in out


def test_coarse_network_heads_and_checkpoint_round_trip(tmp_path: Path) -> None:
    from agegender.checkpoints import label_set_of, load_model, save_model
    from agegender.training.module import AgeGenderModule

    module = AgeGenderModule("levi_hassner", {"mode": "shared"}, labels="coarse3")
    assert module.model.heads["age"].out_features == 3
    assert module.hparams.labels["name"] == "coarse3"
    path = save_model(
        module.model,
        "levi_hassner",
        module.hparams.model_kwargs,
        tmp_path / "c3.pt",
        labels="coarse3",
    )
    model, meta = load_model(path)
    assert model.heads["age"].out_features == 3 and label_set_of(meta).age == (
        "child",
        "teen",
        "adult",
    )
    plain = save_model(module.model, "levi_hassner", module.hparams.model_kwargs, tmp_path / "p.pt")
    assert "labels" not in torch.load(plain, weights_only=True)
    assert label_set_of(load_model(plain)[1]) is ADIENCE8  # no set stored: adience8


def test_original_buckets_summed_into_a_coarser_set() -> None:
    from agegender.models import LeviHassnerNet
    from agegender.runtime.torch_classifier import FaceClassifier

    torch.manual_seed(0)
    net = LeviHassnerNet(mode="shared")
    eight = FaceClassifier(net, channels_last=False)
    three = FaceClassifier(net, channels_last=False, labels=load_label_set("coarse3"))
    batch = torch.rand(4, 3, 227, 227) * 255
    p8, p3 = eight.predict(batch)["age"], three.predict(batch)["age"]
    np.testing.assert_allclose(p3[:, 0], p8[:, :3].sum(1), atol=1e-6)
    np.testing.assert_allclose(p3[:, 1], p8[:, 3], atol=1e-6)
    np.testing.assert_allclose(p3[:, 2], p8[:, 4:].sum(1), atol=1e-6)
    coarse_net = LeviHassnerNet(mode="shared", num_classes={"age": 3})
    with pytest.raises(LabelSetError, match="only adience8 networks"):
        FaceClassifier(coarse_net, model_labels=load_label_set("coarse3"), labels=ADIENCE8)
    with pytest.raises(LabelSetError, match="15-20"):
        FaceClassifier(net, labels=load_label_set({"name": "coarse3", "straddle": "unknown"}))


def test_expected_age_column() -> None:
    from agegender.faces import Face
    from agegender.inference import FaceResult, ImageResult, InputItem
    from agegender.inference.csv_writer import EXPECTED_AGE_COLUMN, prediction_columns, result_rows

    coarse3 = load_label_set("coarse3")
    face = Face(box=(0, 0, 10, 10), score=1.0, landmarks=None)
    probs = {"age": np.array([0.5, 0.25, 0.25]), "gender": np.array([0.2, 0.8])}
    faces = [FaceResult.decode(face, probs, coarse3)]
    result = ImageResult(InputItem("a.jpg", "a.jpg"), faces=faces, labels=coarse3)
    (row,) = result_rows(result, True, coarse3, expected_age=True)
    assert row["age"] == "child" and row["gender"] == "female"
    # midpoints: child [0, 13) 6.5, teen [13, 20) 16.5, adult [20, 80) 50
    assert row[EXPECTED_AGE_COLUMN] == round(0.5 * 6.5 + 0.25 * 16.5 + 0.25 * 50, 1)  # 1 decimal
    assert prediction_columns(True, coarse3, True)[-6:] == (
        EXPECTED_AGE_COLUMN, "p_age_0", "p_age_1", "p_age_2", "p_gender_0", "p_gender_1",
    )  # fmt: skip
    assert tuple(AGE_BUCKETS) == ADIENCE8.age


@pytest.mark.slow  # ~16 s of training
def test_train_coarse3_then_predict_writes_its_names(tmp_path_factory, tmp_path: Path) -> None:
    """The issue's acceptance run, in process: experiment=modern labels=coarse3 on the demo
    data writes metrics and 3x3 confusion matrices in the set's names, and prediction with
    its checkpoint writes child/teen/adult."""
    from agegender.faces import build_detector
    from agegender.inference import predict
    from agegender.runtime.build import build_classifier
    from agegender.training.fit import train

    demo = demo_root(tmp_path_factory)
    overrides = ["experiment=modern", "labels=coarse3", *FAST, f"data.root={demo}"]
    overrides += ["trainer.max_steps=2", "trainer.val_check_interval=2"]
    run = tmp_path / "run"
    train(compose_train(overrides, run))
    metrics = json.loads((run / "metrics.json").read_text())
    classes = {k.rsplit("/", 1)[1] for k in metrics if "/age_acc_class/" in k}
    assert classes and classes <= {"child", "teen", "adult"}
    assert (run / "confusion_test_age.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["labels"]["name"] == "coarse3"

    faces = tmp_path / "faces"
    faces.mkdir()
    for i, path in enumerate(sorted((demo / "aligned").rglob("*.jpg"))[:3]):
        (faces / f"f{i}.jpg").write_bytes(path.read_bytes())
    classifier, _ = build_classifier(ckpt)
    out = tmp_path / "out"
    predict(faces, out, build_detector("none"), classifier, annotate=False, progress=False,
            save_probs=True, expected_age=True)  # fmt: skip
    table = pd.read_csv(out / "predictions.csv")
    assert set(table["age"]) <= {"child", "teen", "adult"} and len(table) == 3
    assert [c for c in table.columns if c.startswith("p_age_")] == ["p_age_0", "p_age_1", "p_age_2"]
    assert table["age_years_estimate"].between(6.5, 50).all()

    # the Python API and the export write the set's names too (one pipeline, one metadata)
    from agegender import AgeGender
    from agegender.export import export_model, read_metadata

    image = np.asarray(Image.open(faces / "f0.jpg").convert("RGB"))
    (face,) = AgeGender(detector="none", checkpoint=ckpt).predict(image)
    assert face.age in {"child", "teen", "adult"}
    assert list(face.age_probs) == ["child", "teen", "adult"]
    exported = tmp_path / "coarse3.onnx"
    export_model(exported, ckpt)
    meta = read_metadata(exported)
    assert json.loads(meta["labels"])["age"] == ["child", "teen", "adult"]
    assert json.loads(meta["label_set"])["name"] == "coarse3"
    (onnx_face,) = AgeGender(detector="none", checkpoint=exported).predict(image)
    assert (onnx_face.age, list(onnx_face.age_probs)) == (face.age, list(face.age_probs))
    assert np.allclose(list(onnx_face.age_probs.values()), list(face.age_probs.values()), atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "bucket_15_20"),
    [
        (["labels=coarse3", "++labels.adience={15-20:adult}"], "adult"),
        (["labels=coarse3", "++labels.adience={15-20:null}"], None),
        (["labels=file", f"labels.path={KFACE}"], None),
    ],
)
def test_the_documented_overrides_compose(overrides: list[str], bucket_15_20, tmp_path) -> None:  # noqa: ANN001
    from hydra.utils import instantiate

    cfg = compose_train(overrides, tmp_path)
    labels = load_label_set(cfg.labels)
    assert _names(labels, [labels.adience[3]]) == [bucket_15_20]
    # the model and the data get the same set: the age head has one output per class
    assert instantiate(cfg.model, _recursive_=False).model.heads["age"].out_features == len(
        labels.age
    )
    assert instantiate(cfg.data).labels == labels
