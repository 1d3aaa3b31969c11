"""Face tracks across the analysed frames of a video or stream, and each track's answer.

A face in a video is one person over many frames, but the network sees each frame alone, so
its per-frame label flickers (a slow zoom over one portrait gave 25-32, 4-6 and 0-2 on three
frames). Tracking joins the detections of one face across frames (supervision's ByteTrack:
Kalman-predicted boxes matched by IoU, low-score detections kept for a second pass); the
track's answer is the argmax of its frames' AVERAGED probabilities, which is what
``tracks.csv`` holds and what annotated videos show.

Why supervision 0.30 (pinned ``<0.31``): its ``ByteTrack`` is deprecated since 0.28 and gone
in 0.31 in favour of Roboflow's ``trackers`` package, but ``trackers`` requires the GUI
``opencv-python`` wheel, which installs a second ``cv2`` over our headless one and needs
libGL. 0.30 has no OpenCV requirement at all. The import (~0.7 s: scipy, matplotlib) happens
only when a run has a video or stream.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agegender.fileio import atomic_write
from agegender.inference.csv_writer import LABELS, PROB_COLUMNS

TRACKS_NAME = "tracks.csv"
#: Columns of tracks.csv (docs/contracts.md); the probabilities are the track's averages.
TRACK_COLUMNS: tuple[str, ...] = (
    "video",
    "track",
    "first_frame",
    "last_frame",
    "frames",
    "age",
    "age_prob",
    "gender",
    "gender_prob",
    *PROB_COLUMNS,
)


class FaceTracker:
    """ByteTrack over the analysed frames of ONE video (a new tracker per video).

    ``fps / stride`` is how many frames per second the tracker sees; a face missing from the
    analysed frames for up to ``lost_seconds`` keeps its track id when it comes back.
    A face found on the first analysed frame gets its id at once; a face appearing later gets
    one when it is matched on a second consecutive analysed frame (ByteTrack's confirmation,
    which keeps one-frame false detections out of tracks.csv); until then its ``track`` is
    empty. Ids are 1, 2, ... in the order tracks are confirmed.
    """

    def __init__(self, fps: float, stride: int = 1, lost_seconds: float = 1.0) -> None:
        import supervision as sv

        rate = max(fps, 1e-3) / max(stride, 1)  # analysed frames per second
        with warnings.catch_warnings():  # deprecated in 0.28 (see the module docstring)
            warnings.simplefilter("ignore", FutureWarning)
            self._tracker = sv.ByteTrack(
                # ByteTrack scales the buffer by frame_rate / 30: give it analysed frames.
                lost_track_buffer=max(1, round(lost_seconds * rate)),
                frame_rate=30,
                minimum_consecutive_frames=1,
            )
        self._sv = sv

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> list[int | None]:
        """One analysed frame's faces (n x 4 boxes x1 y1 x2 y2, n scores) -> track id per
        face (None: not (yet) in a confirmed track). Call it for frames without faces too
        (empty arrays), so lost tracks age."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        detections = self._sv.Detections(
            xyxy=boxes,
            confidence=scores,
            class_id=np.zeros(len(boxes), dtype=int),
            data={"face": np.arange(len(boxes))},
        )
        tracked = self._tracker.update_with_detections(detections)
        ids: list[int | None] = [None] * len(boxes)
        for face, track_id in zip(tracked.data.get("face", []), tracked.tracker_id, strict=True):
            ids[int(face)] = int(track_id)
        return ids


@dataclass
class Track:
    """One face over the frames it was seen in: probability sums for the averaged answer."""

    video: str
    track: int
    first_frame: int
    last_frame: int
    frames: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    #: Class names per task, in probability order (the network's: ``ImageResult.labels``).
    names: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(LABELS))
    #: Frames whose probabilities are in ``sums`` (a resumed run without save_probs counts
    #: earlier frames in ``frames`` without knowing their probabilities).
    _with_probs: int = 0

    def add(self, frame: int, probs: Mapping[str, np.ndarray]) -> None:
        self.first_frame = min(self.first_frame, frame)
        self.last_frame = max(self.last_frame, frame)
        self.frames += 1
        self._with_probs += bool(probs)
        for task, p in probs.items():
            p = np.asarray(p, dtype=np.float64)
            self.sums[task] = self.sums[task] + p if task in self.sums else p.copy()

    def mean(self) -> dict[str, np.ndarray]:
        return {task: s / max(self._with_probs, 1) for task, s in self.sums.items()}

    def labels(self) -> dict[str, str]:
        """{task: label of the averaged probabilities} for the tasks the network has."""
        return {t: self.names[t][int(np.argmax(p))] for t, p in self.mean().items()}

    def row(self) -> dict[str, object]:
        row: dict[str, object] = dict.fromkeys(TRACK_COLUMNS, "")
        row.update(
            video=self.video,
            track=self.track,
            first_frame=self.first_frame,
            last_frame=self.last_frame,
            frames=self.frames,
        )
        for task, p in self.mean().items():
            best = int(np.argmax(p))
            row[task] = self.names[task][best]
            row[f"{task}_prob"] = round(float(p[best]), 4)
            for k, value in enumerate(p):
                row[f"p_{task}_{k}"] = round(float(value), 6)
        return row


class TrackBook:
    """Every track of a run, per video, in the order they started; written as tracks.csv."""

    def __init__(self) -> None:
        self.tracks: dict[tuple[str, int], Track] = {}

    def add(
        self,
        video: str,
        frame: int,
        track: int,
        probs: Mapping[str, np.ndarray],
        names: Mapping[str, Sequence[str]] | None = None,
    ) -> Track:
        key = (video, track)
        entry = self.tracks.get(key)
        if entry is None:
            entry = self.tracks[key] = Track(video, track, frame, frame)
        if names:
            entry.names = {**entry.names, **names}
        entry.add(frame, probs)
        return entry

    def get(self, video: str, track: int) -> Track | None:
        return self.tracks.get((video, track))

    def rows(self) -> list[dict[str, object]]:
        return [t.row() for t in self.tracks.values()]


def write_tracks_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, object]],
) -> Path:
    """Write tracks.csv atomically (rewritten whole after each video: it is small)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRACK_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data), fsync=False)


def read_tracks_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of an existing tracks.csv (for ``resume=true``); [] when there is none or its
    columns are not :data:`TRACK_COLUMNS`."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != TRACK_COLUMNS:
            return []
        return list(reader)


def label_changes(labels: Sequence[str]) -> int:
    """How often consecutive labels differ (the flicker a viewer sees)."""
    return sum(1 for a, b in zip(labels[:-1], labels[1:], strict=True) if a != b)
