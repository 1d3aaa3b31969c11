"""Cameras and network streams: ``input=0`` (a camera index), ``rtsp://``, ``http://`` ...

A live source does not wait for the model. The source is read in its own thread
(:class:`FrameGrabber`) which keeps only the NEWEST frame: when the network is slower than
the camera, the frames in between are dropped (and counted), never queued, so memory and
latency stay flat however long the run. The model loop takes the newest frame each time it
is free (at most every ``video.stride``-th), and each analysed frame becomes rows of
predictions.csv (``path`` = ``<source>#frame=N``, N counting the frames received) with its
faces tracked (``track``, ``tracks.csv``, as for video files).

The run ends cleanly, its rows written and its files closed, when the source ends or drops
(``read`` fails), when no frame arrives for ``video.stall_seconds`` (OpenCV's FFmpeg read
timeout, and a watchdog for backends without one: a stall adds an ``error: stream
stalled ...`` row), at ``video.max_frames`` / ``video.max_seconds``, or on Ctrl-C. A source
that does not open is one ``error: cannot open stream`` row.

``annotated/<source name>.mp4`` records every frame received at the source's frame rate, with
the newest analysed boxes and each track's running-average label drawn on it (written by
the reader thread: a recording that cannot keep up slows the reader, whose source then drops
frames, and still nothing queues). ``video.show=true`` also opens a live window where OpenCV
has a GUI (the ``gui`` extra); headless builds print one line and go on.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from agegender.fileio import temporary_beside
from agegender.inference.annotate import draw_faces
from agegender.inference.audience import check_audience
from agegender.inference.inputs import InputItem
from agegender.inference.options import PredictOptions
from agegender.inference.results import ImageResult
from agegender.inference.shards import ShardError
from agegender.inference.summary import Summary
from agegender.inference.video import VideoOutputs
from agegender.inference.videoio import FOURCC, FRAME_MARK, umask_mode, video_fps
from agegender.inference.writer import ResumeError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
WINDOW = "agegender"


def is_stream(source: object) -> bool:
    """A camera index (``0``, ``1`` ...) or a URL with a scheme (``rtsp://``, ``http://``,
    ``udp://`` ...), unless a file or folder of that name exists (it is then a path)."""
    text = str(source)
    if os.path.exists(text):
        return False
    return text.isdigit() or bool(_URL.match(text))


#: ``user:password@`` of a URL (everything between the scheme and the first ``@`` before the
#: path), and query parameters that carry secrets.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_SECRET_QUERY = re.compile(
    r"([?&](?:password|passwd|pass|pwd|token|access_token|auth|key|apikey|api_key|secret)=)"
    r"[^&#]*",
    re.IGNORECASE,
)


def redact_url(source: str) -> str:
    """A stream URL as it may be shown and stored: ``user:password@`` becomes ``***@`` and
    secret query values ``***`` (``rtsp://viewer:pw@cam/live`` -> ``rtsp://***@cam/live``).
    The run opens the URL as given; rows, file names, settings and messages use this."""
    text = _USERINFO.sub(r"\1***@", source)
    return _SECRET_QUERY.sub(r"\1***", text)


def stream_name(source: str) -> str:
    """A file name for the stream's annotated recording: ``camera0``, ``127.0.0.1_8000_live``."""
    if source.isdigit():
        return f"camera{source}"
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", _URL.sub("", source.split("?")[0])).strip("_.")
    return name[:100] or "stream"


def open_stream(source: str, open_seconds: float, read_seconds: float) -> cv2.VideoCapture:
    """Open a camera index with OpenCV's default backend, anything else with FFmpeg and
    open/read timeouts (so a dead URL or a stalled server cannot hang the run), falling
    back to OpenCV's other backends. Check ``isOpened()``."""
    if source.isdigit():
        return cv2.VideoCapture(int(source))
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_seconds * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(read_seconds * 1000),
    ]
    capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        capture = cv2.VideoCapture(source)
    return capture


