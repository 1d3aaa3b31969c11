"""What ``input=PATH`` means: one image, every file under a folder, or frames of a video.

Rule (documented in the README): a folder is walked recursively in sorted order. A file is
an input when its extension (case-insensitive) is an image format Pillow reads (``.jpg``,
``.png``, ``.webp``, ``.tif``, ``.gif``, ``.bmp``, ... :data:`IMAGE_EXTENSIONS`) or a video
format (:data:`VIDEO_EXTENSIONS`); it then ALWAYS gets at least one row, so a text file named
``.jpg`` gets ``error: not an image``. Other files (``notes.txt``, ``labels.csv``, files
without an extension) and hidden files/folders (``.DS_Store``, ``.git``) are not inputs: they
are counted and listed as skipped in the closing summary, never dropped silently. A path
given directly as ``input=FILE`` is always an input, whatever its extension.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from agegender.errors import AgeGenderError
from agegender.fileio import display_path
from agegender.images import image_extensions
from agegender.inference.videoio import FRAME_MARK, frame_limit

if TYPE_CHECKING:
    from agegender.faces.types import Face

#: Extensions read frame by frame with OpenCV (``video.stride``), case-insensitive.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)


#: Extensions read as images in a folder (the formats agegender.images decodes: no
#: PostScript, no PDF); the content decides the format, the extension only selects inputs.
IMAGE_EXTENSIONS: frozenset[str] = image_extensions()


class InputNotFoundError(AgeGenderError, FileNotFoundError):
    """``input`` names nothing: a configuration error, not a bad file."""


@dataclass
class InputItem:
    """One unit of work: an image file to decode, or an already decoded video frame.

    ``path`` is what the CSV shows (``file.mp4#frame=N`` for frames); ``relpath`` names the
    annotated copy under ``DIR/annotated/``. ``faces``: boxes found by someone else's detector
    (full-size pixels of the image): detection is skipped and these faces are classified.
    ``video``/``frame``: the video file or stream a frame belongs to, and its index.
    ``data``: an encoded image held in memory (an upload to the prediction server), decoded
    like a file without touching the disk.
    ``replay``: a frame an earlier run already wrote (``resume=true``), analysed again only
    so that its video's tracks continue exactly as in an uninterrupted run; never written.
    ``stamp``: a live frame's wall-clock time (Unix seconds) when it was taken for analysis
    (the audience windows of cameras and streams); None for files.
    """

    path: str
    relpath: str
    file: Path | None = None
    image: np.ndarray | None = None
    error: str | None = None
    faces: list[Face] | None = None
    data: bytes | None = None
    video: str | None = None
    frame: int | None = None
    replay: bool = False
    stamp: float | None = None


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def is_input_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS


def scan_inputs(
    root: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[Path]]:
    """(inputs, skipped) in sorted order: ``[root]`` for a file, the folder rule above
    otherwise. Unreadable sub-folders, links to folders (never followed) and entries that
    are not regular files (named pipes, sockets, devices: never opened, a pipe would block
    the run) are reported as skipped rather than ignored. ``exclude``: a folder not walked
    at all (the run's own output, when it lies inside the input)."""
    root = Path(root)
    if root.is_file():
        return [root], []
    if not root.is_dir():
        raise InputNotFoundError(f"input {display_path(root)!r} is neither a file nor a folder")
    inputs: list[Path] = []
    skipped: list[Path] = []
    excluded = _identity(exclude) if exclude is not None else None

    def unreadable(error: OSError) -> None:
        skipped.append(Path(error.filename or root))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        folder = Path(dirpath)
        walk = []
        for d in dirnames:
            path = folder / d
            if excluded is not None and _identity(path) == excluded:
                continue
            try:
                hidden_or_link = d.startswith(".") or path.is_symlink()
            except OSError:  # a folder listed but not entered (no x permission)
                hidden_or_link = True
            if hidden_or_link:
                skipped.append(path)
            else:
                walk.append(d)
        dirnames[:] = sorted(walk)
        for name in filenames:
            path = folder / name
            try:
                keep = not name.startswith(".") and is_input_file(path) and path.is_file()
            except OSError:  # its folder can be listed but not entered: cannot be read
                keep = False
            (inputs if keep else skipped).append(path)
    key = lambda p: p.relative_to(root).parts  # noqa: E731
    return sorted(inputs, key=key), sorted(skipped, key=key)


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of an existing folder: the same folder however it is spelled."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def list_files(root: str | os.PathLike[str]) -> list[Path]:
    """The inputs of :func:`scan_inputs`, without the skipped list."""
    return scan_inputs(root)[0]


def iter_inputs(
    root: str | os.PathLike[str],
    files: list[Path] | None = None,
    video_stride: int = 10,
    done: Container[str] = frozenset(),
    max_frames: int | None = None,
    max_seconds: float | None = None,
    complete: Container[str] = frozenset(),
) -> Iterator[InputItem]:
    """Yield one item per image file and per ``video_stride``-th video frame, except those
    whose ``path`` is in ``done`` (already in the CSV of a resumed run): a done image is not
    even opened. A video in ``complete`` (its tracks are in tracks.csv) skips its done
    frames without decoding them; any other video replays them (:attr:`InputItem.replay`).
    ``max_frames`` / ``max_seconds``: only a video's first frames (:func:`frame_limit`)."""
    if video_stride < 1:
        raise ValueError(f"video.stride must be >= 1, got {video_stride}")
    root = Path(root)
    base = root if root.is_dir() else root.parent
    for file in list_files(root) if files is None else files:
        name = display_path(file)
        if name in done:  # an image, or a video whose only row is an error row
            continue
        rel = file.relative_to(base).as_posix()
        if is_video(file):
            replay = name not in complete
            yield from iter_video_frames(
                file, rel, video_stride, done, max_frames, max_seconds, replay
            )
        else:
            yield InputItem(path=name, relpath=rel, file=file)


def iter_video_frames(
    file: Path,
    relpath: str,
    stride: int,
    done: Container[str] = frozenset(),
    max_frames: int | None = None,
    max_seconds: float | None = None,
    replay: bool = False,
) -> Iterator[InputItem]:
    """Every ``stride``-th frame (0, stride, 2*stride...) as RGB; an unreadable video is one
    error item, a video that stops early ends quietly (its last frames are its last rows).
    Frames whose ``path`` is in ``done`` are grabbed (to keep the count) but not decoded,
    unless ``replay``: then they are yielded as replay items. Reading stops after
    :func:`frame_limit` frames."""
    shown = display_path(file)
    if not os.access(file, os.R_OK):
        yield InputItem(shown, relpath, file=file, error="permission denied")
        return
    if shown != str(file):  # OpenCV takes file names as UTF-8 text only
        yield InputItem(shown, relpath, file=file, error="cannot open video (name not UTF-8)")
        return
    capture = cv2.VideoCapture(str(file))
    try:
        if not capture.isOpened():
            yield InputItem(shown, relpath, file=file, error="cannot open video")
            return
        limit = frame_limit(capture, max_frames, max_seconds)
        index = 0
        emitted = 0
        while limit is None or index < limit:
            # grab() skips decoding of frames we do not keep.
            if not capture.grab():
                break
            if index % stride == 0:
                name = f"{file}{FRAME_MARK}{index}"
                again = name in done
                if again and not replay:
                    emitted += 1
                    index += 1
                    continue
                ok, frame = capture.retrieve()
                rel = f"{relpath}{FRAME_MARK}{index}"
                frame_of = {"video": str(file), "frame": index, "replay": again}
                if ok and frame is not None:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    yield InputItem(name, rel, file=file, image=rgb, **frame_of)
                else:
                    yield InputItem(name, rel, file=file, error="cannot decode frame", **frame_of)
                emitted += 1
            index += 1
        if emitted == 0:
            yield InputItem(shown, relpath, file=file, error="video has no readable frames")
    finally:
        capture.release()
