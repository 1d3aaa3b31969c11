"""Validation is carved by user; the leakage check fires on any shared user."""

from __future__ import annotations

import pandas as pd
import pytest

from agegender.data.splits import LeakageError, check_user_disjoint, fold_splits, split_users


def _table(users_per_fold=6, images=3):
    rows = [
        {"user_id": f"f{k}u{u}", "fold": k, "key": f"f{k}u{u}/{i}"}
        for k in range(5)
        for u in range(users_per_fold)
        for i in range(images)
    ]
    return pd.DataFrame(rows)


def test_split_users_is_seeded_and_disjoint():
    users = [f"u{i}" for i in range(20)]
    train, val = split_users(users, 0.1, seed=1)
    assert len(val) == 2 and not train & val and train | val == set(users)
    assert split_users(reversed(users), 0.1, seed=1) == (train, val)  # order-independent
    assert any(split_users(users, 0.1, seed=s)[1] != val for s in range(2, 6))
    assert split_users(users, 0.0) == (set(users), set())
    with pytest.raises(ValueError):
        split_users(users, 1.0)


def test_fold_splits_carve_validation_by_user():
    table = _table()
    splits = fold_splits(table, fold=1, val_fraction=0.2, seed=0)
    assert set(splits["test"]["fold"]) == {1}
    assert 1 not in set(splits["train"]["fold"]) | set(splits["val"]["fold"])
    val_users = set(splits["val"]["user_id"])
    assert len(val_users) == 5  # 20% of 24 users, rounded
    # every image of a validation user is in validation, none in training
    assert len(splits["val"]) == 3 * len(val_users)
    assert sum(len(s) for s in splits.values()) == len(table)
    with pytest.raises(ValueError, match="fold 7"):
        fold_splits(table, fold=7)


def test_leakage_check_fires_on_a_leaky_split():
    table = _table()
    train, test = table[table["fold"] != 0], table[table["fold"] == 0]
    check_user_disjoint({"train": train, "test": test})
    leaky_test = pd.concat([test, train.head(1)])  # one training image of one user
    with pytest.raises(LeakageError, match=r"1 user\(s\) in both 'train' and 'test'.*f1u0"):
        check_user_disjoint({"train": train, "test": leaky_test})
    with pytest.raises(LeakageError, match="'val'"):
        check_user_disjoint({"train": {"a", "b"}, "val": {"b"}})
