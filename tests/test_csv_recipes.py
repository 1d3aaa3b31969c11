"""The seeds' datasets through data=csv: a K-Face-style layout (Korean age bands and genders,
boxes cropped with a 20% margin, stratified group folds, balanced class weights) and Adience
as a CSV with coarse groups (experiment=kface, experiment=coarse3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
from training_fixtures import compose_train, demo_root

from agegender.data.csv import adience_to_csv, main, read_face_csv
from agegender.data.demo import draw_face
from agegender.labels import load_label_set

#: Tiny CPU settings for data=csv runs (debug=tests would switch the data to the demo tree).
TINY_CSV = [
    "data.batch_size=4",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.preprocess.workers=1",
    "data.preprocess.progress=false",
    "data.test_ten_crop=false",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.fast_dev_run=1",
    "model.pretrained=false",
    "model.name=resnet18",
]
BANDS = ("20대", "30대", "40대", "50대")


def _kface_tree(root: Path, people: int = 16, per_person: int = 3) -> Path:
    """K-Face-like: one folder per person ID, photos with the face somewhere in a bigger
    frame and its box in the CSV, Korean age bands and genders (band and gender cycle)."""
    rng = np.random.default_rng(0)
    lines = ["path,x1,y1,x2,y2,age,gender,group"]
    for p in range(people):
        band, gender = p % 4, (p // 4) % 2
        user = {"skin": (200, 160, 130), "background": (90, 110, 90), "aspect": 1.15}
        person = root / f"{19062100 + p}"
        person.mkdir(parents=True)
        for k in range(per_person):
            canvas = np.full((160, 200, 3), 40, np.uint8)
            x, y = int(rng.integers(10, 80)), int(rng.integers(10, 50))
            canvas[y : y + 96, x : x + 96] = draw_face(4 + band, gender, user, rng, 96)
            cv2.imwrite(str(person / f"L1_S1_E0{k}_C7.jpg"), canvas[:, :, ::-1])
            box = f"{x + 8},{y + 8},{x + 88},{y + 88}"
            lines.append(
                f"{person.name}/L1_S1_E0{k}_C7.jpg,{box},{BANDS[band]},{'남여'[gender]},{p}"
            )
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "labels.csv"


def test_kface_folds_keep_age_and_gender_proportions(tmp_path: Path) -> None:
    csv = _kface_tree(tmp_path / "kface", people=20)
    kface = load_label_set(str(_kface_yaml()))
    table, problems = read_face_csv(csv, num_folds=4, labels=kface, stratify=True)
    assert not problems and sorted(set(table["age"])) == [0, 1, 2, 3]
    assert set(table.groupby("user_id")["fold"].nunique()) == {1}  # a person in one fold
    again, _ = read_face_csv(csv, num_folds=4, labels=kface, stratify=True)
    assert again["fold"].tolist() == table["fold"].tolist()  # seeded: same folds every time

    def balanced(seed: int, stratify: bool) -> bool:
        """Every fold holds both genders and at least three of the four age bands."""
        folds, _ = read_face_csv(csv, num_folds=4, seed=seed, labels=kface, stratify=stratify)
        return all(
            set(f["gender"]) == {0, 1} and f["age"].nunique() >= 3 for _, f in folds.groupby("fold")
        )

    # 20 people, 5 per age band, 10 per gender, 4 folds: the stratified split balances every
    # seed; a plain shuffle of the people does not (seeds 1 and 3 here)
    assert all(balanced(seed, True) for seed in range(5))
    assert not all(balanced(seed, False) for seed in range(5))


def _kface_yaml() -> Path:
    return Path(__file__).resolve().parents[1] / "conf" / "labels" / "kface.yaml"


def test_kface_recipe_trains_with_margin_crops_and_its_names(tmp_path: Path) -> None:
    from agegender.training.fit import train

    csv = _kface_tree(tmp_path / "kface")
    out = tmp_path / "run"
    cfg = compose_train(["experiment=kface", f"data.csv={csv}", *TINY_CSV], out)
    assert cfg.data.preprocess.box_margin == 0.2 and cfg.model.class_weights == "balanced"
    train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    classes = {k.rsplit("/", 1)[1] for k in metrics if "/age_acc_class/" in k}
    assert classes and classes <= {"20-29", "30-39", "40-49", "50-59"}
    (manifest,) = (csv.parent / "cache").glob("labels-*/cache.json")
    settings = json.loads(manifest.read_text())["settings"]
    assert settings["framing"]["box_scale"] == pytest.approx(1.4)  # 20% margin on every side
    index = pd.concat(pd.read_csv(p) for p in manifest.parent.glob("shard_*.csv"))
    assert (index["fallback"] == "given_box").all()


def test_balanced_class_weights_from_the_training_counts() -> None:
    from agegender.training.module import AgeGenderModule

    module = AgeGenderModule("levi_hassner", {"mode": "shared"}, labels="coarse3",
                             class_weights="balanced")  # fmt: skip
    counts = {"age": [10, 0, 30], "gender": [25, 15]}
    datamodule = SimpleNamespace(class_counts=lambda split: counts)
    module._trainer = SimpleNamespace(datamodule=datamodule, ckpt_path=None)
    module._set_class_weights()
    # n / (classes present * n_c): 40 / (2 * 10) = 2, absent teen 0, 40 / (2 * 30) = 2/3
    assert module.ce_weights["age"].tolist() == pytest.approx([2.0, 0.0, 2 / 3])
    assert module.ce_weights["gender"].tolist() == pytest.approx([40 / 50, 40 / 30])
    with pytest.raises(ValueError, match="class_weights"):
        AgeGenderModule("levi_hassner", class_weights="inverse")


def test_adience_as_csv_with_coarse_groups(tmp_path_factory, tmp_path: Path) -> None:
    """``python -m agegender.data.csv adience ROOT``: the CSV reads back to the labels the
    Adience DataModule gives under the same label set, and experiment=coarse3 trains on it."""
    from agegender.data import AdienceDataModule
    from agegender.training.fit import train

    demo = demo_root(tmp_path_factory)
    root = tmp_path / "adience"  # a copy: the CSV reader refuses symlinks out of its folder
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("cache"))
    assert main(["adience", str(root)]) == 0
    csv = root / "adience.csv"
    coarse3 = load_label_set("coarse3")
    table, problems = read_face_csv(csv, labels=coarse3)
    assert not problems
    folds = AdienceDataModule(root, label_policy="remap", labels=coarse3).load_table()
    folds.index = [
        f"faces/{u}/coarse_tilt_aligned_face.{f}.{i}"
        for u, f, i in zip(folds["user_id"], folds["face_id"], folds["original_image"], strict=True)
    ]
    by_key = folds
    theirs = by_key[["age", "gender", "fold"]].add_suffix("_adience")
    merged = table.set_index("key").join(theirs)
    assert len(merged) == len(folds)
    assert (merged["age"] == merged["age_adience"]).all()
    assert (merged["gender"] == merged["gender_adience"]).all()
    assert (merged["fold"] == merged["fold_adience"]).all()
    with pytest.raises(Exception, match="must be in"):
        adience_to_csv(root, tmp_path / "elsewhere" / "x.csv")

    out = tmp_path / "run"
    overrides = ["experiment=coarse3", "data=csv", f"data.csv={csv}", "data.source=aligned"]
    train(compose_train([*overrides, *TINY_CSV], out))
    metrics = json.loads((out / "metrics.json").read_text())
    classes = {k.rsplit("/", 1)[1] for k in metrics if "/age_acc_class/" in k}
    assert classes and classes <= {"child", "teen", "adult"}


def test_stratified_validation_keeps_the_rare_groups() -> None:
    from agegender.data.splits import fold_splits

    rng = np.random.default_rng(3)
    users = [f"u{i:03d}" for i in range(200)]
    age = rng.choice([0, 1, 2], size=200, p=[0.1, 0.2, 0.7])  # child, teen, adult per user
    table = pd.DataFrame(
        {
            "user_id": np.repeat(users, 3),
            "age": np.repeat(age, 3),
            "gender": np.tile([0, 1, 0], 200),
            "fold": np.repeat(np.arange(200) % 5, 3),
        }
    )
    overall = table[table["fold"] != 0]["age"].value_counts(normalize=True)
    splits = fold_splits(table, 0, val_fraction=0.2, seed=0, stratify=True)
    val = splits["val"]["age"].value_counts(normalize=True)
    assert (val - overall).abs().max() < 0.03
    assert not set(splits["val"]["user_id"]) & set(splits["train"]["user_id"])
    assert splits["val"]["user_id"].nunique() == pytest.approx(160 * 0.2, abs=2)
