"""trainer=ddp: Lightning DDP with 2 CPU processes (gloo) through train.py on demo data, and
its evaluation counts every sample exactly once: the val/test metrics of the 2-process run
equal those of a one-process evaluation of the same checkpoint, on sets of odd size (where
Lightning's padding sampler would count a repeated sample)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_fixtures import REPO, compose_train

# 21 users x 9 images: fold 0's test set has 45 faces, an odd number (the session's standard
# demo tree has 40 per fold, even, which would hide padding); val_fraction picks 1 val user.
DATA = [
    "data=demo",
    "data.demo_users=21",
    "data.demo_images_per_user=9",
    "data.fold=0",
    "data.duplicates=drop",  # the demo's one repeated row would make the test set even
    "data.val_fraction=0.05",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "data.preprocess.workers=1",
    "data.preprocess.progress=false",
]
# The paper's configuration: separate trunks, per-task batches, per-task checkpoint choice.
COMMON = [
    "experiment=levi_hassner",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
]


def _train_py(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "train.py", *COMMON, *DATA, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"},
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result


@pytest.mark.slow
def test_train_py_ddp_two_cpu_processes_counts_every_sample_once(tmp_path: Path) -> None:
    root = tmp_path / "demo" / "adience"
    # Prepare the demo tree here, in one process, and read the split sizes.
    from hydra.utils import instantiate

    datamodule = instantiate(
        compose_train([*COMMON, *DATA, f"data.root={root}"], tmp_path / "prep").data
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    sizes = {name: len(ds) for name, ds in datamodule.datasets.items()}
    assert sizes["test"] % 2 == 1 and sizes["val"] % 2 == 1, sizes  # padding would show
    labelled = {
        (stage, task): int((datamodule.splits[split][task] >= 0).sum())
        for stage, split in (("val", "val"), ("test", "test"), ("test_10crop", "test"))
        for task in ("age", "gender")
    }

    ddp_dir = tmp_path / "ddp"
    ddp = _train_py(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",  # validate at step 3: per-task bests exist
            f"data.root={root}",
            f"hydra.run.dir={ddp_dir}",
        ]
    )
    log = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # a second process really joined
    evaluated = re.findall(r"\(evaluated (\S+\.ckpt)\)", log)
    assert evaluated, log[-3000:]
    ckpt_path = Path(evaluated[-1])
    # the paper's per-task choice: rank 0 assembles, every rank then evaluates that file
    assert ckpt_path == ddp_dir / "checkpoints" / "best-per-task.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert {t: ckpt["per_task"][t]["global_step"] for t in ("age", "gender")} == {
        "age": 3,
        "gender": 3,
    }
    last = torch.load(ddp_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3

    single_dir = tmp_path / "single"
    _train_py(
        [
            "train=false",
            f"ckpt_path={ckpt_path}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            f"data.root={root}",
            f"hydra.run.dir={single_dir}",
        ]
    )

    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    single_metrics = json.loads((single_dir / "metrics.json").read_text())
    stages = ("val/", "test/", "test_10crop/")
    keys = {k for k in single_metrics if k.startswith(stages)}
    assert {k for k in ddp_metrics if k.startswith(stages)} == keys
    assert {"val/acc", "test/age_acc", "test/gender_acc", "test_10crop/age_acc_1off"} <= keys
    for key in sorted(keys):
        assert ddp_metrics[key] == pytest.approx(single_metrics[key], abs=1e-6), key
    # Each labelled face counted once: padding would add one to the odd-sized sets' counts.
    for (stage, task), n in labelled.items():
        assert ddp_metrics[f"{stage}/{task}_count"] == n, (stage, task)
