"""Which optional part of agegender is installed, and the one line that says how to add it.

Prediction runs on onnxruntime without torch; training, TorchScript export and the torch
backend need it. A command that needs torch where it is missing stops with one line naming
the extra to install (exit 2), not an ImportError traceback: :func:`exit_without_torch`.
Standard library only, so it can run before anything heavy is imported.
"""

from __future__ import annotations

import sys

#: The install command of the extra that brings torch (training, TorchScript, backend=torch).
TRAIN_EXTRA = 'pip install "agegender[train]"'


def torch_available() -> bool:
    """Whether torch is installed, without importing it (its import takes seconds): what a
    choice between torch and onnxruntime asks before it settles on torch."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def torch_installed() -> bool:
    """Whether ``import torch`` works in this environment (imports it when it does)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def needs_torch(what: str) -> str:
    """The one line a command prints when ``what`` needs torch and torch is missing."""
    return f"{what} needs PyTorch, which is not installed: {TRAIN_EXTRA}"


def exit_without_torch(command: str, what: str | None = None) -> None:
    """Exit with status 2 and one line on stderr (``command: ... needs PyTorch ...``) when
    torch cannot be imported; return quietly when it can."""
    if not torch_installed():
        print(f"{command}: {needs_torch(what or command)}", file=sys.stderr)
        sys.exit(2)
