"""The one atomic-write helper: the target is either the old file or the whole new one."""

from __future__ import annotations

import os

import pytest

from agegender.fileio import atomic_write


def test_replaces_whole_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    assert atomic_write(target, lambda fh: fh.write(b"one")) == target
    atomic_write(target, lambda fh: fh.write(b"two"))
    assert target.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def half_then_fail(fh):
        fh.write(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
