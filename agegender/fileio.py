"""Writing a file so that no reader, crash or concurrent writer ever sees half of it.

One helper for every file the project writes in place of an older one (cache shards and
manifests, converted weights, checkpoints, cross-validation tables): the data goes to a
temporary file in the same folder (same file system, so the rename is atomic), is flushed
to disk, and is then renamed over the target with ``os.replace``.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

#: Infix of the temporary names :func:`atomic_write` uses: ``.<name>.tmp<random>``.
TMP_INFIX = ".tmp"


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], fsync: bool = True
) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, and rename it
    into place; on any failure (or a KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was.

    The temporary name is ``.<name>.tmp<random>``, so a killed writer leaves at most a
    hidden ``.<name>.tmp*`` file that :func:`remove_temporaries` recognises. Parent folders
    are created. Permissions follow the umask, like an ordinary ``open`` (``mkstemp`` would
    make 0600). ``fsync=False`` for files that only a killed process, not a power cut, must
    not leave half-written (annotated copies: the fsync would cost more than the encoding).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection":
#: a photo named ``=HYPERLINK(...).jpg`` would run in Excel or LibreOffice), and the quote
#: that escapes them (so a name that starts with a quote itself reads back exactly).
FORMULA_STARTS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet evaluates: prefixed with ``'`` when it starts
    with a formula character or with ``'``; :func:`from_spreadsheet_safe` undoes it."""
    return ESCAPE + text if text[:1] in (*FORMULA_STARTS, ESCAPE) else text


def from_spreadsheet_safe(text: str) -> str:
    """The cell :func:`spreadsheet_safe` wrote, as it was."""
    return text[1:] if text[:1] == ESCAPE else text


def write_csv_rows(
    path: str | os.PathLike[str], rows: Iterable[Mapping[str, object]], columns: Sequence[str]
) -> Path:
    """A small CSV rewritten whole (tracks.csv, audience.csv): ``columns`` as the header,
    one line per row (missing keys empty), UTF-8, written with :func:`atomic_write`
    without fsync (a killed process, not a power cut, must not leave half of it). Text cells
    are :func:`spreadsheet_safe` (their numbers are never negative: nothing else changes)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(
        {k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in row.items()}
        for row in rows
    )
    data = buffer.getvalue().encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data), fsync=False)


def _temporary(path: Path, suffix: str = "") -> tuple[int, str]:
    """A new hidden ``.<name>.tmp<random><suffix>`` beside ``path`` (mkstemp: fd, name).
    The name is cut: a 250-byte file name plus the random part would pass the 255 limit."""
    return tempfile.mkstemp(prefix=f".{path.name[:100]}{TMP_INFIX}", suffix=suffix, dir=path.parent)


def temporary_beside(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """An empty hidden temporary file beside ``path`` (for writers that open it by name,
    OpenCV's video writer), which :func:`remove_temporaries` recognises."""
    fd, name = _temporary(Path(path), suffix)
    os.close(fd)
    return Path(name)


def remove_temporaries(root: str | os.PathLike[str]) -> int:
    """Delete the hidden ``.<name>.tmp*`` files that killed :func:`atomic_write` calls left
    anywhere under ``root``; returns how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") and TMP_INFIX in name:
                Path(dirpath, name).unlink(missing_ok=True)
                removed += 1
    return removed


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be written (UTF-8): a file name that is not valid
    UTF-8 (bytes old archives and other systems leave, which Python holds as surrogates) gets
    its odd bytes as ``\\xNN`` escapes. The same file always gives the same text, so a
    resumed run recognises its rows; files are still opened by their real name."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text
