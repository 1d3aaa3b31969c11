"""The training step clock of the GPU check (agegender.training.throughput) on the CPU: a
loader that sleeps shows up as waiting, a fast one does not; and the check's table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from agegender.training.throughput import StepClock, batch_size

REPO = Path(__file__).resolve().parents[1]


class _Faces(Dataset):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time.sleep(self.delay)
        return {"image": torch.randn(8), "age": torch.tensor(i % 2)}


class _Module(pl.LightningModule):
    def __init__(self, work: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)
        self.work = work

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        time.sleep(self.work)
        return torch.nn.functional.cross_entropy(self.layer(batch["image"]), batch["age"])

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _clock(delay: float, work: float) -> StepClock:
    clock = StepClock(warmup=2)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=10, callbacks=[clock], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = DataLoader(_Faces(delay), batch_size=4, num_workers=0)
    trainer.fit(_Module(work), loader)
    return clock


def test_the_clock_tells_a_waiting_loader_from_a_busy_step():
    # wide margins (200 ms loading vs 2 ms compute; 100 ms compute vs none): Lightning's own
    # per-step overhead on a loaded 2-core machine must not decide the shares
    slow_data = _clock(delay=0.05, work=0.002)
    busy_step = _clock(delay=0.0, work=0.1)
    assert slow_data.steps == busy_step.steps == 8  # 10 steps, 2 of warm-up
    assert slow_data.faces == 8 * 4
    assert slow_data.waiting_share > 0.7
    assert busy_step.waiting_share < 0.3
    assert busy_step.steps_per_second == pytest.approx(1 / 0.1, rel=0.5)
    assert slow_data.faces_per_second == pytest.approx(4 * slow_data.steps_per_second)


def test_batch_size_of_joint_and_per_task_batches():
    joint = {"image": torch.zeros(5, 3), "age": torch.zeros(5)}
    assert batch_size(joint) == 5
    assert batch_size({"age": joint, "gender": {"image": torch.zeros(2, 3)}}) == 7


def _gpu_check():  # noqa: ANN202 - the benchmark script as a module
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_check_prints_one_table():
    check = _gpu_check()
    rows = [
        check.Row("training", "levi_hassner fp32", "312.4 steps/s", "ok"),
        check.Row("correctness", "GPU vs CPU fp32 max |dp|", "3.1e-06", "ok (<= 1e-4)"),
        check.Row("prediction", "predict.py device=cuda", "FAILED: boom", "FAILED"),
    ]
    text = check.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["section", "check", "value", "verdict"]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns
    assert "FAILED: boom" in text and len(lines) == 2 + len(rows)


def test_without_cuda_it_says_so_and_exits_0():
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
        timeout=300, env={"CUDA_VISIBLE_DEVICES": "", **_env()},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "no CUDA device"
    assert "--device cpu --quick" in lines[-1]  # what to run instead


def test_help_describes_the_check_in_whole_sentences():
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--help"], cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0
    text = run.stdout.split("options:")[0]
    assert "printed as one table." in text and "--device cpu --quick" in text
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")[1:] if p.strip()]
    assert all(p.endswith((".", "]")) for p in paragraphs), paragraphs


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}


@pytest.mark.slow
def test_every_part_runs_on_the_cpu(tmp_path):
    """``--device cpu``: the whole check with CPU budgets, so its parts are exercised here
    (the GPU figures need a GPU; the code that makes them does not)."""
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick",
         "--work", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAILED" not in run.stdout, run.stdout
    for part in ("training", "correctness", "prediction"):
        assert part in run.stdout
    # the table is not buried under Lightning's notes and tips
    assert "Tip:" not in run.stdout + run.stderr and "GPU available" not in run.stdout
    table = run.stdout.split("gpu_check results")[1]
    assert table.splitlines()[1].split() == ["section", "check", "value", "verdict"]
