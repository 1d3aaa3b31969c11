"""Reading and writing video files with OpenCV: frame rates, frame limits, the codec."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2

#: Frame rate assumed when a file or stream does not report a usable one.
DEFAULT_FPS = 25.0
#: MPEG-4 Part 2 in .mp4: what every pip OpenCV build writes (no H.264 encoder there).
FOURCC = "mp4v"
#: ``path`` of a video frame's rows: ``clip.mp4#frame=N``.
FRAME_MARK = "#frame="


def video_fps(capture: cv2.VideoCapture) -> float:
    """The capture's frame rate, or :data:`DEFAULT_FPS` when it reports none (0, NaN, absurd)."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS


def frame_limit(
    capture: cv2.VideoCapture, max_frames: int | None = None, max_seconds: float | None = None
) -> int | None:
    """How many frames of an opened video to read: ``max_frames``, and ``max_seconds`` of
    video time at its frame rate; None = all."""
    limits = [] if max_frames is None else [int(max_frames)]
    if max_seconds is not None:
        limits.append(math.ceil(float(max_seconds) * video_fps(capture)))
    return min(limits) if limits else None


def umask_mode(path: Path) -> None:
    """Give a mkstemp file (0600) the permissions an ordinary ``open`` would (as
    :func:`agegender.fileio.atomic_write` does)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
