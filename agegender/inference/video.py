"""Videos and streams in a prediction run: one identity per face, tracks.csv, and the
annotated copy of a video file.

The job loop (:mod:`agegender.inference.job`) hands every result to
:class:`VideoOutputs.observe` in input order:

- each analysed frame's faces go through a :class:`~agegender.inference.tracking.FaceTracker`
  and get a ``track`` id. A face that starts a track is confirmed on the next analysed frame,
  so a frame with such a face is held back one analysed frame and released with the ids its
  faces turned out to have: every face row that belongs to a track carries its id;
- when a video's last frame is in (or a stream ends), its tracks (averaged probabilities) go
  to ``tracks.csv`` and, for a video file, ``annotated/<video>.mp4`` is written by a second
  pass over the video: EVERY frame at the input's frame rate and size, the boxes of the
  analysed frames carried to the frames between them (moved linearly where the same track is
  on both sides), each tracked face labelled ``#id gender, age`` with its TRACK's answer,
  which does not flicker; an untracked face shows its own frame's label. (A stream is
  recorded live instead: :mod:`agegender.inference.streams`.)

The second pass re-decodes the video (cheap next to detection) instead of holding frames,
so memory stays flat however long the video is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Container, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agegender.fileio import temporary_beside
from agegender.inference.annotate import draw_faces, free_name
from agegender.inference.results import ImageResult, Label, label_of
from agegender.inference.tracking import (
    MIN_SIMILARITY,
    TRACKS_NAME,
    FaceTracker,
    Track,
    TrackBook,
    frame_time,
    read_tracks_csv,
    write_tracks_csv,
)
from agegender.inference.videoio import FOURCC, umask_mode, video_fps
from agegender.labels import LabelSet


def tracks_path(predictions: Path) -> Path:
    """tracks.csv beside ``predictions`` (``predictions.csv`` / ``.jsonl``); a shard's
    ``predictions.shard-i-of-N.csv`` gets ``tracks.shard-i-of-N.csv`` (a video is in one
    shard, so each shard's file is complete for its videos; shards never share one)."""
    stem = predictions.name.split(".", 1)[1] if "." in predictions.name else "csv"
    name = TRACKS_NAME if not stem.startswith("shard-") else f"tracks.{stem.rsplit('.', 1)[0]}.csv"
    return predictions.parent / name


def annotated_video_path(
    root: str | os.PathLike[str], relpath: str, taken: Container[str] = frozenset()
) -> Path:
    """``clip.mp4`` -> ROOT/clip.mp4, ``clip.avi`` -> ROOT/clip.avi.mp4 (always MPEG-4;
    ``clip.avi.1.mp4`` when an input is called ``clip.avi.mp4``: :func:`free_name`)."""
    if Path(relpath).suffix.lower() == ".mp4":
        return Path(root) / relpath
    return Path(root) / free_name(relpath + ".mp4", taken)


@dataclass
class FaceMark:
    """What is drawn for one face of one analysed frame."""

    box: tuple[float, float, float, float]
    track: int | None
    #: The frame's own label (:class:`~agegender.inference.results.Label`, or a plain
    #: (text, gender) pair), used when the face has no track.
    label: tuple[str, ...]


@dataclass
class FrameMarks:
    index: int
    faces: list[FaceMark]


def track_label(track: Track | None, mark: FaceMark) -> Label:
    """``#id female 0.97, 25-32 0.61`` from the track's averaged probabilities (class and
    its mean probability: :func:`~agegender.inference.results.label_of`); the frame's own
    label for a face without a track."""
    if track is None or mark.track is None:
        return Label(*mark.label)
    means = track.mean()
    if not means:  # a model without heads: nothing to average
        return Label(f"#{mark.track} {mark.label[0]}".strip(), *mark.label[1:])
    names = track.labels.class_names
    answers = {}
    for task, p in means.items():
        best = int(np.argmax(p))
        answers[task] = (names[task][best], float(p[best]))
    label = label_of(answers)
    return label._replace(text=f"#{mark.track} {label.text}".strip())


class VideoTracks:
    """The tracking state of one video or stream: tracker, the run's track book, the frames
    held back for their faces' confirmation, and the marks of its analysed frames (kept only
    for a later annotated copy). Each frame is tracked at its own time
    (:func:`~agegender.inference.tracking.frame_time`) with its faces' looks
    (:attr:`~agegender.inference.results.ImageResult.looks`, dropped once used)."""

    def __init__(
        self,
        video: str,
        book: TrackBook,
        fps: float,
        stride: int,
        lost_seconds: float,
        keep_marks: bool = True,
        min_similarity: float | None = MIN_SIMILARITY,
        lost_rule: str = "seconds",
    ) -> None:
        self.video = video
        self.book = book
        self.fps = fps
        self.tracker = FaceTracker(fps, stride, lost_seconds, min_similarity, lost_rule)
        self.keep_marks = keep_marks
        self.marks: list[FrameMarks] = []
        #: Results not yet released, in input order; (result, its marks, still waiting).
        self._queue: deque[list] = deque()
        self._last: list | None = None  # the queue entry of the last tracked frame

    def observe(self, result: ImageResult) -> list[ImageResult]:
        """Track ``result``'s faces; returns the results now ready to be written, in order.

        A frame that could not be decoded is not tracked (the tracker neither sees nor ages
        on it); a frame without faces ages lost tracks."""
        index = result.item.frame if result.item.frame is not None else 0
        if result.error is not None:
            result.tracks = None
            self._queue.append([result, None, False])
            return self._release()
        boxes = np.array([f.box for f in result.faces], dtype=np.float32).reshape(-1, 4)
        scores = np.array([f.score for f in result.faces], dtype=np.float32)
        looks = result.looks if len(result.looks) == len(result.faces) else None
        ids = self.tracker.update(boxes, scores, frame_time(result.item, self.fps), looks)
        result.looks = []  # only the tracker needs them
        if self._last is not None and self.tracker.claims:
            held, held_marks, _ = self._last
            for i, track in self.tracker.claims.items():
                held.tracks[i] = track
                self.book.add(self.video, held.item.frame or 0, track, held.faces[i])
                if held_marks is not None:
                    held_marks.faces[i].track = track
        if self._last is not None:
            self._last[2] = False  # its claims are final now
        result.tracks = list(ids)
        for face, track in zip(result.faces, ids, strict=True):
            if track is not None:
                self.book.add(self.video, index, track, face)
        marks = FrameMarks(
            index, [FaceMark(f.box, t, f.label()) for f, t in zip(result.faces, ids, strict=True)]
        )
        if self.keep_marks:
            self.marks.append(marks)
        entry = [result, marks, any(t is None for t in ids)]
        self._queue.append(entry)
        self._last = entry
        return self._release()

    def _release(self) -> list[ImageResult]:
        ready = []
        while self._queue and not self._queue[0][2]:
            ready.append(self._queue.popleft()[0])
        return ready

    def flush(self) -> list[ImageResult]:
        """The video ended: every held result, in order (unclaimed faces stay untracked)."""
        ready = [entry[0] for entry in self._queue]
        self._queue.clear()
        self._last = None
        return ready

    def label(self, mark: FaceMark) -> Label:
        """What to draw for a face: its track's answer so far, else its own frame's."""
        track = None if mark.track is None else self.book.get(self.video, mark.track)
        return track_label(track, mark)

    def running_labels(self, result: ImageResult) -> list[Label]:
        """:meth:`label` of each face of ``result`` (a stream's live overlay)."""
        tracks = result.tracks or [None] * len(result.faces)
        return [
            self.label(FaceMark(face.box, track, face.label()))
            for face, track in zip(result.faces, tracks, strict=True)
        ]


def marks_at(marks: Sequence[FrameMarks], k: int, index: int) -> list[FaceMark]:
    """The faces to draw on frame ``index`` (marks[k].index <= index < marks[k+1].index):
    marks[k]'s, each tracked box moved linearly toward its track's box in marks[k+1]."""
    here = marks[k]
    if index == here.index or k + 1 >= len(marks):
        return here.faces
    after = marks[k + 1]
    t = (index - here.index) / (after.index - here.index)
    ahead = {m.track: m.box for m in after.faces if m.track is not None}
    out = []
    for mark in here.faces:
        target = ahead.get(mark.track) if mark.track is not None else None
        if target is None:
            out.append(mark)
            continue
        box = tuple(a + (b - a) * t for a, b in zip(mark.box, target, strict=True))
        out.append(FaceMark(box, mark.track, mark.label))  # type: ignore[arg-type]
    return out


def _frames(capture: cv2.VideoCapture, limit: int | None) -> Iterator[np.ndarray]:
    index = 0
    while limit is None or index < limit:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        yield frame
        index += 1


def render_annotated_video(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    marks: Sequence[FrameMarks],
    label: Callable[[FaceMark], tuple[str, ...]],
    limit: int | None = None,
    blur: bool = False,
) -> Path:
    """Write ``target`` (.mp4): every frame of ``source`` (up to ``limit`` frames) at its
    frame rate and size, with the analysed frames' faces drawn and carried (see
    :func:`marks_at`). Written beside under a hidden temporary name and renamed, so a killed
    run never leaves a half-written copy under the real name. Raises OSError on failure.
    ``blur``: every face blurred instead of boxed and labelled."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise OSError(f"cannot reopen {source} to write {target}")
    tmp = temporary_beside(target, ".mp4")
    writer: cv2.VideoWriter | None = None
    try:
        fps = video_fps(capture)
        size: tuple[int, int] | None = None
        k = -1
        for index, frame in enumerate(_frames(capture, limit)):
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCC), fps, size)
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write {FOURCC} video {target}")
            elif (frame.shape[1], frame.shape[0]) != size:  # a stream that changed size
                frame = cv2.resize(frame, size)
            while k + 1 < len(marks) and marks[k + 1].index <= index:
                k += 1
            if k >= 0:
                faces = marks_at(marks, k, index)
                draw_faces(frame, [f.box for f in faces], [label(f) for f in faces], blur=blur)
            writer.write(frame)
        if writer is None:
            raise OSError(f"no frame of {source} could be read again for {target}")
        writer.release()
        writer = None
        umask_mode(tmp)
        os.replace(tmp, target)
    except cv2.error as exc:
        raise OSError(f"cannot write {target}: {exc}") from exc
    finally:
        if writer is not None:
            writer.release()
        capture.release()
        tmp.unlink(missing_ok=True)
    return target


class VideoOutputs:
    """The video side of a prediction run (see the module docstring).

    Call :meth:`observe` on every result in input order and write what it returns, then
    :meth:`close` and write what that returns. ``submit`` runs an annotated-video job (the
    run's annotation thread) and returns its Future; None = no annotated videos (streams are
    recorded live). ``fps``: the frame rate of a video or stream, by name. ``resume``:
    tracks.csv rows of videos this run does not analyse are kept (:attr:`complete` names
    them); a video continued mid-way is analysed again from its first frame, its done frames
    as replays that are not written (:attr:`agegender.inference.inputs.InputItem.replay`),
    so its ids and track averages equal an uninterrupted run's. ``keep_tracks=False``
    (``privacy=true``): no tracks.csv, and each track is dropped from memory when it ends
    (:meth:`forget`) or its video does. ``blur``: annotated videos blur faces.
    ``lost_seconds``, ``min_similarity``: the tracker's (:class:`~agegender.inference.
    tracking.FaceTracker`; ``video.lost_seconds``, ``video.min_similarity``).
    """

    def __init__(
        self,
        output: Path,
        csv_path: Path,
        labels: LabelSet,
        relpath: Callable[[Path], str],
        stride: int,
        lost_seconds: float,
        fps: Callable[[str], float],
        limit: Callable[[str], int | None] | None = None,
        submit: Callable[..., Future[Path | None]] | None = None,
        resume: bool = False,
        taken: Container[str] = frozenset(),
        keep_tracks: bool = True,
        blur: bool = False,
        min_similarity: float | None = MIN_SIMILARITY,
    ) -> None:
        self.output = output
        self.keep_tracks = keep_tracks
        self.blur = blur
        self.tracks_csv = tracks_path(csv_path)
        self.labels = labels
        self.resume = resume
        self.relpath = relpath
        self.stride = stride
        self.lost_seconds = lost_seconds
        self.min_similarity = min_similarity
        self.fps = fps
        self.limit = limit
        self.submit = submit
        self.taken = taken
        self.book = TrackBook(labels)
        self.kept = read_tracks_csv(self.tracks_csv, labels) if resume else []
        #: Videos whose tracks an earlier run completed (their rows are kept).
        self.complete: frozenset[str] = frozenset(row["video"] for row in self.kept)
        self.futures: list[Future[Path | None]] = []
        self.current: VideoTracks | None = None
        self.current_video: str | None = None
        self.current_file: Path | None = None
        self.videos = 0
        self.annotated: list[Path] = []

    def observe(self, result: ImageResult) -> list[ImageResult]:
        """The results ready to be written (in input order) after ``result`` arrived: a
        photo at once; a video frame once its faces' tracks are known."""
        video = result.item.video
        ready: list[ImageResult] = []
        if video != self.current_video:
            ready.extend(self._finish_video())
        if video is None:
            return [*ready, result]
        if self.current is None:
            self.current_video, self.current_file = video, result.item.file
            self.current = VideoTracks(
                video, self.book, self.fps(video), self.stride, self.lost_seconds,
                keep_marks=self.submit is not None, min_similarity=self.min_similarity,
            )  # fmt: skip
        ready.extend(self.current.observe(result))
        return ready

    def _finish_video(self) -> list[ImageResult]:
        current, file = self.current, self.current_file
        self.current, self.current_video, self.current_file = None, None, None
        if current is None:
            return []
        ready = current.flush()
        self.videos += 1
        self._write_tracks()
        if self.submit is not None and file is not None and current.marks:
            target = annotated_video_path(self.output / "annotated", self.relpath(file), self.taken)
            self.annotated.append(target)
            self.futures.append(self.submit(self._render, file, target, current))
        return ready

    def _render(self, file: Path, target: Path, tracks: VideoTracks) -> Path:
        limit = None if self.limit is None else self.limit(str(file))
        return render_annotated_video(
            file, target, tracks.marks, tracks.label, limit, blur=self.blur
        )

    def forget(self, video: str, track: int) -> None:
        """Drop an ended track (``keep_tracks=False``: only the live tracks stay in memory)."""
        if not self.keep_tracks:
            self.book.tracks.pop((video, track), None)

    def _write_tracks(self) -> None:
        if not self.keep_tracks:
            self.book.tracks.clear()
            return
        mine = {video for video, _ in self.book.tracks}
        rows = [r for r in self.kept if r["video"] not in mine] + self.book.rows()
        if rows or self.tracks_csv.exists():
            write_tracks_csv(self.tracks_csv, rows, self.labels)

    def close(self) -> list[ImageResult]:
        """Finish the last video; returns its held results (wait for :attr:`futures` too)."""
        ready = self._finish_video()
        if self.videos == 0 and not self.resume and self.keep_tracks:
            # an earlier run's file would not be true
            self.tracks_csv.unlink(missing_ok=True)
        return ready

    @property
    def tracks(self) -> int:
        return len(self.book.tracks)


def video_line(summary: object) -> str:
    """The closing line's video part: ``2 tracks in 1 video; annotated: out/annotated/a.mp4``
    (+ a stream's received / analysed / dropped frames and why it ended)."""
    videos, tracks = summary.videos, summary.tracks  # type: ignore[attr-defined]
    text = f"{tracks} tracks in {videos} video{'s' if videos != 1 else ''}"
    stream = getattr(summary, "stream", None)
    if stream:
        text += (
            f" (stream: {stream['received']} frames received, {stream['analysed']} analysed, "
            f"{stream['dropped']} dropped; ended: {stream['end']})"
        )
    annotated = getattr(summary, "annotated_videos", [])
    if annotated:
        text += "; annotated: " + ", ".join(annotated[:3]) + (" ..." if len(annotated) > 3 else "")
    return text
