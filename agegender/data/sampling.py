"""The training order and the augmentation randomness, both a pure function of (seed, epoch).

An exact resume (a run killed at any step and resumed ends where the uninterrupted run ends)
needs every random draw of training to be reproducible from the checkpoint. Random crops and
mirrors drawn from the global RNG are not: their stream depends on prefetching, the number of
loader workers and whatever else consumed the RNG before them. So the sampler deals each
sample an augmentation seed along with its index, the dataset augments under that seed
(:class:`agegender.data.datasets.CachedFaceDataset`), and the sampler's position is saved by
the stateful data loader (torchdata) in every Lightning checkpoint.

It is a :class:`~torch.utils.data.DistributedSampler` (one rank by default) so that Lightning
uses it as it is under DDP instead of wrapping it: every rank computes the same epoch order
and takes its own slice, and Lightning's ``set_epoch`` reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

#: Upper bound (exclusive) of the augmentation seeds.
_SEED_RANGE = 2**62


class SeededShuffleSampler(DistributedSampler):
    """Shuffled ``(index, augmentation_seed)`` pairs; epoch ``e`` is the same on every machine.

    The order is DistributedSampler's (``randperm`` seeded with ``seed + epoch``); the seeds
    come from a second generator seeded with ``(seed, epoch)``, one per dataset index, so a
    sample gets the same crop in the same epoch whatever the rank or worker that loads it.
    """

    def __init__(
        self, dataset: Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )

    def epoch_items(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's ``(index, seed)`` list for ``epoch``."""
        previous, self.epoch = self.epoch, epoch
        try:
            indices = list(super().__iter__())
        finally:
            self.epoch = previous
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        seeds = torch.randint(_SEED_RANGE, (len(self.dataset),), generator=generator).tolist()
        return [(i, seeds[i]) for i in indices]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return _EpochIterator(self, self.epoch)


class _EpochIterator(Iterator[tuple[int, int]]):
    """One epoch of a :class:`SeededShuffleSampler`, resumable at any position.

    Its state (epoch, items yielded) is what torchdata saves for the sampler; loading it
    rebuilds the same epoch and skips what was already served.
    """

    def __init__(self, sampler: SeededShuffleSampler, epoch: int) -> None:
        self.sampler = sampler
        self._start(epoch, 0)

    def _start(self, epoch: int, yielded: int) -> None:
        self.epoch = epoch
        self.items = self.sampler.epoch_items(epoch)
        self.yielded = yielded

    def __iter__(self) -> _EpochIterator:
        return self

    def __next__(self) -> tuple[int, int]:
        if self.yielded >= len(self.items):
            raise StopIteration
        item = self.items[self.yielded]
        self.yielded += 1
        return item

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(int(state["epoch"]))
        self._start(int(state["epoch"]), int(state["yielded"]))
