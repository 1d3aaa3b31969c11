"""The demo tree: Adience layout, Adience-like dirt, seeded, and labels a model can learn."""

from __future__ import annotations

import numpy as np
import pytest

from agegender.data.demo import generate_demo, main
from agegender.data.folds import image_relpath, load_folds
from agegender.images import load_image
from agegender.labels import IGNORE_INDEX


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "tree", users=20, images_per_user=8)


def test_layout_and_images(demo_root):
    table, report = load_folds(demo_root, "remap", drop_unlabelled=False)
    assert report.malformed == []
    assert report.duplicates == 1  # the generator repeats one row, as Adience does
    assert len(table) == 20 * 8
    assert table.groupby("fold")["user_id"].nunique().tolist() == [4] * 5
    for row in table.head(5).itertuples():
        for kind, shape in (("faces", (320, 320, 3)), ("aligned", (256, 256, 3))):
            path = demo_root / image_relpath(row.user_id, row.face_id, row.original_image, kind)
            assert load_image(path).shape == shape


def test_labels_are_dirty_like_adience(demo_root):
    strict, _ = load_folds(demo_root, "strict", drop_unlabelled=False)
    remap, _ = load_folds(demo_root, "remap", drop_unlabelled=False)
    raw = set(strict["age_raw"])
    assert "None" in raw or any(not a.startswith("(") for a in raw)
    # remap recovers some ages that strict mode drops; genders 'u'/'' are unknown in both
    assert (remap["age"] != IGNORE_INDEX).sum() > (strict["age"] != IGNORE_INDEX).sum()
    assert (strict["gender"] == IGNORE_INDEX).any()


def test_seeded(tmp_path):
    a = generate_demo(tmp_path / "a", users=5, images_per_user=2, seed=3)
    b = generate_demo(tmp_path / "b", users=5, images_per_user=2, seed=3)
    c = generate_demo(tmp_path / "c", users=5, images_per_user=2, seed=4)
    text = [(p / "fold_0_data.txt").read_text() for p in (a, b, c)]
    assert text[0] == text[1] != text[2]


def _features(root, table):
    feats = []
    for row in table.itertuples():
        path = root / image_relpath(row.user_id, row.face_id, row.original_image, "aligned")
        feats.append(load_image(path)[::16, ::16].astype(np.float64).ravel() / 255.0)
    return np.stack(feats)


def _ridge(x_train, y_train, x_test, lam=1.0):
    mu = x_train.mean(0)
    a, b = x_train - mu, x_test - mu
    y_mean = y_train.mean(0)
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y_train - y_mean))
    return b @ w + y_mean


def test_labels_are_learnable(demo_root):
    """A linear model on 16 x 16 thumbnails, trained on folds 0-3, predicts held-out users:
    gender well above chance, age within one bucket far above chance (3/8)."""
    table, _ = load_folds(demo_root, "remap")
    train, test = table[table["fold"] != 4], table[table["fold"] == 4]
    x_train, x_test = _features(demo_root, train), _features(demo_root, test)
    g_train, g_test = train["gender"] != IGNORE_INDEX, test["gender"] != IGNORE_INDEX
    scores = _ridge(x_train[g_train], np.eye(2)[train["gender"][g_train]], x_test[g_test])
    gender_acc = (scores.argmax(1) == test["gender"][g_test].to_numpy()).mean()
    a_train, a_test = train["age"] != IGNORE_INDEX, test["age"] != IGNORE_INDEX
    age = _ridge(x_train[a_train], train["age"][a_train].to_numpy(float), x_test[a_test])
    one_off = (np.abs(np.clip(np.rint(age), 0, 7) - test["age"][a_test].to_numpy()) <= 1).mean()
    assert gender_acc > 0.75, gender_acc
    assert one_off > 0.8, one_off


def test_refuses_to_overwrite_other_data(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main([str(tmp_path), "--users", "5", "--images-per-user", "1"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="at least 5 users"):
        generate_demo(tmp_path / "x", users=3)
