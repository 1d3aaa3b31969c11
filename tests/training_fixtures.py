"""Random in-memory data in the DataModule batch format (interface 5), for tests of the
training code that must not depend on the real data pipeline."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
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
