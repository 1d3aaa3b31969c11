"""Subject-exclusive splits: test = one fold, validation carved from the rest BY USER.

Leakage (the same person in train and test, or train and validation) inflates every number
on Adience, so it is made impossible by construction (splits are sets of users) and then
checked anyway (:func:`check_user_disjoint`) at every setup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd


class LeakageError(RuntimeError):
    """A user appears in two splits."""


def split_users(
    users: Iterable[str], val_fraction: float, seed: int = 0
) -> tuple[set[str], set[str]]:
    """(train users, val users): a seeded shuffle of the sorted user list, so the same seed
    gives the same split on every machine and every DDP rank."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(set(users))
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(ordered)))
    if ordered and n_val >= len(ordered):
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training users out of {len(ordered)}"
        )
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val = {ordered[i] for i in perm[:n_val]}
    return set(ordered) - val, val


def _users(split: pd.DataFrame | Iterable[str]) -> set[str]:
    if isinstance(split, pd.DataFrame):
        return set(split["user_id"])
    return set(split)


def check_user_disjoint(splits: Mapping[str, pd.DataFrame | Iterable[str]]) -> None:
    """Raise LeakageError naming the users and splits when any user is in two splits."""
    users = {name: _users(split) for name, split in splits.items()}
    names = list(users)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = users[a] & users[b]
            if shared:
                shown = ", ".join(sorted(shared)[:5])
                raise LeakageError(f"{len(shared)} user(s) in both {a!r} and {b!r} splits: {shown}")


def fold_splits(
    table: pd.DataFrame,
    fold: int,
    val_fraction: float = 0.1,
    seed: int = 0,
    group_column: str = "user_id",
    fold_column: str = "fold",
) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} row tables for test fold ``fold`` (checked for leakage)."""
    folds = sorted(table[fold_column].unique())
    if fold not in folds:
        raise ValueError(f"fold {fold} not in the data (folds: {folds})")
    test = table[table[fold_column] == fold]
    rest = table[table[fold_column] != fold]
    train_users, val_users = split_users(rest[group_column], val_fraction, seed)
    splits = {
        "train": rest[rest[group_column].isin(train_users)],
        "val": rest[rest[group_column].isin(val_users)],
        "test": test,
    }
    check_user_disjoint({name: set(split[group_column]) for name, split in splits.items()})
    return splits
