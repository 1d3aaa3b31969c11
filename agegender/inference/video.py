"""Videos in a prediction run: one identity per face, an annotated copy, and tracks.csv.

predict.py analyses every ``video.stride``-th frame (the rows of predictions.csv). This
module is the video side of the run (:class:`VideoOutputs`, called by
:mod:`agegender.inference.run` as each result arrives, in input order):

- each analysed frame's faces go through a :class:`~agegender.inference.tracking.FaceTracker`
  and get a ``track`` id (the ``track`` column);
- when a video's last frame is in, its tracks (averaged probabilities) are added to
  ``tracks.csv`` and ``annotated/<video>.mp4`` is written by a second pass over the video:
  EVERY frame at the input's frame rate and size, the boxes of the analysed frames carried
  to the frames between them (moved linearly where the same track is on both sides), each
  tracked face labelled ``#id gender, age`` with its TRACK's answer, which does not flicker;
  an untracked face shows its own frame's label.

The second pass re-decodes the video (cheap next to detection) instead of holding frames,
so memory stays flat however long the video is.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agegender.fileio import TMP_INFIX
from agegender.inference.annotate import draw_faces, label_of
from agegender.inference.inputs import InputItem, is_video
from agegender.inference.pipeline import ImageResult
from agegender.inference.tracking import (
    TRACKS_NAME,
    FaceTracker,
    Track,
    TrackBook,
    read_tracks_csv,
    write_tracks_csv,
)

FRAME_MARK = "#frame="
#: Frame rate assumed when a file or stream does not report a usable one.
DEFAULT_FPS = 25.0
#: MPEG-4 Part 2 in .mp4: what every pip OpenCV build writes (no H.264 encoder there).
FOURCC = "mp4v"


@dataclass
class VideoOptions:
    """``video.*`` settings beyond ``stride`` (conf/predict.yaml)."""

    #: A face missing from the analysed frames this long loses its track id.
    lost_seconds: float = 1.0
    #: Read only a video's (stream's) first frames / seconds; None = all.
    max_frames: int | None = None
    max_seconds: float | None = None


def video_fps(capture: cv2.VideoCapture) -> float:
    """The capture's frame rate, or :data:`DEFAULT_FPS` when it reports none (0, NaN, absurd)."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS


def frame_of(item: InputItem) -> int | None:
    """The frame index of a video frame item (``<file>#frame=N``), None for anything else."""
    if item.file is None or not is_video(item.file):
        return None
    head, mark, index = item.path.rpartition(FRAME_MARK)
    if not mark or head != str(item.file) or not index.isdigit():
        return None
    return int(index)


def tracks_path(predictions: Path) -> Path:
    """tracks.csv beside ``predictions`` (``predictions.csv`` / ``.jsonl``); a shard's
    ``predictions.shard-i-of-N.csv`` gets ``tracks.shard-i-of-N.csv`` (a video is in one
    shard, so each shard's file is complete for its videos; shards never share one)."""
    stem = predictions.name.split(".", 1)[1] if "." in predictions.name else "csv"
    name = TRACKS_NAME if not stem.startswith("shard-") else f"tracks.{stem.rsplit('.', 1)[0]}.csv"
    return predictions.parent / name


def annotated_video_path(root: str | os.PathLike[str], relpath: str) -> Path:
    """``clip.mp4`` -> ROOT/clip.mp4, ``clip.avi`` -> ROOT/clip.avi.mp4 (always MPEG-4)."""
    path = Path(root) / relpath
    return path if path.suffix.lower() == ".mp4" else path.with_name(path.name + ".mp4")


@dataclass
class FaceMark:
    """What is drawn for one face of one analysed frame."""

    box: tuple[float, float, float, float]
    track: int | None
    #: The frame's own (text, gender), used when the face has no track.
    label: tuple[str, str]


@dataclass
class FrameMarks:
    index: int
    faces: list[FaceMark]


@dataclass
class DoneFrame:
    """One analysed frame as an earlier run wrote it into predictions.csv."""

    index: int
    boxes: list[tuple[float, ...]]
    scores: list[float]
    labels: list[tuple[str, str]]
    #: Per face {task: probabilities}; None when the CSV has no ``p_*`` columns.
    probs: list[dict[str, np.ndarray]] | None


def track_label(track: Track | None, mark: FaceMark) -> tuple[str, str]:
    """``#id gender, age`` from the track's averaged probabilities; the frame's own label
    for a face without a track."""
    if track is None or mark.track is None:
        return mark.label
    labels = track.labels()
    if not labels:  # only frames without probabilities so far (resume, save_probs=false)
        return f"#{mark.track} {mark.label[0]}".strip(), mark.label[1]
    text = ", ".join(labels[t] for t in ("gender", "age") if t in labels)
    return f"#{mark.track} {text}".strip(), labels.get("gender", "")


