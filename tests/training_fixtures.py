"""Test helpers for the training tests: random in-memory data in the DataModule batch format
(interface 5), train.yaml composition, and one shared demo tree per session."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset


class RandomFaces(Dataset):
    """Deterministic random images; every 3rd sample lacks an age label, every 5th a gender."""

    def __init__(self, n: int, size: int = 227, ten_crop: bool = False) -> None:
        self.n, self.size, self.ten_crop = n, size, ten_crop

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        shape = (10, 3, self.size, self.size) if self.ten_crop else (3, self.size, self.size)
        has_age, has_gender = i % 3 != 0, i % 5 != 0
        return {
            "image": torch.rand(shape, generator=g) * 255,
            "age": torch.tensor(i % 8 if has_age else -1),
            "gender": torch.tensor(i % 2 if has_gender else -1),
            "age_mask": torch.tensor(has_age),
            "gender_mask": torch.tensor(has_gender),
            "index": torch.tensor(i),
        }


class RandomDataModule(pl.LightningDataModule):
    def __init__(self, size: int = 227, n_train: int = 8, batch_size: int = 4) -> None:
        super().__init__()
        self.size, self.n_train, self.batch_size = size, n_train, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomFaces(self.n_train, self.size), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomFaces(4, self.size), batch_size=self.batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(RandomFaces(4, self.size), batch_size=self.batch_size),
            DataLoader(RandomFaces(2, self.size, ten_crop=True), batch_size=2),
        ]


# -- Hydra composition of train.yaml for tests --------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

#: Small and fast (demo data, batches of 4, CPU, 2 val/test batches): conf/debug/tests.yaml.
#: Tests add their own budget after it (trainer.max_steps=3 ...); command-line overrides win.
FAST = ["debug=tests"]
#: The paper's recipe (per-pixel mean image) in 2 steps with one shared trunk: a real
#: train.py checkpoint in seconds (add ``data.root=<demo tree>``).
PAPER_TWO_STEPS = [
    "experiment=levi_hassner",
    *FAST,
    "model.model_kwargs.mode=shared",
    "selection=joint",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_test_batches=1",
    "logger=none",
    "~callbacks.lr_monitor",
]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """train.yaml composed as train.py would, with run paths pointed at ``output_dir``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"paths.root_dir={REPO}",
                f"paths.output_dir={output_dir}",
                *overrides,
            ],
        )
    return cfg


def demo_root(tmp_path_factory) -> Path:  # noqa: ANN001
    """One demo tree (generated and preprocessed once per test session, then reused)."""
    root = tmp_path_factory.getbasetemp() / "training_demo" / "adience"
    marker = root.parent / "ready"
    if not marker.exists():
        # preprocess in this process: forking workers from a process that already runs
        # threads (torch, pytest) can deadlock
        overrides = ["data=demo", f"data.root={root}", "data.preprocess.workers=1"]
        cfg = compose_train(overrides, root.parent / "prep")
        from hydra.utils import instantiate

        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        marker.write_text("ok\n")
    return root
