"""conftest.require: a missing test input skips on a user's machine and fails under CI=true."""

from __future__ import annotations

import pytest
from conftest import require

REASON = "../shared is not present beside the checkout"


def test_met_requirement_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("true", None):
        if value is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", value)
        assert require(True, REASON) is None


@pytest.mark.parametrize("value", [None, "false", "1", "TRUE "])
def test_missing_input_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, value) -> None:  # noqa: ANN001
    """Only the exact ``CI=true`` convention counts as CI; anything else is a user's run."""
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=REASON):
        require(False, REASON)


def test_missing_input_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=REASON) as info:
        require(False, REASON)
    assert "CI=true" in str(info.value)


def test_fixtures_use_the_helper(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """The shared_dir fixture fails under CI when ../shared is absent (SHARED pointed away)."""
    import conftest

    monkeypatch.setattr(conftest, "SHARED", tmp_path / "no_shared")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not present beside the checkout"):
        conftest.shared_dir.__wrapped__()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not present beside the checkout"):
        conftest.shared_dir.__wrapped__()
