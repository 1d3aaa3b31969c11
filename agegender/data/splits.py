"""Subject-exclusive splits: test = one fold, validation carved from the rest BY USER.

Leakage (the same person in train and test, or train and validation) inflates every number
on Adience, so it is made impossible by construction (splits are sets of users) and then
checked anyway (:func:`check_user_disjoint`) at every setup.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from agegender.errors import AgeGenderError

#: ``stratify`` choices of the validation carve and of the CSV's fold dealing: ``false`` (a
#: seeded shuffle of the sorted groups) or ``true`` (scikit-learn's StratifiedGroupKFold on
#: the joint age x gender label: whole groups, label proportions kept where the groups allow).


class LeakageError(AgeGenderError, RuntimeError):
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


def strata(rows: pd.DataFrame) -> np.ndarray:
    """One stratum per (age, gender) pair, unknown labels (-1) being values of their own."""
    age = rows["age"].to_numpy(np.int64) + 1
    gender = rows["gender"].to_numpy(np.int64) + 1
    return age * 3 + gender


def stratified_group_folds(
    rows: pd.DataFrame, n_splits: int, seed: int = 0, group_column: str = "user_id"
) -> dict[str, int]:
    """group -> fold (0 .. n_splits-1): whole groups dealt so every fold keeps the label
    proportions of ``rows`` as far as the groups allow (StratifiedGroupKFold, seeded).

    Rows are sorted by group first, so the result depends on the data, not on row order.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    rows = rows.sort_values(group_column, kind="stable")
    groups = rows[group_column].to_numpy()
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise ValueError(
            f"stratified split into {n_splits} parts needs at least {n_splits} groups, "
            f"got {n_groups}"
        )
    labels = strata(rows)
    if np.unique(labels, return_counts=True)[1].max() < n_splits:
        # scikit-learn refuses when no label has a member per part: too few rows to stratify
        warnings.warn(
            f"stratified split: no age x gender label has {n_splits} rows, too few to keep "
            "proportions; groups are dealt by a seeded shuffle instead",
            stacklevel=2,
        )
        ordered = sorted(set(groups))
        order = np.random.default_rng(seed).permutation(len(ordered))
        return {ordered[i]: n % n_splits for n, i in enumerate(order)}
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    with warnings.catch_warnings():
        # rare classes have fewer groups than parts: proportions are kept as far as possible
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, part) in enumerate(splitter.split(np.zeros(len(rows)), labels, groups)):
            fold_of.update(dict.fromkeys(groups[part], k))
    return fold_of


def split_users_stratified(
    rows: pd.DataFrame, val_fraction: float, seed: int = 0, group_column: str = "user_id"
) -> tuple[set[str], set[str]]:
    """(train groups, val groups) with the validation groups drawn so that validation keeps
    the label proportions of ``rows``: the first of ``round(1 / val_fraction)`` stratified
    group folds (so the validation share is ``1 / round(1 / val_fraction)``)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    users = set(rows[group_column])
    if val_fraction == 0:
        return users, set()
    n_splits = max(2, round(1 / val_fraction))
    fold_of = stratified_group_folds(rows, n_splits, seed, group_column)
    val = {g for g, k in fold_of.items() if k == 0}
    return users - val, val


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
    stratify: bool = False,
) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} row tables for test fold ``fold`` (checked for leakage).

    ``stratify``: validation groups drawn with the label proportions kept
    (:func:`split_users_stratified`) instead of a seeded shuffle of the groups."""
    folds = sorted(table[fold_column].unique())
    if fold not in folds:
        raise ValueError(f"fold {fold} not in the data (folds: {folds})")
    test = table[table[fold_column] == fold]
    rest = table[table[fold_column] != fold]
    if stratify:
        train_users, val_users = split_users_stratified(rest, val_fraction, seed, group_column)
    else:
        train_users, val_users = split_users(rest[group_column], val_fraction, seed)
    splits = {
        "train": rest[rest[group_column].isin(train_users)],
        "val": rest[rest[group_column].isin(val_users)],
        "test": test,
    }
    check_user_disjoint({name: set(split[group_column]) for name, split in splits.items()})
    return splits
