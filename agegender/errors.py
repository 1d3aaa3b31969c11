"""Exceptions that entry points catch, in a module that imports nothing (``predict.py`` must
name them without importing torch, which :mod:`agegender.checkpoints` needs)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file that is not a loadable agegender (or train.py Lightning) checkpoint."""
