"""The paper's training protocol: per-task batches (each net sees only its own labelled list)
and per-task checkpoint choice (each task's network from its own best validation), plus
``selection=final``; both survive a kill and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchdata.stateful_dataloader import StatefulDataLoader
from training_fixtures import FAST, compose_train, demo_root

from agegender.checkpoints import load_model
from agegender.training.fit import resolve_ckpt_path, train
from agegender.training.module import AgeGenderModule
from agegender.training.optim import build_optimizer
from agegender.training.selection import PER_TASK_FILE, task_of

PAPER = ["experiment=levi_hassner", *FAST, "logger=none", "~callbacks.lr_monitor"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:  # noqa: ANN001
    return demo_root(tmp_path_factory)


# -- per-task batches --------------------------------------------------------------------------
def test_per_task_batches_are_full_and_labelled_for_their_own_task(
    demo: Path, tmp_path: Path
) -> None:
    cfg = compose_train([*PAPER, f"data.root={demo}"], tmp_path)
    assert cfg.data.train_batches == "per_task"
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    rows = datamodule.splits["train"]
    # positions in the training table (what a batch's "index" holds)
    unlabelled = {t: set(np.flatnonzero(rows[t].to_numpy() < 0)) for t in ("age", "gender")}
    assert unlabelled["age"] and unlabelled["gender"]  # the demo has rows to leave out

    combined = datamodule.train_dataloader()
    assert combined._mode == "max_size_cycle"
    assert set(combined.iterables) == {"age", "gender"}
    assert all(isinstance(dl, StatefulDataLoader) for dl in combined.iterables.values())
    seen: dict[str, list[int]] = {"age": [], "gender": []}
    steps = 0
    for batch, _, _ in combined:
        steps += 1
        assert set(batch) == {"age", "gender"}
        for task, faces in batch.items():
            assert faces["image"].shape[0] == datamodule.batch_size
            assert (faces[task] >= 0).all() and faces[f"{task}_mask"].all()
            seen[task] += faces["index"].tolist()
    # one epoch = one pass over the longest list (full batches only); the shorter restarts
    labelled = {t: len(rows) - len(unlabelled[t]) for t in seen}
    longest = max(labelled.values()) // datamodule.batch_size
    assert steps == longest == len(combined)
    for task, indices in seen.items():
        assert not set(indices) & unlabelled[task]
        one_pass = labelled[task] // datamodule.batch_size * datamodule.batch_size
        assert len(set(indices[:one_pass])) == one_pass  # a pass holds each face once
    shorter = min(labelled, key=labelled.get)
    assert steps > labelled[shorter] // datamodule.batch_size  # so the shorter list cycled


def test_joint_batches_stay_the_default(demo: Path, tmp_path: Path) -> None:
    cfg = compose_train([*FAST, f"data.root={demo}"], tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert cfg.selection == "joint"
    assert isinstance(datamodule.train_dataloader(), StatefulDataLoader)


def _faces(n: int, task: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 8 if task == "age" else 2, (n,), generator=g)
    return {"image": torch.rand(n, 3, 227, 227, generator=g) * 255, task: labels}


def _params(module: torch.nn.Module, prefix: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.model.named_parameters() if n.startswith(prefix)}


def test_each_network_learns_from_its_own_batches_only() -> None:
    """The age network's gradient is exactly that of the mean cross-entropy over the age batch
    alone; the gender batch never runs through it, and a gender-only update leaves it as is."""
    torch.manual_seed(0)
    module = AgeGenderModule(model_kwargs={"mode": "separate", "dropout": 0.0}).eval()
    batches = {"age": _faces(3, "age", 1), "gender": _faces(5, "gender", 2)}
    calls: list[int] = []
    module.model.trunks["age"].register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    losses = module.per_task_losses(batches)
    assert calls == [3]  # only the 3 age faces went through the age trunk

    age = {**_params(module, "trunks.age."), **_params(module, "heads.age.")}
    total = torch.autograd.grad(module.total_loss(losses), list(age.values()), retain_graph=True)
    net = module.model
    alone = F.cross_entropy(
        net.heads["age"](net.trunks["age"](net.normalize(batches["age"]["image"]))),
        batches["age"]["age"],
    )
    expected = torch.autograd.grad(alone, list(age.values()))
    for got, want in zip(total, expected, strict=True):
        torch.testing.assert_close(got, want)
    from_gender = torch.autograd.grad(losses["gender"], list(age.values()), allow_unused=True)
    assert all(g is None for g in from_gender)

    # one SGD step (the paper's: momentum, weight decay) on the gender loss alone
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9}
    optimizer = build_optimizer(module.model, {**sgd, "weight_decay": 5e-4}, {"bias_lr_mult": 2})
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    optimizer.zero_grad()
    losses["gender"].backward()
    optimizer.step()
    changed = {
        name: not torch.equal(param, before[name])
        for name, param in module.model.named_parameters()
    }
    assert not any(c for n, c in changed.items() if task_of(n, ["age", "gender"]) == "age")
    assert changed["heads.gender.weight"] and changed["trunks.gender.conv1.weight"]


def test_shared_trunk_per_task_batches_train_only_their_head() -> None:
    module = AgeGenderModule(model_kwargs={"mode": "shared", "dropout": 0.0}).eval()
    batches = {"age": _faces(2, "age", 1), "gender": _faces(2, "gender", 2)}
    losses = module.per_task_losses(batches)
    head = list(_params(module, "heads.gender.").values())
    assert all(g is None for g in torch.autograd.grad(losses["age"], head, allow_unused=True))
    with pytest.raises(ValueError, match="data.train_tasks"):
        module.per_task_losses({"age": batches["age"]})


# -- per-task checkpoint choice ----------------------------------------------------------------
class ScriptedAccuracy(pl.Callback):
    """Replaces the validation accuracies the module logs by scripted ones (by global step),
    so the best age and the best gender steps differ for sure."""

    def __init__(self, scores: dict[str, dict[int, float]]) -> None:
        self.scores = scores

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # runs just before the module's own hook, which computes and logs the figures
        if trainer.state.fn != "fit":
            return
        stage = module.metrics["val"]
        compute = type(stage).compute_and_reset

        def scripted(prefix: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
            scalars, confusion = compute(stage, prefix)
            for task, by_step in self.scores.items():
                scalars[f"{prefix}/{task}_acc"] = by_step[trainer.global_step]
            del stage.compute_and_reset  # one validation only
            return scalars, confusion

        stage.compute_and_reset = scripted


class RecordTestedWeights(pl.Callback):
    def on_test_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}


SCORES = {
    "age": {2: 0.9, 4: 0.2, 6: 0.1, 8: 0.5},
    "gender": {2: 0.1, 4: 0.2, 6: 0.9, 8: 0.5},
}


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow  # ~45 s of training
def test_per_task_selection_tests_each_tasks_best_network(demo: Path, tmp_path: Path) -> None:
    overrides = [*PAPER, f"data.root={demo}", "trainer.val_check_interval=2"]
    cfg = compose_train([*overrides, "trainer.max_steps=6"], tmp_path)
    tested = RecordTestedWeights()
    objective = train(cfg, extra_callbacks=[ScriptedAccuracy(SCORES), tested])

    folder = tmp_path / "checkpoints"
    names = {p.name for p in folder.glob("*.ckpt")}
    age_best, gender_best = (
        "best-age-epoch000-step000002.ckpt",
        "best-gender-epoch000-step000006.ckpt",
    )
    assert names == {age_best, gender_best, PER_TASK_FILE, "last.ckpt"}
    age, gender, assembled = (_state(folder / n) for n in (age_best, gender_best, PER_TASK_FILE))
    tasks = ("age", "gender")
    assert set(assembled) == set(age)
    for key, value in assembled.items():
        owner = task_of(key, tasks)
        if owner is None:  # common to the tasks: the input's per-pixel mean image only
            assert key == "model.normalize.mean_image", key
            assert torch.equal(value, age[key]) and torch.equal(value, gender[key])
            continue
        assert torch.equal(value, (age if owner == "age" else gender)[key]), key
        other = gender if owner == "age" else age
        assert not torch.equal(value, other[key]), key  # the two bests really differ

    # what was tested (and written to metrics.json) is the assembled network
    assert tested.state.keys() == assembled.keys()
    for key, value in assembled.items():
        assert torch.equal(tested.state[key], value), key
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert objective == pytest.approx(metrics["val/acc"])
    for key in ("test/age_acc", "test/gender_acc", "test_10crop/age_acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    model, _ = load_model(folder / PER_TASK_FILE)
    torch.testing.assert_close(model.heads["gender"].weight, gender["model.heads.gender.weight"])

    # resume from last.ckpt (written after the step-6 validation): both bests come back, so
    # the weaker step-8 scores replace neither
    callbacks = torch.load(folder / "last.ckpt", weights_only=True)["callbacks"]
    assert {s["best_model_path"] for k, s in callbacks.items() if "TaskCheckpoint" in k} == {
        str(folder / age_best),
        str(folder / gender_best),
    }
    resumed = compose_train([*overrides, "trainer.max_steps=8", "ckpt_path=last"], tmp_path)
    train(resumed, extra_callbacks=[ScriptedAccuracy(SCORES)])
    assert {p.name for p in folder.glob("best-*.ckpt")} == {age_best, gender_best, PER_TASK_FILE}
    assembled_again = _state(folder / PER_TASK_FILE)
    assert all(torch.equal(assembled_again[k], v) for k, v in assembled.items())


def test_per_task_selection_refuses_a_shared_trunk_before_training(
    demo: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [*PAPER, f"data.root={demo}", "model.model_kwargs.mode=shared", "trainer.max_steps=2"],
        tmp_path,
    )
    with pytest.raises(ValueError, match="selection=joint or selection=final"):
        train(cfg)
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))


def test_task_checkpoint_of_a_task_the_network_lacks_saves_nothing(
    demo: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [
            *PAPER,
            f"data.root={demo}",
            "model.model_kwargs.tasks=[gender]",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "test=false",
        ],
        tmp_path,
    )
    train(cfg)
    names = {p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")}
    assert names == {"best-gender-epoch000-step000002.ckpt", PER_TASK_FILE, "last.ckpt"}


@pytest.mark.slow  # ~20 s of training
def test_selection_final_tests_the_last_weights(demo: Path, tmp_path: Path) -> None:
    overrides = [*PAPER, f"data.root={demo}", "selection=final", "trainer.max_steps=3"]
    cfg = compose_train([*overrides, "trainer.val_check_interval=2"], tmp_path)

    class RecordWeights(pl.Callback):
        """At the step-2 validation (what a best-by-validation choice could pick) and at
        the end of training."""

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if trainer.state.fn == "fit":
                self.validated = {k: v.detach().clone() for k, v in module.state_dict().items()}

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.final = {k: v.detach().clone() for k, v in module.state_dict().items()}

    weights, tested = RecordWeights(), RecordTestedWeights()
    train(cfg, extra_callbacks=[weights, tested])
    folder = tmp_path / "checkpoints"
    assert {p.name for p in folder.glob("*.ckpt")} == {"final.ckpt", "last.ckpt"}
    saved = torch.load(folder / "final.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    # last.ckpt (resume) is always the newest state: here the end of training
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3
    assert any(not torch.equal(weights.validated[k], v) for k, v in weights.final.items())
    for key, value in weights.final.items():
        assert torch.equal(tested.state[key], value), key
        assert torch.equal(saved["state_dict"][key], value), key


# -- resume ------------------------------------------------------------------------------------
class Crash(RuntimeError):
    pass


class CrashAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            raise Crash(f"simulated kill at step {trainer.global_step}")


class RecordBatches(pl.Callback):
    """The dataset indices of every per-task training batch, by global step."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, list[int]]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        self.by_step[trainer.global_step] = {t: b["index"].tolist() for t, b in batch.items()}


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_mid_epoch_resume_continues_both_task_lists(demo: Path, tmp_path: Path) -> None:
    common = [
        *PAPER,
        f"data.root={demo}",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "test=false",
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
    ]
    whole = RecordBatches()
    train(compose_train(common, tmp_path / "whole"), extra_callbacks=[whole])

    first = tmp_path / "first"
    with pytest.raises(Crash):
        train(compose_train(common, first), extra_callbacks=[CrashAtStep(5)])
    saved = torch.load(resolve_ckpt_path(str(first), tmp_path), weights_only=True)
    assert saved["global_step"] == 4
    assert len(saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]) == 2  # both lists

    resumed = RecordBatches()
    cfg = compose_train([*common, f"ckpt_path={first}"], tmp_path / "second")
    train(cfg, extra_callbacks=[resumed])
    assert sorted(resumed.by_step) == [4, 5, 6, 7]
    assert resumed.by_step == {step: whole.by_step[step] for step in range(4, 8)}
    assert whole.by_step[4]["age"] != whole.by_step[4]["gender"]  # two lists, two orders
