"""Writing a file so that no reader, crash or concurrent writer ever sees half of it.

One helper for every file the project writes in place of an older one (cache shards and
manifests, converted weights, checkpoints, cross-validation tables): the data goes to a
temporary file in the same folder (same file system, so the rename is atomic), is flushed
to disk, and is then renamed over the target with ``os.replace``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, and rename it
    into place; on any failure (or a KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was.

    The temporary name is ``.<name>.tmp<random>``, so a killed writer leaves at most a
    hidden ``.<name>.tmp*`` file that a cleaner can recognise. Parent folders are created.
    Permissions follow the umask, like an ordinary ``open`` (``mkstemp`` would make 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
