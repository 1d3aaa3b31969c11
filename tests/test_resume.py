"""A run killed mid-epoch resumes from its last checkpoint at the same step, with the same
optimiser (momentum) and scheduler state; ``ckpt_path`` forms resolve or fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from training_fixtures import FAST, compose_train, demo_root

from agegender.errors import CheckpointError
from agegender.training.fit import resolve_ckpt_path, train


class Crash(RuntimeError):
    pass


class CrashAtStep(pl.Callback):
    """Simulates a killed process: raises once ``global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            raise Crash(f"simulated kill at step {trainer.global_step}")


class RecordBatches(pl.Callback):
    """The dataset indices of every training batch, by global step."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        self.by_step[trainer.global_step] = batch["index"].tolist()


class RecordStart(pl.Callback):
    """What the resumed run starts from (after Lightning restored the checkpoint)."""

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        self.global_step = trainer.global_step
        self.epoch = trainer.current_epoch
        self.lrs = [g["lr"] for g in optimizer.param_groups]
        self.scheduler = trainer.lr_scheduler_configs[0].scheduler.state_dict()
        self.momentum = {
            i: optimizer.state[p]["momentum_buffer"].clone()
            for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])
        }
        self.weight = module.model.heads["age"].weight.detach().clone()

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.final_step = trainer.global_step
        self.final_scheduler_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch


def test_killed_run_resumes_at_same_step_with_optimizer_and_scheduler_state(
    tmp_path_factory, tmp_path: Path
) -> None:  # noqa: ANN001
    demo = demo_root(tmp_path_factory)
    common = [
        "experiment=levi_hassner",
        *FAST,
        f"data.root={demo}",
        "model.model_kwargs.mode=shared",
        "selection=joint",  # per-task selection needs separate trunks
        "model.scheduler.step_size=3",  # the lr decays before the kill: state must carry it
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "test=false",
        "logger=none",
        "~callbacks.lr_monitor",
    ]
    first = tmp_path / "first"
    cfg = compose_train([*common, "trainer.max_steps=8"], first)
    with pytest.raises(Crash):
        train(cfg, extra_callbacks=[CrashAtStep(5)])

    last = resolve_ckpt_path(str(first), tmp_path)  # the newest checkpoint of that run
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4  # the every-2-steps checkpoint before the kill
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0  # mid-epoch

    recorder = RecordStart()
    cfg = compose_train([*common, "trainer.max_steps=8", f"ckpt_path={first}"], tmp_path / "second")
    train(cfg, extra_callbacks=[recorder])

    assert recorder.global_step == 4 and recorder.epoch == 0
    opt_state = saved["optimizer_states"][0]
    assert recorder.lrs == pytest.approx([g["lr"] for g in opt_state["param_groups"]])
    assert recorder.lrs[0] == pytest.approx(1e-4)  # 1e-3 decayed once at step 3
    assert recorder.scheduler["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"] == 4
    for i, buffer in recorder.momentum.items():
        assert torch.equal(buffer, opt_state["state"][i]["momentum_buffer"])
    assert torch.equal(recorder.weight, saved["state_dict"]["model.heads.age.weight"])
    assert recorder.final_step == 8 and recorder.final_scheduler_epoch == 8


def test_ckpt_path_forms(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}}, last)
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    assert resolve_ckpt_path(str(tmp_path), tmp_path / "elsewhere") == str(last)
    assert resolve_ckpt_path(str(tmp_path / "checkpoints"), tmp_path / "x") == str(last)
    assert resolve_ckpt_path(str(last), tmp_path / "elsewhere") == str(last)
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        resolve_ckpt_path("last", tmp_path / "fresh")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), tmp_path)
    last.write_bytes(b"x")  # not a checkpoint: refused before Lightning reads it
    with pytest.raises(CheckpointError):
        resolve_ckpt_path(str(last), tmp_path)


@pytest.mark.slow  # ~22 s of training; the killed-run resume test runs by default
def test_mid_epoch_resume_continues_the_epochs_data_order(tmp_path_factory, tmp_path) -> None:  # noqa: ANN001
    """The training loader's position is in the checkpoint: after a kill at step 5 and a
    resume from step 4, steps 4..7 see exactly the batches an uninterrupted run sees."""
    demo = demo_root(tmp_path_factory)
    common = [
        *FAST,
        f"data.root={demo}",
        "model=levi_hassner_shared",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "test=false",
        "logger=none",
        "~callbacks.lr_monitor",
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
    ]
    whole = RecordBatches()
    train(compose_train(common, tmp_path / "whole"), extra_callbacks=[whole])

    first = tmp_path / "first"
    with pytest.raises(Crash):
        train(compose_train(common, first), extra_callbacks=[CrashAtStep(5)])
    saved = torch.load(resolve_ckpt_path(str(first), tmp_path), weights_only=True)
    assert saved["global_step"] == 4 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]

    resumed = RecordBatches()
    cfg = compose_train([*common, f"ckpt_path={first}"], tmp_path / "second")
    train(cfg, extra_callbacks=[resumed])
    assert sorted(resumed.by_step) == [4, 5, 6, 7]
    assert resumed.by_step == {step: whole.by_step[step] for step in range(4, 8)}
    assert whole.by_step[4] != whole.by_step[0]  # shuffled: positions differ


# -- exact resume: a killed or stopped run, resumed, ends with the uninterrupted run's metrics --
EXACT = [
    "experiment=levi_hassner",
    *FAST,
    "data.batch_size=8",
    "trainer.limit_train_batches=4",  # 4 steps per epoch
    "trainer.max_steps=-1",
    "callbacks.last_checkpoint.every_n_train_steps=3",
    "logger=none",
    "~callbacks.lr_monitor",
    "seed=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]

_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import pytorch_lightning as pl
from training_fixtures import compose_train
from agegender.training.fit import train

class Kill(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= {step}:
            os.kill(os.getpid(), signal.SIGKILL)

train(compose_train({overrides!r}, __import__("pathlib").Path({out!r})), extra_callbacks=[Kill()])
"""


