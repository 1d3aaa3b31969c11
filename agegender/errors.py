"""Exceptions that entry points catch, in a module that imports nothing (``predict.py`` must
name them without importing torch, which :mod:`agegender.checkpoints` needs)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file that is not a loadable agegender (or train.py Lightning) checkpoint."""


class SettingError(ValueError):
    """Settings that cannot run together or an unknown value (``precision=int8`` with a
    train.py checkpoint, ``precision=banana``): the message names them and what to do."""
