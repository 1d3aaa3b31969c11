"""SeededShuffleSampler: order and augmentation seeds are a pure function of (seed, epoch,
pass), shared by the ranks, and a loader resumed from its state continues the same pass."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from agegender.data.sampling import SeededShuffleSampler


class Items(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        return torch.tensor(item)


def _loader(n: int = 23, seed: int = 5, world: int = 1, rank: int = 0) -> StatefulDataLoader:
    data = Items(n)
    return StatefulDataLoader(
        data, batch_size=4, sampler=SeededShuffleSampler(data, seed, world, rank)
    )


def _epoch(loader: StatefulDataLoader) -> list[tuple[int, int]]:
    return [tuple(x) for batch in loader for x in batch.tolist()]


def test_same_seed_same_epochs_new_pass_new_order() -> None:
    a, b = _loader(), _loader()
    first, again = _epoch(a), _epoch(a)  # a second pass in the same epoch: reshuffled
    assert first == _epoch(b) and sorted(i for i, _ in first) == list(range(23))
    assert first != again and sorted(first) != sorted(again)  # other order, other seeds
    a.sampler.set_epoch(1)
    assert _epoch(a) not in (first, again)
    assert _epoch(_loader(seed=6)) != first


def test_ranks_share_the_order_and_split_it() -> None:
    shares = [_epoch(_loader(world=3, rank=r)) for r in range(3)]
    whole = {i for share in shares for i, _ in share}
    assert whole == set(range(23)) and len({len(s) for s in shares}) == 1  # padded to 8 each
    seeds = {i: s for share in shares for i, s in share}
    assert all(s == seeds[i] for share in shares for i, s in share)  # one seed per sample


def test_resumed_loader_continues_the_pass() -> None:
    a = _loader()
    a.sampler.set_epoch(2)
    iterator = iter(a)
    served = [tuple(x) for _ in range(3) for x in next(iterator).tolist()]
    state = a.state_dict()
    rest = [tuple(x) for batch in iterator for x in batch.tolist()]

    b = _loader()
    b.load_state_dict(state)
    assert _epoch(b) == rest and served + rest == _epoch(_loader_at(2))
    assert b.sampler.epoch == 2 and b.sampler.next_pass == 1


def _loader_at(epoch: int) -> StatefulDataLoader:
    loader = _loader()
    loader.sampler.set_epoch(epoch)
    return loader