def _metrics(run_dir: Path) -> dict[str, float]:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def _assert_same_metrics(got: Path, want: Path) -> None:
    a, b = _metrics(got), _metrics(want)
    assert a.keys() == b.keys()
    for key in b:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[str]]:  # noqa: ANN001
    demo = demo_root(tmp_path_factory)
    common = [*EXACT, f"data.root={demo}"]
    out = tmp_path_factory.mktemp("uninterrupted")
    train(compose_train([*common, "trainer.max_epochs=4"], out))
    return out, common


@pytest.mark.slow  # 25-80 s: CI runs it with -m slow
def test_last_ckpt_of_a_finished_run_holds_its_last_epoch(uninterrupted) -> None:  # noqa: ANN001
    out, _ = uninterrupted
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 16
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 4  # all 4 done
    names = sorted(p.name.split("-")[1] for p in (out / "checkpoints").glob("best-*.ckpt"))
    assert names == ["age", "gender", "per"]  # one best per task + the assembled net


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(uninterrupted, tmp_path) -> None:  # noqa: ANN001
    import shutil
    import subprocess
    import sys

    want, common = uninterrupted
    killed = tmp_path / "killed"
    overrides = [*common, "trainer.max_epochs=4"]
    script = _KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), step=10, overrides=overrides, out=str(killed)
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr[-3000:]  # really killed, not finished
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 9 and saved["epoch"] == 2  # the middle of the third epoch
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 2

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(killed, tmp_path / "killed_copy")
    # own directory (ckpt_path=last with the run's directory as output) ...
    train(compose_train([*overrides, "ckpt_path=last"], killed))
    _assert_same_metrics(killed, want)
    # ... and a new directory from the file
    ckpt = tmp_path / "killed_copy" / "checkpoints" / "last.ckpt"
    train(compose_train([*overrides, f"ckpt_path={ckpt}"], elsewhere))
    _assert_same_metrics(elsewhere, want)


@pytest.mark.slow
def test_two_epochs_resumed_to_four_equals_uninterrupted(uninterrupted, tmp_path) -> None:  # noqa: ANN001
    import shutil

    want, common = uninterrupted
    short = tmp_path / "short"
    train(compose_train([*common, "trainer.max_epochs=2"], short))
    shutil.copytree(short, tmp_path / "short_copy")
    four = [*common, "trainer.max_epochs=4"]
    train(compose_train([*four, "ckpt_path=last"], short))
    _assert_same_metrics(short, want)
    train(compose_train([*four, f"ckpt_path={tmp_path / 'short_copy'}"], tmp_path / "new"))
    _assert_same_metrics(tmp_path / "new", want)


class _Payload:
    """Unpickling this runs code (here: creates a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_payload_checkpoint_never_runs(tmp_path_factory, tmp_path, monkeypatch):
    """train.py ckpt_path=... loads with weights_only=True even where the environment says
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: the payload's code must not run."""
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    demo = demo_root(tmp_path_factory)
    cfg = compose_train(
        ["experiment=levi_hassner", *FAST, f"data.root={demo}", "logger=none",
         "trainer.max_steps=2", f"ckpt_path={evil}"],
        tmp_path / "run",
    )  # fmt: skip
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|unsupported global"):
        train(cfg)
    assert not marker.exists()


def test_resume_with_another_thread_count_warns(tmp_path_factory, tmp_path) -> None:  # noqa: ANN001
    """Training sets its own intra-op threads (``threads``), stores them in its checkpoints,
    and a resume with another count says its results will differ in the last digits."""
    demo = demo_root(tmp_path_factory)
    common = [*FAST, f"data.root={demo}", "model=levi_hassner_shared", "test=false",
              "calibration=false", "logger=none", "~callbacks.lr_monitor"]  # fmt: skip
    torch.set_num_threads(1)  # what an earlier in-process run may leave behind
    cfg = compose_train([*common, "trainer.max_steps=2", "threads=2"], tmp_path)
    train(cfg)
    assert torch.get_num_threads() == 2  # the run's own count, not the leftover
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, mmap=True)["torch_threads"] == 2
    again = compose_train([*common, "trainer.max_steps=4", "threads=1", "ckpt_path=last"], tmp_path)
    with pytest.warns(UserWarning, match="written with 2 PyTorch threads, this run uses 1"):
        train(again)
