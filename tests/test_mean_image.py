"""The paper's per-fold, per-pixel mean image (train prototxt ``mean_file``), as Caffe used it.

Caffe's ``DataTransformer`` subtracts ``mean[c][h_off + h][w_off + w]`` at the crop's source
position and writes the result mirrored: ``out = mirror?(crop(image - mean))``. The reference
below is that loop in numpy; the model's normalised input must equal it for random training
crops, the centre crop and all 10 over-sampling crops. The mean itself is Caffe's
``compute_image_mean`` over the fold's training faces only, and it travels in checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from caffe_writer import caffemodel_bytes, random_levi_hassner_params
from training_fixtures import FAST, PAPER_TWO_STEPS, compose_train, demo_root

from agegender.checkpoints import load_model
from agegender.data.cache import FaceCache, write_manifest, write_shard
from agegender.data.mean import compute_image_mean
from agegender.models import CaffeInput, CaffeMeanImage, LeviHassnerNet
from agegender.models.levi_hassner import CAFFE_FACE_SPEC as SPEC
from agegender.runtime.torch_classifier import FaceClassifier
from agegender.transforms import EvalPreset, TrainPreset, ten_crop_origins

MEAN_KEY = "normalize.mean_image"


def caffe_data_transformer(
    face_rgb: np.ndarray, mean_rgb: np.ndarray, h_off: int, w_off: int, mirror: bool
) -> np.ndarray:
    """Caffe's DataTransformer::Transform(Datum) with mean_file, crop_size 227, scale 1.

    The datum is BGR, C x H x W (what convert_imageset stores); so is the mean. Returns the
    C x 227 x 227 BGR blob: data_index at the source offset, top_index mirrored."""
    data = face_rgb[..., ::-1].transpose(2, 0, 1).astype(np.float64)
    mean = mean_rgb[::-1].astype(np.float64)
    h = np.arange(SPEC.crop_size)[:, None]
    w = np.arange(SPEC.crop_size)[None, :]
    out = np.empty((3, SPEC.crop_size, SPEC.crop_size))
    top_w = SPEC.crop_size - 1 - w if mirror else w
    out[:, h, top_w] = data[:, h_off + h, w_off + w] - mean[:, h_off + h, w_off + w]
    return out


def _face(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, 256, (SPEC.face_size, SPEC.face_size, 3), dtype=np.uint8
    )


@pytest.fixture(scope="module")
def mean_rgb() -> np.ndarray:
    return (np.random.default_rng(1).random((3, SPEC.face_size, SPEC.face_size)) * 255).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def normalize(mean_rgb: np.ndarray) -> CaffeMeanImage:
    module = CaffeMeanImage()
    module.fill(torch.from_numpy(mean_rgb))
    return module


# -- (a) the model's input equals Caffe's DataTransformer ---------------------------------------
def test_random_training_crops_match_caffe(normalize: CaffeMeanImage, mean_rgb) -> None:  # noqa: ANN001
    face = _face()
    torch.manual_seed(0)
    crops, origins = zip(*(TrainPreset(SPEC).with_origin(face) for _ in range(12)), strict=True)
    origins = torch.stack(origins)
    assert {0, 1} <= set(origins[:, 2].tolist())  # both mirrored and plain crops drawn
    assert len({tuple(o) for o in origins[:, :2].tolist()}) > 1
    ours = normalize(torch.stack(crops), origins).double().numpy()
    for i, (top, left, mirror) in enumerate(origins.tolist()):
        expected = caffe_data_transformer(face, mean_rgb, top, left, bool(mirror))
        np.testing.assert_allclose(ours[i], expected, atol=1e-4)


def test_centre_and_ten_crops_match_caffe(normalize: CaffeMeanImage, mean_rgb) -> None:  # noqa: ANN001
    face = _face(2)
    centre = normalize(EvalPreset(SPEC)(face)[None]).double().numpy()[0]
    offset = (SPEC.face_size - SPEC.crop_size) // 2  # Caffe TEST phase: h_off = (256 - 227) / 2
    expected = caffe_data_transformer(face, mean_rgb, offset, offset, False)
    np.testing.assert_allclose(centre, expected, atol=1e-4)

    crops, reported = EvalPreset(SPEC, ten_crop=True).with_origin(face)
    origins = ten_crop_origins(SPEC.resize_size, SPEC.crop_size)
    assert torch.equal(reported, origins)
    assert len({tuple(o) for o in origins.tolist()}) == 10
    ours = normalize(crops, origins).double().numpy()
    for i, (top, left, mirror) in enumerate(origins.tolist()):
        expected = caffe_data_transformer(face, mean_rgb, top, left, bool(mirror))
        np.testing.assert_allclose(ours[i], expected, atol=1e-4, err_msg=f"crop {i}")


def test_net_forward_feeds_the_trunk_the_caffe_input(mean_rgb) -> None:  # noqa: ANN001
    net = LeviHassnerNet("shared", mean="image").eval()
    net.set_mean_image(torch.from_numpy(mean_rgb))
    seen = []
    net.trunk.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    face = _face(3)
    torch.manual_seed(5)
    x, origin = TrainPreset(SPEC).with_origin(face)
    with torch.no_grad():
        net(x[None], origin[None])
    expected = caffe_data_transformer(face, mean_rgb, *origin[:2].tolist(), bool(origin[2]))
    np.testing.assert_allclose(seen[0][0].double().numpy(), expected, atol=1e-4)


def test_channel_mean_net_ignores_origin() -> None:
    net = LeviHassnerNet("shared").eval()
    assert isinstance(net.normalize, CaffeInput) and MEAN_KEY not in net.state_dict()
    x = torch.rand(2, 3, SPEC.crop_size, SPEC.crop_size) * 255
    with torch.no_grad():
        plain = net(x)
        with_origin = net(x, torch.tensor([[0, 0, 1], [29, 29, 0]]))
    assert torch.equal(plain["age"], with_origin["age"])


def test_bad_mean_and_origins_are_errors() -> None:
    with pytest.raises(ValueError, match="mean must be"):
        LeviHassnerNet(mean="pixel")
    with pytest.raises(ValueError, match="not a mean image"):
        LeviHassnerNet().set_mean_image(torch.zeros(3, SPEC.face_size, SPEC.face_size))
    module = CaffeMeanImage()
    with pytest.raises(ValueError, match="3 x H x W"):
        module.fill(torch.zeros(SPEC.face_size, SPEC.face_size, 3))
    with pytest.raises(ValueError, match="outside"):
        module(torch.zeros(1, 3, SPEC.crop_size, SPEC.crop_size), torch.tensor([[30, 0, 0]]))


def test_classifier_oversampling_uses_the_ten_origins(mean_rgb) -> None:  # noqa: ANN001
    net = LeviHassnerNet("shared", mean="image", tasks=("gender",)).eval()
    net.set_mean_image(torch.from_numpy(mean_rgb))
    face = _face(4)
    crops = EvalPreset(SPEC, ten_crop=True)(face)
    with torch.no_grad():
        expected = (
            net(crops, ten_crop_origins(SPEC.resize_size, SPEC.crop_size))["gender"]
            .softmax(1)
            .mean(0)
        )
        unshifted = net(crops)["gender"].softmax(1).mean(0)  # every crop with the centre mean
    classifier = FaceClassifier(net, oversample=True, channels_last=False)
    probs = classifier.predict(classifier.preprocess(face)[None])["gender"][0]
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    assert not np.allclose(probs, unshifted.numpy(), atol=1e-6)


# -- (b) compute_image_mean: the training faces' per-pixel mean ---------------------------------
def _small_cache(root: Path, n: int = 7, size: int = 8) -> tuple[FaceCache, np.ndarray]:
    rng = np.random.default_rng(7)
    faces = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    write_manifest(root, {"source": "aligned", "size": size})
    for shard, rows in enumerate((range(0, 4), range(4, n))):
        index = pd.DataFrame(
            {"key": [f"k{i}" for i in rows], "status": "ok", "offset": range(len(rows))}
        )
        write_shard(root, shard, faces[list(rows)], index)
    return FaceCache(root), faces


def test_compute_image_mean_is_the_per_pixel_mean_of_the_given_faces(tmp_path: Path) -> None:
    cache, faces = _small_cache(tmp_path)
    train = [1, 6, 2, 5]  # across both shards, out of order
    mean = compute_image_mean(cache, pd.Series([f"k{i}" for i in train]), chunk=3)
    assert mean.dtype == torch.float32 and mean.shape == (3, 8, 8)
    expected = faces[train].astype(np.float64).mean(axis=0).transpose(2, 0, 1)
    np.testing.assert_allclose(mean.numpy(), expected, atol=1e-4)
    everything = faces.astype(np.float64).mean(axis=0).transpose(2, 0, 1)
    assert not np.allclose(mean.numpy(), everything, atol=1e-2)
    with pytest.raises(ValueError, match="empty"):
        compute_image_mean(cache, pd.Series([], dtype=str))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:  # noqa: ANN001
    return demo_root(tmp_path_factory)


def _demo_datamodule(demo: Path, tmp: Path):  # noqa: ANN202
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=levi_hassner", *FAST, f"data.root={demo}"], tmp)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def test_datamodule_mean_is_the_training_split_only(demo: Path, tmp_path: Path) -> None:
    dm = _demo_datamodule(demo, tmp_path)
    cache = dm.datasets["train"].cache

    def numpy_mean(keys: pd.Series) -> np.ndarray:
        shard, offset = cache.lookup(keys)
        faces = np.stack([cache.face(int(s), int(o)) for s, o in zip(shard, offset, strict=True)])
        return faces.astype(np.float64).mean(axis=0).transpose(2, 0, 1)

    mean = dm.train_mean_image()
    assert mean.shape == (3, SPEC.face_size, SPEC.face_size) and mean.dtype == torch.float32
    np.testing.assert_allclose(mean.numpy(), numpy_mean(dm.splits["train"]["key"]), atol=1e-3)
    held_out = pd.concat([dm.splits["val"]["key"], dm.splits["test"]["key"]])
    assert not set(held_out) & set(dm.splits["train"]["key"])
    all_keys = pd.concat([dm.splits["train"]["key"], held_out])
    assert np.abs(mean.numpy() - numpy_mean(all_keys)).max() > 0.5


# -- (c) experiment=levi_hassner trains with it and stores it in every checkpoint -------------
@pytest.fixture(scope="module")
def paper_run(demo: Path, tmp_path_factory) -> tuple[Path, torch.Tensor]:  # noqa: ANN001
    from agegender.training.fit import train

    out = tmp_path_factory.mktemp("mean_run")
    overrides = [*PAPER_TWO_STEPS, f"data.root={demo}"]
    train(compose_train(overrides, out))
    return out, _demo_datamodule(demo, out / "dm").train_mean_image()


def test_checkpoints_carry_the_training_mean(paper_run: tuple[Path, torch.Tensor]) -> None:
    out, train_mean = paper_run
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert ckpts
    for path in ckpts:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        torch.testing.assert_close(state[f"model.{MEAN_KEY}"], train_mean)


def test_loaded_checkpoint_subtracts_its_mean_image(paper_run: tuple[Path, torch.Tensor]) -> None:
    out, train_mean = paper_run
    model, meta = load_model(out / "checkpoints" / "last.ckpt")
    assert meta["hyper_parameters"]["model_kwargs"]["mean"] == "image"
    assert isinstance(model.normalize, CaffeMeanImage)
    torch.testing.assert_close(model.normalize.mean_image, train_mean)

    kwargs = dict(meta["hyper_parameters"]["model_kwargs"], mean="channel")
    same_weights = LeviHassnerNet(**kwargs).eval()
    state = {k: v for k, v in model.state_dict().items() if k != MEAN_KEY}
    same_weights.load_state_dict(state, strict=True)
    x = EvalPreset(SPEC)(_face(6))[None]
    with torch.no_grad():
        ours, channel = model(x), same_weights(x)
        model.normalize.fill(torch.tensor(SPEC.mean[::-1]).view(3, 1, 1).expand_as(train_mean))
        flat = model(x)
    assert not torch.allclose(ours["age"], channel["age"], atol=1e-5)
    torch.testing.assert_close(flat["age"], channel["age"])  # the mean is the only difference


def test_resumed_fit_keeps_the_checkpoints_mean(
    paper_run: tuple[Path, torch.Tensor], demo: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    from agegender.data.datamodule import FaceDataModule
    from agegender.training.fit import train

    out, train_mean = paper_run
    calls = []

    def different_mean(self) -> torch.Tensor:  # noqa: ANN001
        calls.append(1)
        return torch.zeros(3, SPEC.face_size, SPEC.face_size)

    monkeypatch.setattr(FaceDataModule, "train_mean_image", different_mean)
    overrides = [
        "experiment=levi_hassner",
        *FAST,
        f"data.root={demo}",
        "model.model_kwargs.mode=shared",
        "selection=joint",
        "trainer.max_steps=3",
        "trainer.val_check_interval=1",
        "trainer.limit_val_batches=1",
        "test=false",
        "logger=none",
        "~callbacks.lr_monitor",
        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
    ]
    train(compose_train(overrides, tmp_path))
    assert not calls
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    torch.testing.assert_close(state["state_dict"][f"model.{MEAN_KEY}"], train_mean)


# -- (d) the original weights keep the channel means -----------------------------------------
def test_original_weights_keep_channel_means(tmp_path: Path) -> None:
    from agegender.caffe_io import convert_caffemodels

    path = convert_caffemodels(
        caffemodel_bytes(random_levi_hassner_params(8, seed=11)),
        caffemodel_bytes(random_levi_hassner_params(2, seed=12)),
        tmp_path / "original.pt",
    )
    saved = torch.load(path, weights_only=True)
    assert "mean" not in saved["model_kwargs"]
    assert not any("normalize" in k for k in saved["state_dict"])
    model, _ = load_model(path)
    assert model.mean == "channel" and isinstance(model.normalize, CaffeInput)
    torch.testing.assert_close(
        model.normalize.mean_rgb.flatten(), torch.tensor(SPEC.mean[::-1], dtype=torch.float32)
    )