class FrameGrabber:
    """Reads ``capture`` in a daemon thread, keeping only the newest frame (BGR).

    ``on_frame(index, frame)`` runs in the reader thread for EVERY frame (the recording).
    :attr:`end_reason` says why reading stopped: ``closed`` (the source ended or dropped),
    ``stalled`` (a read gave up after the read timeout), ``limit`` (max frames/seconds),
    ``stopped`` (:meth:`stop`), or ``error: ...``.
    """

    def __init__(
        self,
        capture: cv2.VideoCapture,
        read_seconds: float,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        on_frame: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        self.capture = capture
        self.read_seconds = read_seconds
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.on_frame = on_frame
        self.received = 0
        self.end_reason: str | None = None
        self._newest: tuple[int, np.ndarray] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agegender-grab", daemon=True)

    def start(self) -> FrameGrabber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    def _run(self) -> None:
        start = time.monotonic()
        reason = "stopped"
        try:
            while not self._stop.is_set():
                if self.max_frames is not None and self.received >= self.max_frames:
                    reason = "limit"
                    break
                if self.max_seconds is not None and time.monotonic() - start >= self.max_seconds:
                    reason = "limit"
                    break
                began = time.monotonic()
                ok, frame = self.capture.read()
                if not ok or frame is None:
                    waited = time.monotonic() - began
                    reason = "stalled" if waited >= 0.8 * self.read_seconds else "closed"
                    break
                index = self.received
                if self.on_frame is not None:
                    self.on_frame(index, frame)
                with self._cond:
                    self._newest = (index, frame)
                    self.received = index + 1
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - a reader failure ends the run, cleanly
            reason = f"error: {type(exc).__name__}: {exc}"
        finally:
            self.capture.release()
            with self._cond:
                self.end_reason = reason
                self._cond.notify_all()

    def newest(self, after: int, timeout: float) -> tuple[int, np.ndarray] | None:
        """The newest frame with index > ``after``, waiting up to ``timeout`` seconds;
        None when reading ended (see :attr:`end_reason`) or nothing came in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._newest is None or self._newest[0] <= after:
                if self.end_reason is not None:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._newest

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Still inside ``read()`` (a backend without a read timeout): its capture and the
        recording stay open, the daemon thread ends with the process."""
        return self._thread.is_alive()


class Recorder:
    """``annotated/<name>.mp4``: every frame received, with the newest overlay drawn on it;
    under a hidden temporary name until :meth:`close` renames it."""

    def __init__(self, target: Path, fps: float, blur: bool = False) -> None:
        self.target = target
        self.fps = fps
        self.blur = blur
        self.overlay: tuple[list[tuple[float, ...]], list[tuple[str, str]]] = ([], [])
        self.frames = 0
        self.error: str | None = None
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_beside(target, ".mp4")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def __call__(self, index: int, frame: np.ndarray) -> None:
        if self.error is not None:
            return
        try:
            if self._writer is None:
                self._size = (frame.shape[1], frame.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*FOURCC)
                self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
                if not self._writer.isOpened():
                    raise OSError(f"OpenCV cannot write {FOURCC} video {self.target}")
            canvas = frame if frame.shape[1::-1] == self._size else cv2.resize(frame, self._size)
            boxes, labels = self.overlay  # replaced whole by the model loop: a consistent pair
            canvas = draw_faces(canvas.copy(), boxes, labels, blur=self.blur)
            self._writer.write(canvas)
            self.frames += 1
        except (OSError, cv2.error) as exc:  # the rows matter more than the recording
            self.error = str(exc)

    def close(self) -> Path | None:
        if self._writer is not None:
            self._writer.release()
        if self.error is None and self.frames:
            umask_mode(self._tmp)
            os.replace(self._tmp, self.target)
            return self.target
        self._tmp.unlink(missing_ok=True)
        return None


def gui_available() -> tuple[bool, str]:
    """(can OpenCV open a window here, why not): needs a GUI build of OpenCV (the ``gui``
    extra, ``opencv-python``) and, on Linux, a display."""
    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.M)
    if gui is None or gui.group(1).upper() == "NONE":
        return False, "this OpenCV has no GUI (opencv-python-headless; see the gui extra)"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False, "no display (DISPLAY is not set)"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        return False, f"OpenCV cannot open a window ({str(exc).strip().splitlines()[-1]})"
    return True, ""


