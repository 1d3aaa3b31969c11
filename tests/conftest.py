"""Shared fixtures: where ../shared lives (skip cleanly when a user's clone lacks it)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = REPO / "data" / "samples"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's ../shared folder (real fold files, original prototxts); absent for users."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES
