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

    Each pass over the data (an epoch, or a further pass within one when Lightning's
    ``max_size_cycle`` restarts a shorter per-task list) draws its order and one seed per
    sample from a generator seeded with ``(seed, epoch, pass)``; the seed is per dataset
    index, so a sample gets the same crop in the same pass whatever rank or worker loads it.
    Padding and rank slicing are DistributedSampler's.
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
        self.next_pass = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.next_pass = 0
        super().set_epoch(epoch)

    def pass_items(self, epoch: int, pass_: int) -> list[tuple[int, int]]:
        """This rank's ``(index, seed)`` list for pass ``pass_`` of ``epoch``."""
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, pass_)) % _SEED_RANGE)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator).tolist()
        seeds = torch.randint(_SEED_RANGE, (n,), generator=generator).tolist()
        if len(order) < self.total_size:  # pad to equal shares (DistributedSampler's rule)
            order += (order * (self.total_size // max(n, 1) + 1))[: self.total_size - n]
        mine = order[self.rank : self.total_size : self.num_replicas]
        return [(i, seeds[i]) for i in mine]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pass_, self.next_pass = self.next_pass, self.next_pass + 1
        return _PassIterator(self, self.epoch, pass_)


class _PassIterator(Iterator[tuple[int, int]]):
    """One pass of a :class:`SeededShuffleSampler`, resumable at any position.

    Its state (epoch, pass, items yielded) is what torchdata saves for the sampler; loading
    it rebuilds the same pass and skips what was already served.
    """

    def __init__(self, sampler: SeededShuffleSampler, epoch: int, pass_: int) -> None:
        self.sampler = sampler
        self._start(epoch, pass_, 0)

    def _start(self, epoch: int, pass_: int, yielded: int) -> None:
        self.epoch, self.pass_, self.yielded = epoch, pass_, yielded
        self.items = self.sampler.pass_items(epoch, pass_)

    def __iter__(self) -> _PassIterator:
        return self

    def __next__(self) -> tuple[int, int]:
        if self.yielded >= len(self.items):
            raise StopIteration
        item = self.items[self.yielded]
        self.yielded += 1
        return item

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pass": self.pass_, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, pass_ = int(state["epoch"]), int(state.get("pass", 0))
        self.sampler.set_epoch(epoch)
        self.sampler.next_pass = pass_ + 1
        self._start(epoch, pass_, int(state["yielded"]))