class StreamSource:
    """A camera or stream as the job loop's source (see the module docstring): live frames
    (the pipeline analyses each as it comes, no read-ahead), one video for tracking, a live
    recording instead of a second pass, and a closing row saying why it ended early."""

    live = True
    resumable = False
    shardable = False

    def __init__(self, source: str, output: Path, options: PredictOptions) -> None:
        self.source = source  # opened as given
        self.name = redact_url(source)  # what rows, files and messages show
        self.taken: frozenset[str] = frozenset()
        self.output = output
        self.options = options
        self.video = options.video
        self.grabber: FrameGrabber | None = None
        self.recorder: Recorder | None = None
        self.capture_fps = 0.0
        self.analysed = 0
        self.window = False
        self.stopped = False

    def check(self) -> None:
        """Refuse settings that cannot apply to a live source."""
        check_audience(self.options, live=True)
        if self.options.num_shards > 1:
            raise ShardError("a camera or stream cannot be sharded (num_shards must be 1)")
        if self.options.resume:
            raise ResumeError(
                "a camera or stream cannot be resumed (its frames are gone): run without "
                "resume=true, into another output to keep this one's files"
            )

    def total(self, summary: Summary) -> int | None:
        return None

    def begin(self, csv_path: Path, done: set[str], summary: Summary) -> None:
        """Nothing to prepare in the output folder (no skipped files, nothing done)."""

    def fps(self, video: str) -> float:
        return self.capture_fps

    def relpath(self, file: Path) -> str:
        return stream_name(self.name)

    def limit(self, video: str) -> int | None:
        return None

    def items(self, done: set[str], complete: frozenset[str]) -> Iterator[InputItem]:
        video = self.video
        capture = open_stream(self.source, video.open_seconds, video.stall_seconds)
        if not capture.isOpened():
            capture.release()
            yield InputItem(self.name, self.name, error="cannot open stream")
            return
        self.capture_fps = video_fps(capture)
        if self.options.annotates:
            target = self.output / "annotated" / f"{stream_name(self.name)}.mp4"
            self.recorder = Recorder(target, self.capture_fps, blur=self.options.blur_faces)
        self.grabber = grabber = FrameGrabber(
            capture, video.stall_seconds, video.max_frames, video.max_seconds, self.recorder
        ).start()
        if video.show:
            self.window, why = gui_available()
            if not self.window:
                print(f"agegender: no live window: {why}; writing files only", file=sys.stderr)
        last = -video.stride
        while not self.stopped:
            got = grabber.newest(last + video.stride - 1, video.stall_seconds)
            if got is None:
                if not grabber.ended:  # the reader is stuck inside read(): a stall
                    grabber.stop()
                    grabber.end_reason = "stalled"
                return
            index, frame = got
            last = index
            name = f"{self.name}{FRAME_MARK}{index}"
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            yield InputItem(name, name, image=rgb, video=self.name, frame=index, stamp=time.time())

    def after(self, result: ImageResult, videos: VideoOutputs) -> None:
        """The live side of each analysed frame: the recording's overlay (each track's
        running-average label), a progress line, the live window."""
        if result.item.video is None or videos.current is None:
            return
        self.analysed += 1
        boxes = [face.box for face in result.faces]
        labels = videos.current.running_labels(result)
        if self.recorder is not None:
            self.recorder.overlay = (boxes, labels)  # replaced whole: a consistent pair
        if self.options.progress and self.analysed % 25 == 0 and self.grabber is not None:
            received = self.grabber.received
            print(f"  stream: {received} frames, {self.analysed} analysed", file=sys.stderr)
        if self.window and result.image is not None:
            frame = cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR)
            if not _show(frame, boxes, labels, self.options.blur_faces):
                self.interrupt()

    def interrupt(self) -> None:
        self.stopped = True
        if self.grabber is not None:
            self.grabber.stop()

    def finish(self, summary: Summary) -> list[ImageResult]:
        """The closing row (why the stream ended early, if it did) and the stream's figures."""
        grabber = self.grabber
        if grabber is None:  # never opened: its error row is already written
            return []
        stall = self.video.stall_seconds
        grabber.join(timeout=stall + 1.0)
        reason = grabber.end_reason or "stalled"
        why = None
        if reason == "stalled":
            why = f"stream stalled (no frame for {stall:g} s)"
        elif reason.startswith("error: "):
            why = f"stream failed ({reason[7:]})"
        elif grabber.received == 0:
            why = "stream has no readable frames"
        if self.recorder is not None and not grabber.alive:
            path = self.recorder.close()
            if path is not None:
                summary.annotated_videos.append(str(path))
        if self.window:
            cv2.destroyAllWindows()
        summary.stream = {
            "received": grabber.received,
            "analysed": self.analysed,
            "dropped": max(0, grabber.received - self.analysed),
            "end": reason,
        }
        if why is None:
            return []
        return [ImageResult(InputItem(self.name, self.name), error=why)]

    def end(self, csv_path: Path, rows: int, columns: tuple[str, ...]) -> None:
        """Nothing to mark: a stream is never a shard."""


def _show(frame: np.ndarray, boxes: list, labels: list, blur: bool = False) -> bool:
    """Show one annotated frame; False when the user pressed q or Esc."""
    cv2.imshow(WINDOW, draw_faces(frame.copy(), boxes, labels, blur=blur))
    return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)