class VideoTracks:
    """The tracking state of one video or stream: tracker, the run's track book, and the
    marks of its analysed frames (kept only for a later annotated copy)."""

    def __init__(
        self,
        video: str,
        book: TrackBook,
        fps: float,
        stride: int,
        lost_seconds: float,
        keep_marks: bool = True,
    ) -> None:
        self.video = video
        self.book = book
        self.tracker = FaceTracker(fps, stride, lost_seconds)
        self.keep_marks = keep_marks
        self.marks: list[FrameMarks] = []
        self.track_ids: set[int] = set()

    def observe(self, index: int, result: ImageResult) -> list[int | None]:
        """Track ``result``'s faces (frame ``index``); returns the track id per face.

        A frame that could not be decoded is skipped (the tracker neither sees nor ages on
        it); a frame without faces ages lost tracks."""
        if result.error is not None:
            return []
        n = len(result.faces)
        return self._update(
            index,
            [tuple(f.box) for f in result.faces],
            [f.score for f in result.faces],
            [label_of(result, i) for i in range(n)],
            [{task: p[i] for task, p in result.probs.items()} for i in range(n)],
            result.labels,
        )

    def replay(self, frame: DoneFrame) -> list[int | None]:
        """Feed a frame an earlier run wrote (``resume=true``): the tracker sees the same
        boxes and scores again, so the frames after it get the ids an uninterrupted run
        gives; its probabilities count toward the track only when the CSV has them
        (``save_probs=true``)."""
        return self._update(frame.index, frame.boxes, frame.scores, frame.labels, frame.probs)

    def _update(
        self,
        index: int,
        boxes: list[tuple[float, ...]],
        scores: list[float],
        labels: list[tuple[str, str]],
        probs: list[dict[str, np.ndarray]] | None,
        names: dict[str, tuple[str, ...]] | None = None,
    ) -> list[int | None]:
        ids = self.tracker.update(
            np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, np.float32)
        )
        faces = []
        for i, (box, track) in enumerate(zip(boxes, ids, strict=True)):
            if track is not None:
                self.track_ids.add(track)
                frame_probs = {} if probs is None else probs[i]
                self.book.add(self.video, index, track, frame_probs, names)
            faces.append(FaceMark(tuple(box), track, labels[i]))  # type: ignore[arg-type]
        if self.keep_marks:
            self.marks.append(FrameMarks(index, faces))
        return ids

    def label(self, mark: FaceMark) -> tuple[str, str]:
        track = None if mark.track is None else self.book.get(self.video, mark.track)
        return track_label(track, mark)


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
    label: Callable[[FaceMark], tuple[str, str]],
    limit: int | None = None,
) -> Path:
    """Write ``target`` (.mp4): every frame of ``source`` (up to ``limit`` frames) at its
    frame rate and size, with the analysed frames' faces drawn and carried (see
    :func:`marks_at`). Written beside under a hidden temporary name and renamed, so a killed
    run never leaves a half-written copy under the real name. Raises OSError on failure."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise OSError(f"cannot reopen {source} to write {target}")
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}{TMP_INFIX}", suffix=".mp4", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
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
                draw_faces(frame, [f.box for f in faces], [label(f) for f in faces])
            writer.write(frame)
        if writer is None:
            raise OSError(f"no frame of {source} could be read again for {target}")
        writer.release()
        writer = None
        _umask_mode(tmp)
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

    Call :meth:`observe` on every result in input order, then :meth:`close`. ``submit``
    runs an annotated-video job (the run's annotation thread) and returns its Future; None
    = no annotated videos. ``resume``: tracks.csv rows of videos this run does not touch
    are kept; a video continued mid-way first replays the frames the CSV holds through the
    tracker (:meth:`VideoTracks.replay`: same ids as an uninterrupted run, boxes in its
    annotated copy). Its earlier frames' probabilities are in the CSV only with
    ``save_probs=true``; without, its tracks.csv averages cover this run's frames (said on
    stderr) while ``first_frame``/``last_frame``/``frames`` count them all.
    """

    def __init__(
        self,
        output: Path,
        csv_path: Path,
        relpath: Callable[[Path], str],
        stride: int,
        lost_seconds: float = 1.0,
        limit: Callable[[cv2.VideoCapture], int | None] | None = None,
        submit: Callable[..., Future[Path | None]] | None = None,
        resume: bool = False,
    ) -> None:
        self.output = output
        self.tracks_csv = tracks_path(csv_path)
        self.resume = resume
        self.relpath = relpath
        self.stride = stride
        self.lost_seconds = lost_seconds
        self.limit = limit
        self.submit = submit
        self.book = TrackBook()
        self.kept = read_tracks_csv(self.tracks_csv) if resume else []
        self.done_frames = _done_frames(csv_path) if resume else {}
        self.futures: list[Future[Path | None]] = []
        self.current: VideoTracks | None = None
        self.current_file: Path | None = None
        self.videos = 0
        self.annotated: list[Path] = []

    def observe(self, result: ImageResult) -> list[int | None] | None:
        """Track ids of a video frame's faces (rows of the ``track`` column); None for
        anything that is not a video frame (images, a video's own error row)."""
        index = frame_of(result.item)
        if index is None:
            return None
        file = result.item.file
        assert file is not None
        if file != self.current_file:
            self._finish_video()
            self.current_file = file
            capture = cv2.VideoCapture(str(file))
            fps = video_fps(capture)
            capture.release()
            self.current = VideoTracks(
                str(file), self.book, fps, self.stride, self.lost_seconds,
                keep_marks=self.submit is not None,
            )  # fmt: skip
            earlier = [f for f in self.done_frames.pop(str(file), []) if f.index < index]
            for frame in earlier:
                self.current.replay(frame)
            if earlier and earlier[0].probs is None:
                print(
                    f"  resume: {file} continues at frame {index}; tracks.csv averages "
                    "cover the frames from there (save_probs=false: the CSV has no "
                    "probabilities of the earlier frames)",
                    file=sys.stderr,
                )
        assert self.current is not None
        return self.current.observe(index, result)

    def _finish_video(self) -> None:
        current, file = self.current, self.current_file
        self.current, self.current_file = None, None
        if current is None or file is None:
            return
        self.videos += 1
        self._write_tracks()
        if self.submit is not None and current.marks:
            target = annotated_video_path(self.output / "annotated", self.relpath(file))
            self.annotated.append(target)
            self.futures.append(self.submit(self._render, file, target, current))

    def _render(self, file: Path, target: Path, tracks: VideoTracks) -> Path:
        limit = None
        if self.limit is not None:
            capture = cv2.VideoCapture(str(file))
            limit = self.limit(capture)
            capture.release()
        return render_annotated_video(file, target, tracks.marks, tracks.label, limit)

    def _write_tracks(self) -> None:
        mine = {video for video, _ in self.book.tracks}
        rows = [r for r in self.kept if r["video"] not in mine] + self.book.rows()
        if rows or self.tracks_csv.exists():
            write_tracks_csv(self.tracks_csv, rows)

    def close(self) -> list[Future[Path | None]]:
        """Finish the last video; returns the annotated-video jobs to wait for."""
        self._finish_video()
        if self.videos == 0 and not self.resume:  # an earlier run's file would not be true
            self.tracks_csv.unlink(missing_ok=True)
        return self.futures

    @property
    def tracks(self) -> int:
        return len(self.book.tracks)


