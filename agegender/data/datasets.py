"""Map-style dataset over cached faces: one row table + the cache + one preset transform."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from agegender.data.cache import FaceCache
from agegender.labels import IGNORE_INDEX


class CachedFaceDataset(Dataset):
    """Items are the batch dict of interface 5: image, age, gender, their masks, index, and
    ``origin`` when the transform reports where its crops came from (``with_origin``, as the
    presets of :mod:`agegender.transforms` do): a net with a per-pixel mean image needs it.

    ``rows`` needs ``key``, ``age`` and ``gender`` columns (IGNORE_INDEX = unknown); ``index``
    is the row's position in ``rows``, so predictions can be joined back to the table.
    """

    def __init__(
        self, cache: FaceCache, rows: pd.DataFrame, transform: Callable[[np.ndarray], torch.Tensor]
    ) -> None:
        self.cache = cache
        self.rows = rows.reset_index(drop=True)
        self.shard, self.offset = cache.lookup(self.rows["key"])
        self.age = torch.tensor(self.rows["age"].to_numpy(np.int64))
        self.gender = torch.tensor(self.rows["gender"].to_numpy(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """``item`` is an index, or ``(index, seed)`` from
        :class:`agegender.data.sampling.SeededShuffleSampler`: the random augmentation then
        draws from a generator seeded with ``seed``, not from the global stream, so the same
        sample gets the same crop whatever worker, prefetching or resume served it."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        face = self.cache.face(int(self.shard[i]), int(self.offset[i]))
        # Presets that crop report where (the per-pixel mean image is subtracted there).
        transform = getattr(self.transform, "with_origin", None) or self.transform
        if seed is None:
            out = transform(face)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = transform(face)
        image, origin = out if isinstance(out, tuple) else (out, None)
        age, gender = self.age[i], self.gender[i]
        item = {
            "image": image,
            "age": age,
            "gender": gender,
            "age_mask": age != IGNORE_INDEX,
            "gender_mask": gender != IGNORE_INDEX,
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if origin is not None:
            item["origin"] = origin
        return item


class RowSubset(Subset):
    """A Subset that also passes ``(index, seed)`` items through (one task's labelled rows,
    served by :class:`agegender.data.sampling.SeededShuffleSampler`)."""

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(item, tuple):
            return self.dataset[(self.indices[item[0]], item[1])]
        return self.dataset[self.indices[item]]

    def __getitems__(self, items: list) -> list[dict[str, torch.Tensor]]:
        return [self[item] for item in items]
