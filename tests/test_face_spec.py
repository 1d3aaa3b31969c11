"""One FaceSpec per network: its values, and that the cache key, the DataModule, the presets,
the LightningModule, checkpoints and prediction all take their sizes from it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agegender.checkpoints import load_model, save_model
from agegender.data import AdienceDataModule
from agegender.data.demo import generate_demo
from agegender.data.preprocess import FaceOptions
from agegender.models import LeviHassnerNet, build_model, face_spec
from agegender.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from agegender.runtime.torch_classifier import FaceClassifier
from agegender.spec import LEGACY_FRAMING, FaceSpec, face_spec_of
from agegender.training.module import AgeGenderModule
from agegender.transforms import EvalPreset, TrainPreset

CAFFE_MEANS_BGR = (78.4263377603, 87.7689143744, 114.895847746)  # mean.binaryproto


def _sizes(spec: FaceSpec) -> tuple[int, int, int]:
    return spec.face_size, spec.resize_size, spec.crop_size


def test_levi_hassner_spec_is_the_caffe_input() -> None:
    spec = face_spec("levi_hassner")
    assert spec is LeviHassnerNet.face_spec
    assert _sizes(spec) == (256, 256, 227)
    assert spec.channel_order == "BGR" and spec.mean == CAFFE_MEANS_BGR
    assert spec.std == (1.0, 1.0, 1.0) and not spec.mean_image
    assert spec.mean_rgb == CAFFE_MEANS_BGR[::-1]
    net = LeviHassnerNet(mode="shared")
    assert net.normalize.mean_rgb.flatten().tolist() == pytest.approx(spec.mean_rgb)
    image_net = LeviHassnerNet(mode="shared", mean="image")
    assert image_net.face_spec == dataclasses.replace(spec, mean_image=True)
    assert tuple(image_net.normalize.mean_image.shape) == (3, 256, 256)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_spec_is_imagenet_on_the_same_256_faces(name: str) -> None:
    spec = face_spec(name)
    assert _sizes(spec) == (256, 256, 224) and spec.channel_order == "RGB"
    assert spec.mean == pytest.approx([255 * m for m in IMAGENET_MEAN])
    assert spec.std == pytest.approx([255 * s for s in IMAGENET_STD])
    model = build_model(name)
    assert model.face_spec == spec
    assert model.normalize.mean.flatten().tolist() == pytest.approx(spec.mean)
    assert model.normalize.std.flatten().tolist() == pytest.approx(spec.std)


def test_facenet_spec() -> None:
    spec = face_spec("inception_resnet_v1")
    assert _sizes(spec) == (256, 182, 160) and spec.channel_order == "RGB"
    assert (spec.mean, spec.std) == ((127.5,) * 3, (128.0,) * 3)


def test_spec_validates() -> None:
    with pytest.raises(ValueError, match="larger"):
        FaceSpec(256, 200, 227, (0, 0, 0))
    with pytest.raises(ValueError, match="channel_order"):
        FaceSpec(256, 256, 227, (0, 0, 0), channel_order="BRG")
    with pytest.raises(ValueError, match="per channel"):
        FaceSpec(256, 256, 227, (0, 0))
    with pytest.raises(TypeError, match="no face_spec"):
        face_spec_of(torch.nn.Linear(2, 2))


def test_presets_take_the_spec() -> None:
    face = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    resnet = face_spec("resnet18")
    assert EvalPreset(resnet)(face).shape == (3, 224, 224)
    assert EvalPreset(resnet, ten_crop=True)(face).shape == (10, 3, 224, 224)
    x, origin = TrainPreset(resnet).with_origin(face)
    assert x.shape == (3, 224, 224) and origin[:2].min() >= 0 and origin[:2].max() <= 32


def test_module_and_checkpoint_expose_the_net_spec(tmp_path) -> None:
    module = AgeGenderModule("resnet18", {"tasks": ["age", "gender"]})
    assert module.face_spec is module.model.face_spec == face_spec("resnet18")
    assert "input_size" not in module.hparams and "resize_size" not in module.hparams
    path = save_model(module.model, "resnet18", {"tasks": ["age", "gender"]}, tmp_path / "r.pt")
    loaded, _ = load_model(path)
    assert face_spec_of(loaded) == face_spec("resnet18")


def test_old_lightning_checkpoint_with_sizes_still_loads(tmp_path) -> None:
    """Checkpoints written before the spec carry input_size/resize_size hyper-parameters."""
    kwargs = {"mode": "shared", "tasks": ["age", "gender"]}
    module = AgeGenderModule("levi_hassner", kwargs)
    hparams = {**dict(module.hparams), "input_size": 227, "resize_size": 256}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    model, meta = load_model(path)
    # sizes from the class; the framing such an old checkpoint was trained with: legacy
    legacy = dataclasses.replace(face_spec("levi_hassner"), framing=LEGACY_FRAMING)
    assert model.face_spec == legacy
    assert meta["hyper_parameters"]["input_size"] == 227
    again = AgeGenderModule(**hparams)  # what LightningModule.load_from_checkpoint does
    assert again.face_spec == face_spec("levi_hassner")
    with pytest.raises(ValueError, match="resize_size=256"):
        AgeGenderModule(**{**hparams, "resize_size": 300})


@pytest.mark.parametrize(("model", "crop"), [("resnet18", 224), ("inception_resnet_v1", 160)])
def test_classifier_reads_the_model_spec(model: str, crop: int) -> None:
    net = build_model(model)
    face = np.zeros((256, 256, 3), np.uint8)
    classifier = FaceClassifier(net, channels_last=False)
    assert classifier.face_spec == net.face_spec
    assert classifier.preprocess(face).shape == (3, crop, crop)
    classifier = FaceClassifier(net, oversample=True, channels_last=False)
    assert classifier.preprocess(face).shape == (10, 3, crop, crop)


def test_cache_key_size_is_the_spec_face_size() -> None:
    default = FaceOptions()
    assert default.size == face_spec().face_size == 256
    assert default.settings() == FaceOptions(size=256).settings()  # existing caches stay valid
    assert FaceOptions("aligned").cache_name() == "aligned-2b9b2b9f43"
    assert FaceOptions(size=320).cache_key() != default.cache_key()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("spec") / "demo", users=6, images_per_user=2)


def _dm(root, **kwargs):
    kwargs = {"num_workers": 0, "batch_size": 4, "source": "aligned", **kwargs}
    return AdienceDataModule(root, preprocess={"progress": False, "workers": 1}, **kwargs)


def test_datamodule_crops_follow_the_model_from_one_cache(demo_root) -> None:
    lh = _dm(demo_root, auto_preprocess=True)
    lh.prepare_data()
    resnet = _dm(demo_root, model_name="resnet18")
    assert resnet.face_spec == face_spec("resnet18")
    assert resnet.cache_dir == lh.cache_dir  # the same 256 faces
    assert resnet.face_options().size == lh.face_options().size == 256
    resnet.setup("fit")
    assert resnet.uncached() == 0
    assert next(iter(resnet.train_dataloader()))["image"].shape == (4, 3, 224, 224)
    centre, ten = resnet.test_dataloader()
    assert next(iter(centre))["image"].shape == (4, 3, 224, 224)
    assert next(iter(ten))["image"].shape == (4, 10, 3, 224, 224)
    given = _dm(demo_root, face_spec=dataclasses.asdict(face_spec("resnet18")))  # as a config
    assert given.face_spec == resnet.face_spec


def test_another_face_size_is_another_cache_same_crops(demo_root) -> None:
    big = _dm(demo_root, face_size=320)
    assert big.face_options().size == 320 and big.face_spec.crop_size == 227
    assert big.cache_dir != _dm(demo_root).cache_dir
    assert "++data.face_size=320" in big.preprocess_command()
    assert "face_size" not in _dm(demo_root, model_name="resnet50").preprocess_command()


def test_config_data_follows_the_model(tmp_path) -> None:
    from hydra.utils import instantiate
    from training_fixtures import compose_train

    cfg = compose_train(["model=resnet18", "data.face_size=320"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.face_spec == face_spec("resnet18")
    assert datamodule.face_options().size == 320
