"""Shared fixtures and the one rule for missing inputs: skip on a user's machine, fail in CI.

Correctness tests depend on things a user's clone may lack (``../shared`` beside the checkout,
the converted original weights). A user without them gets a skip with the command that fixes
it; CI (``CI=true``) has them by construction, so a missing input there is a broken set-up and
must fail the run: a skip would turn the whole parity/accuracy guard into a silent no-op.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = REPO / "data" / "samples"
WEIGHTS_HINT = "run `python -m agegender.weights original` (the README's install command)"
#: precision=auto follows its rule, not this machine's speed measurement, in every test and
#: every process a test starts: the tests' tolerances (1e-5 between batch sizes ...) hold for
#: the exact paths on every CPU. tests/test_auto_precision.py lifts it to test the record.
os.environ["AGEGENDER_AUTO_RECORD"] = "none"


def in_ci() -> bool:
    """True under CI (GitHub Actions, GitLab and most others export ``CI=true``)."""
    return os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Continue if ``condition``; else skip with ``reason``, or fail with it under ``CI=true``.

    Use it for every input a correctness test needs but a user's machine may lack, never for
    platform facts (running as root, no GPU), which are legitimate skips everywhere.
    """
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: missing test inputs fail instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's ../shared folder (real fold files, original prototxts); absent for users."""
    require(SHARED.is_dir(), f"../shared is not present beside the checkout ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def original_classifier():  # noqa: ANN201 (FaceClassifier: imported lazily, torch start-up)
    """The original Levi-Hassner nets (the predict.py default), from the cache only.

    Tests never download: the README's install command converts the original weights into the
    cache. Without them: skip (user) or fail (CI).
    """
    from agegender.runtime.build import build_classifier
    from agegender.store import WeightsNotFoundError

    try:
        classifier, _ = build_classifier(download=False)
    except WeightsNotFoundError as error:
        require(False, f"original weights not cached: {WEIGHTS_HINT} ({error})")
    return classifier


@pytest.fixture(scope="module")
def mtcnn():  # noqa: ANN201 (a Detector: imported lazily)
    """The default detector (the video and stream tests)."""
    from agegender.faces import build_detector

    return build_detector("mtcnn")


@pytest.fixture(scope="module")
def random_classifier():  # noqa: ANN201 (a FaceClassifier: imported lazily, torch start-up)
    """A Levi-Hassner net with fixed random weights: nothing to load, deterministic."""
    import torch

    from agegender.models import LeviHassnerNet
    from agegender.runtime.torch_classifier import FaceClassifier

    torch.manual_seed(0)
    return FaceClassifier(LeviHassnerNet())


@pytest.fixture(autouse=True)
def _restore_torch_state():  # noqa: ANN202 - a generator fixture
    """PyTorch's process-wide settings (intra-op threads, deterministic algorithms, default
    dtype) as they were before each test: a test that changes them must not change what the
    next one computes (an exact-resume test failed after one left 1 thread behind)."""
    import torch  # once per session (~2 s); most tests use it anyway

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    dtype = torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_default_dtype(dtype)
