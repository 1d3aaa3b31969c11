"""Checkpoint format: round trips, Lightning checkpoints from train.py, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agegender.checkpoints import FORMAT, CheckpointError, load_model, save_model
from agegender.models import MODEL_BUILDERS, LeviHassnerNet, build_model
from agegender.spec import ADIENCE_FRAMING


class Tiny(nn.Module):
    """A cheap registered model, so error-path tests do not write 46 MB files."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(3, width)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"age": self.fc(x)}


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch):
    monkeypatch.setitem(MODEL_BUILDERS, "tiny", Tiny)


def _outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model(x)


def test_round_trip_levi_hassner(tmp_path):
    torch.manual_seed(0)
    kwargs = {"mode": "shared", "tasks": ["age", "gender"], "dropout": 0.3}
    model = build_model("levi_hassner", **kwargs).train()
    path = save_model(model, "levi_hassner", kwargs, tmp_path / "m.pt", meta={"fold": 2})
    raw = torch.load(path, weights_only=True)  # the plain-data promise, checked directly
    assert raw["format"] == FORMAT and raw["model_name"] == "levi_hassner"
    loaded, meta = load_model(path)
    assert isinstance(loaded, LeviHassnerNet) and loaded.mode == "shared"
    assert not loaded.training and meta == {"fold": 2, "framing": ADIENCE_FRAMING.to_config()}
    x = torch.rand(2, 3, 227, 227) * 255
    model.eval()
    for task, logits in _outputs(model, x).items():
        torch.testing.assert_close(_outputs(loaded, x)[task], logits, rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_save_rejects_non_plain_kwargs(tmp_path):
    from omegaconf import OmegaConf

    with pytest.raises(TypeError, match="OmegaConf.to_container"):
        save_model(Tiny(), "tiny", {"width": OmegaConf.create([4])}, tmp_path / "a.pt")
    with pytest.raises(TypeError, match=r"meta\['when'\]"):
        save_model(Tiny(), "tiny", {}, tmp_path / "a.pt", meta={"when": object()})
    assert not list(tmp_path.iterdir())


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = save_model(Tiny(), "tiny", {"width": 4}, tmp_path / "a.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(Tiny(8), "tiny", {"width": 8}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def _lightning_style(model: nn.Module, hparams: dict, prefix: str = "model.") -> dict:
    state = {prefix + k: v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(2)  # other LightningModule state is ignored
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "hyper_parameters": hparams,
        "optimizer_states": [],
    }


def test_lightning_style_dict(tmp_path):
    model = Tiny(5)
    ckpt = _lightning_style(model, {"model_name": "tiny", "model_kwargs": {"width": 5}, "lr": 0.1})
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded, meta = load_model(tmp_path / "last.ckpt")
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight, rtol=0, atol=0)
    assert meta["source"] == "lightning" and meta["epoch"] == 3 and meta["global_step"] == 120
    assert meta["hyper_parameters"]["lr"] == 0.1


def test_compiled_model_keys(tmp_path):
    model = Tiny(5)
    hparams = {"model_name": "tiny", "model_kwargs": {"width": 5}}
    torch.save(_lightning_style(model, hparams, prefix="model._orig_mod."), tmp_path / "c.ckpt")
    loaded, _ = load_model(tmp_path / "c.ckpt")
    torch.testing.assert_close(loaded.fc.bias, model.fc.bias, rtol=0, atol=0)


def test_real_lightning_checkpoint(tmp_path):
    """A checkpoint written by a Lightning Trainer from a module shaped like train.py's."""
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self, model_name: str, model_kwargs: dict, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = build_model(model_name, **model_kwargs)

        def training_step(self, batch, batch_idx):
            return self.model(batch[0])["age"].square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 3)), 2)
    module = Module("tiny", {"width": 6})
    trainer = pl.Trainer(
        max_steps=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "fit.ckpt")
    loaded, meta = load_model(tmp_path / "fit.ckpt")
    torch.testing.assert_close(loaded.fc.weight, module.model.fc.weight, rtol=0, atol=0)
    assert meta["global_step"] == 2


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "not a PyTorch checkpoint"),
        (b"hello, I am text", "not a PyTorch checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, error):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=error):
        load_model(tmp_path / "x.pt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "absent.pt")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ([1, 2], "not a checkpoint dict"),
        ({"weights": 1}, "neither an agegender model checkpoint"),
        ({"format": "other.v9"}, "unsupported checkpoint format"),
        ({"state_dict": {}, "hyper_parameters": {"lr": 1}}, "without hyper_parameters"),
        (
            {
                "state_dict": {"net.fc.weight": torch.ones(1)},
                "hyper_parameters": {"model_name": "t"},
            },
            "no 'model.\\*' keys",
        ),
    ],
)
def test_malformed_checkpoints(tmp_path, payload, error):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=error):
        load_model(tmp_path / "x.pt")


def test_weights_that_do_not_fit(tmp_path):
    save_model(Tiny(4), "tiny", {"width": 4}, tmp_path / "a.pt")
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    raw["model_kwargs"] = {"width": 7}
    torch.save(raw, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="do not fit model 'tiny'"):
        load_model(tmp_path / "b.pt")
    raw["model_name"] = "no_such_model"
    torch.save(raw, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="cannot build model 'no_such_model'"):
        load_model(tmp_path / "c.pt")


class Evil:
    """Anything weights_only loading must refuse rather than execute."""


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"format": FORMAT, "meta": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="unsafe to unpickle"):
        load_model(tmp_path / "evil.pt")


#: hyper_parameters as train.py saved them before the optimiser and scheduler became Hydra
#: `_partial_` configs (group multipliers inside `optimizer`, the schedule by `name`).
OLD_STYLE_HPARAMS = {
    "model_name": "tiny_tasks",
    "model_kwargs": {"width": 8},
    "pretrained": None,
    "input_size": None,
    "resize_size": None,
    "loss_weights": {"age": 1.0},
    "label_smoothing": 0.0,
    "optimizer": {
        "_target_": "torch.optim.SGD",
        "lr": 0.001,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "bias_lr_mult": 2.0,
        "bias_weight_decay": 0.0,
        "head_lr_mult": 10.0,
    },
    "scheduler": {"name": "step", "step_size": 10000, "gamma": 0.1},
    "channels_last": False,
}


def test_checkpoint_with_old_optimizer_hparams_still_loads(tmp_path, monkeypatch):
    """Prediction needs only model_name/model_kwargs/state_dict; the module itself also still
    accepts the old hyper-parameters (only configure_optimizers would refuse them)."""
    from agegender.training.module import AgeGenderModule

    class TinyTasks(Tiny):
        tasks = ("age",)

    monkeypatch.setitem(MODEL_BUILDERS, "tiny_tasks", TinyTasks)
    model = TinyTasks(8)
    torch.save(_lightning_style(model, OLD_STYLE_HPARAMS), tmp_path / "old.ckpt")
    loaded, meta = load_model(tmp_path / "old.ckpt")
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight, rtol=0, atol=0)
    assert meta["hyper_parameters"]["optimizer"]["bias_lr_mult"] == 2.0
    hparams = torch.load(tmp_path / "old.ckpt", weights_only=True)["hyper_parameters"]
    module = AgeGenderModule(**hparams)
    assert module.hparams.scheduler == {"name": "step", "step_size": 10000, "gamma": 0.1}
    with pytest.raises(ValueError, match="_partial_: true"):
        module.configure_optimizers()