def _umask_mode(path: Path) -> None:
    """Give a mkstemp file (0600) the permissions an ordinary ``open`` would (as
    :func:`agegender.fileio.atomic_write` does)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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


def _done_rows(path: Path) -> Iterator[tuple[dict[str, Any], bool]]:
    """(row as CSV columns, file has probabilities) of an existing predictions.csv or
    predictions.jsonl (whose objects are mapped onto the CSV's columns)."""
    import csv
    import json

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        if path.suffix != ".jsonl":
            reader = csv.DictReader(fh)
            has_probs = bool({"p_age_0", "p_gender_0"} & set(reader.fieldnames or ()))
            for row in reader:
                yield row, has_probs
            return
        for line in fh:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            row = {"path": obj.get("path"), "status": obj.get("status")}
            box = obj.get("box") or []
            row.update(zip(("x1", "y1", "x2", "y2"), box, strict=False))
            row.update(det_score=obj.get("score"), age=obj.get("age"), gender=obj.get("gender"))
            for task in ("age", "gender"):
                for k, value in enumerate((obj.get(f"{task}_probs") or {}).values()):
                    row[f"p_{task}_{k}"] = value
            yield row, True


def _done_frames(csv_path: Path) -> dict[str, list[DoneFrame]]:
    """{video file: its analysed frames in frame order} from an existing predictions CSV
    or JSON Lines file (``resume=true``); error rows are left out (the tracker never saw
    those frames)."""
    from agegender.inference.csv_writer import LABELS

    if not csv_path.is_file():
        return {}
    frames: dict[tuple[str, int], DoneFrame] = {}
    for row, has_probs in _done_rows(csv_path):
        head, mark, index = (row.get("path") or "").rpartition(FRAME_MARK)
        status = row.get("status") or ""
        if not mark or not index.isdigit() or status.startswith("error"):
            continue
        frame = frames.setdefault(
            (head, int(index)), DoneFrame(int(index), [], [], [], [] if has_probs else None)
        )
        if status != "ok":
            continue
        try:
            box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            score = float(row["det_score"])
        except (KeyError, TypeError, ValueError):
            continue
        frame.boxes.append(box)
        frame.scores.append(score)
        gender, age = row.get("gender") or "", row.get("age") or ""
        frame.labels.append((", ".join(p for p in (gender, age) if p), gender))
        if frame.probs is not None:
            probs = {}
            for task, names in LABELS.items():
                values = [row.get(f"p_{task}_{k}") or "" for k in range(len(names))]
                if all(v != "" for v in values):
                    probs[task] = np.array([float(v) for v in values])
            frame.probs.append(probs)
    out: dict[str, list[DoneFrame]] = {}
    for (video, _), frame in sorted(frames.items(), key=lambda kv: kv[0]):
        out.setdefault(video, []).append(frame)
    return out


__all__ = [
    "DEFAULT_FPS",
    "FaceMark",
    "FrameMarks",
    "VideoOutputs",
    "VideoTracks",
    "annotated_video_path",
    "frame_of",
    "marks_at",
    "render_annotated_video",
    "track_label",
    "tracks_path",
    "video_line",
    "video_fps",
]
