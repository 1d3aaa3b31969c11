"""Transfer backbones: shapes and sizes, normalisation inside, pretrained weights from local
files only (clear error when absent, never a download), fine-tuning freeze/unfreeze."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from agegender.models import build_model
from agegender.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from agegender.training.finetuning import FreezeBackbone
from agegender.training.module import AgeGenderModule
from agegender.training.optim import build_optimizer
from agegender.training.pretrained import (
    PretrainedWeightsNotFoundError,
    load_pretrained,
    resolve_pretrained,
)

SIZES = {"resnet18": (224, 256), "resnet50": (224, 256), "inception_resnet_v1": (160, 182)}


@pytest.mark.parametrize("name", ["resnet18", "inception_resnet_v1"])
def test_heads_and_sizes(name: str) -> None:
    model = build_model(name, tasks=["age", "gender"]).eval()
    crop = model.face_spec.crop_size
    assert (crop, model.face_spec.resize_size) == SIZES[name]
    with torch.no_grad():
        out = model(torch.rand(2, 3, crop, crop) * 255)
    assert out["age"].shape == (2, 8) and out["gender"].shape == (2, 2)
    assert build_model(name, tasks=["gender"]).tasks == ("gender",)


def test_resnet50_builds_with_two_heads() -> None:
    model = build_model("resnet50")
    assert model.heads["age"].in_features == 2048
    assert model.face_spec.crop_size == 224


def test_resnet_normalises_0_255_rgb_with_imagenet_statistics() -> None:
    model = build_model("resnet18")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    out = model.normalize(mean.expand(1, 3, 4, 4).clone())
    assert out.abs().max() < 1e-5
    one_std = model.normalize(mean + torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)
    assert torch.allclose(one_std, torch.ones_like(one_std), atol=1e-5)


def test_facenet_standardisation_matches_facenet_pytorch() -> None:
    from facenet_pytorch import fixed_image_standardization

    model = build_model("inception_resnet_v1")
    x = torch.rand(1, 3, 8, 8) * 255
    assert torch.allclose(model.normalize(x), fixed_image_standardization(x))


def test_facenet_backbone_is_built_without_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted a download")

    monkeypatch.setattr(irv1, "download_url_to_file", no_network)
    build_model("inception_resnet_v1")


def test_missing_library_weights_name_the_file_and_where_to_put_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsNotFoundError) as err:
        resolve_pretrained("resnet18", "imagenet")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    with pytest.raises(PretrainedWeightsNotFoundError, match="20180402-114759-vggface2.pt"):
        resolve_pretrained("inception_resnet_v1", "vggface2")
    with pytest.raises(PretrainedWeightsNotFoundError, match="nope.pth does not exist"):
        AgeGenderModule("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_file_loads_into_backbone_and_leaves_heads(tmp_path) -> None:
    # A torchvision-format state dict (with its 1000-class fc) as a file.
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(reference.conv1.weight, 0.5)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)

    model = build_model("resnet18")
    heads_before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    load_pretrained(model, "resnet18", str(path))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    for key, value in model.heads.state_dict().items():
        assert torch.equal(value, heads_before[key])


def test_pretrained_file_of_the_wrong_network_is_refused(tmp_path) -> None:
    path = tmp_path / "lh.pth"
    torch.save(build_model("levi_hassner", mode="shared").state_dict(), path)
    with pytest.raises(ValueError, match="does not hold resnet18 backbone weights"):
        load_pretrained(build_model("resnet18"), "resnet18", str(path))


def test_backbone_lr_multiplier_gives_backbone_its_own_group() -> None:
    model = build_model("resnet18")
    optimizer = build_optimizer(
        model,
        {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        {"backbone_lr_mult": 0.1},
    )
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone/weight"]["lr"] == pytest.approx(1e-4)
    assert groups["heads/weight"]["lr"] == pytest.approx(1e-3)


class _Recorder(pl.Callback):
    def __init__(self) -> None:
        self.frozen_by_epoch: dict[int, bool] = {}
        self.changed_by_epoch: dict[int, bool] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._before = module.model.backbone.conv1.weight.detach().clone()
        params = list(module.model.backbone.parameters())
        self.frozen_by_epoch[trainer.current_epoch] = not any(p.requires_grad for p in params)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        now = module.model.backbone.conv1.weight.detach()
        self.changed_by_epoch[trainer.current_epoch] = not torch.equal(now, self._before)


def test_freeze_backbone_trains_heads_first_then_everything() -> None:
    from training_fixtures import RandomDataModule

    module = AgeGenderModule(
        "resnet18",
        {"tasks": ["age", "gender"]},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
        param_groups={"backbone_lr_mult": 0.1},
    )
    heads_before = module.model.heads["age"].weight.detach().clone()
    recorder = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=0,
        callbacks=[FreezeBackbone(unfreeze_at_epoch=1), recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, RandomDataModule(size=64, n_train=4, batch_size=4))
    assert recorder.frozen_by_epoch == {0: True, 1: False}
    assert recorder.changed_by_epoch == {0: False, 1: True}
    assert not torch.equal(module.model.heads["age"].weight, heads_before)
