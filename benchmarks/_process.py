"""Wall time and peak memory of a fresh process, as the issues measure them (GNU time)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``command`` run from the repository root, from
    ``/usr/bin/time -f "%e %M"``."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    wall, kb = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kb) / 1024
