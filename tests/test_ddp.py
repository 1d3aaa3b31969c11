"""trainer=ddp: Lightning DDP with 2 CPU processes (gloo) through train.py on demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO, demo_root


@pytest.mark.slow
def test_train_py_ddp_two_cpu_processes(tmp_path_factory, tmp_path: Path) -> None:  # noqa: ANN001
    demo = demo_root(tmp_path_factory)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=levi_hassner",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "data=demo",
            f"data.root={demo}",
            "data.batch_size=4",
            "data.num_workers=0",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    log = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # a second process really joined
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/age_acc", "test/gender_acc", "test_10crop/age_acc", "val/acc"):
        assert 0.0 <= metrics[key] <= 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    # the paper's per-task choice: rank 0 assembles, every rank then evaluates that file
    assert (run_dir / "checkpoints" / "best-per-task.ckpt").is_file()
    assert "evaluated " + str(run_dir / "checkpoints" / "best-per-task.ckpt") in log
