"""The project's exceptions and the one way entry points report them, in a module that
imports only the standard library (``predict.py`` must name them without importing torch,
which :mod:`agegender.checkpoints` needs).

Every exception agegender raises on purpose derives from :class:`AgeGenderError`, so an entry
point needs one ``except`` for "the user must fix something": :func:`handled` prints one line
(``prog: message``) on stderr and gives exit code 2, while anything else (a bug) propagates
with its traceback. Subclasses keep a builtin second base (``ValueError``,
``FileNotFoundError``, ...) where callers and tests catch that.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

#: The exit code of a run stopped by an :class:`AgeGenderError` (what the user must fix).
EXIT_CODE = 2

_F = TypeVar("_F", bound=Callable[..., Any])


class AgeGenderError(Exception):
    """Base of every agegender exception: its message is one line naming what to fix."""


class CheckpointError(AgeGenderError, ValueError):
    """A file that is not a loadable agegender (or train.py Lightning) checkpoint."""


class CheckpointNotFoundError(AgeGenderError, FileNotFoundError):
    """No checkpoint where one was named (``checkpoint=``, ``ckpt_path=``): the message says
    where it looked and what to pass instead."""


class SettingError(AgeGenderError, ValueError):
    """Settings that cannot run together or an unknown value (``precision=int8`` with a
    train.py checkpoint, ``precision=banana``): the message names them and what to do."""


def report(prog: str, error: BaseException) -> int:
    """Print ``prog: error`` as one line on stderr and return :data:`EXIT_CODE`."""
    line = " ".join(part.strip() for part in str(error).splitlines()) or type(error).__name__
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
    return EXIT_CODE


def handled(
    prog: str,
    *,
    exits: bool = False,
    on_error: Callable[[Exception], object] | None = None,
    builtin: tuple[type[Exception], ...] = (),
) -> Callable[[_F], _F]:
    """Decorate an entry point's ``main``: an :class:`AgeGenderError` becomes one line on
    stderr (:func:`report`) and exit code 2; every other exception propagates unchanged, so
    a bug keeps its traceback.

    The decorated function returns 2 (``main(argv) -> int`` run by ``sys.exit(main())``), or
    with ``exits=True`` raises ``SystemExit(2)``: a Hydra task function, whose return value
    Hydra does not make the exit code. ``on_error`` runs first (e.g. removing the output
    folder a run that stopped before writing anything leaves behind).

    ``builtin``: the builtin errors (``FileNotFoundError``, ``ValueError``) this entry point
    has always reported as one line, from raise sites not yet converted to an
    :class:`AgeGenderError` subclass; the one place such a translation lives, named per entry
    point so that it can shrink as those raise sites are converted."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except (AgeGenderError, *builtin) as error:
                if on_error is not None:
                    on_error(error)
                code = report(prog, error)
                if exits:
                    raise SystemExit(code) from None
                return code

        return run  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def translated(*builtin: type[Exception]) -> Iterator[None]:
    """Inside: a ``builtin`` error (``FileNotFoundError``, ``ValueError`` from a library or a
    raise site not yet converted) becomes a :class:`SettingError` with the same message, for
    the entry point's :func:`handled`. Narrower than ``handled(builtin=...)``: only this block
    (an entry point's setup) is the user's to fix; the same error later keeps its traceback."""
    try:
        yield
    except AgeGenderError:
        raise
    except builtin as error:
        raise SettingError(str(error)) from error
