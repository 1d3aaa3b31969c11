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
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agegender.fileio import from_spreadsheet_safe, write_csv_rows
from agegender.inference.csv_writer import prob_columns
from agegender.inference.results import FaceResult, add_probs, averaged_labels
from agegender.labels import ADIENCE8, LabelSet

TRACKS_NAME = "tracks.csv"


def track_columns(labels: LabelSet | None = None) -> tuple[str, ...]:
    """Columns of tracks.csv (docs/contracts.md) for a label set; the probabilities are the
    track's averages, one column per class of the set."""
    return (
        "video",
        "track",
        "first_frame",
        "last_frame",
        "frames",
        "age",
        "age_prob",
        "gender",
        "gender_prob",
        *prob_columns(labels),
    )


#: tracks.csv's columns for the original weights' adience8 buckets.
TRACK_COLUMNS: tuple[str, ...] = track_columns(ADIENCE8)


class FaceTracker:
    """ByteTrack over the analysed frames of ONE video (a new tracker per video).

    ``fps / stride`` is how many frames per second the tracker sees; a face missing from the
    analysed frames for up to ``lost_seconds`` keeps its track id when it comes back.
    A face found on the first analysed frame gets its id at once; a face appearing later gets
    one when it is matched on the next analysed frame (ByteTrack's confirmation, which keeps
    one-frame false detections out of tracks.csv). :meth:`update` then also says which face
    of the previous frame that new track began with (:attr:`claims`), so the caller can give
    that first row its id too: the rows of a frame with an unconfirmed face wait one analysed
    frame. Ids are 1, 2, ... in the order tracks are confirmed.
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
        self._seen: set[int] = set()
        #: Boxes of the previous frame's faces that got no id: {face index: box}.
        self._pending: dict[int, np.ndarray] = {}
        #: After :meth:`update`: {previous frame's face index: id of the track it began}.
        self.claims: dict[int, int] = {}

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> list[int | None]:
        """One analysed frame's faces (n x 4 boxes x1 y1 x2 y2, n scores) -> track id per
        face (None: not (yet) in a confirmed track). Call it for frames without faces too
        (empty arrays), so lost tracks age. Sets :attr:`claims`."""
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
        self.claims = self._claim(boxes, ids)
        self._pending = {i: boxes[i] for i, track in enumerate(ids) if track is None}
        self._seen.update(track for track in ids if track is not None)
        return ids

    def _claim(self, boxes: np.ndarray, ids: list[int | None]) -> dict[int, int]:
        """Which pending face of the previous frame each NEW id began with. ByteTrack starts
        an unconfirmed track from an unmatched detection and confirms it when the next frame
        matches it by IoU (its Kalman prediction from one observation is that same box), so
        the face it began with is the pending face overlapping the new face most."""
        new = [(j, track) for j, track in enumerate(ids) if track is not None]
        new = [(j, track) for j, track in new if track not in self._seen]
        if not new or not self._pending:
            return {}
        pending = list(self._pending)
        ious = self._sv.box_iou_batch(  # ByteTrack's own IoU
            np.array([boxes[j] for j, _ in new]), np.array([self._pending[i] for i in pending])
        )
        pairs = sorted(
            (
                (-float(ious[a, b]), i, j, track)
                for a, (j, track) in enumerate(new)
                for b, i in enumerate(pending)
            ),
            key=lambda pair: pair[:3],
        )
        claims: dict[int, int] = {}
        taken: set[int] = set()
        for negative_iou, i, j, track in pairs:
            if negative_iou < 0 and i not in claims and j not in taken:
                claims[i] = track
                taken.add(j)
        return claims


@dataclass
class Track:
    """One face over the frames it was seen in: probability sums for the averaged answer."""

    video: str
    track: int
    first_frame: int
    last_frame: int
    #: The label set of the probabilities (the classifier's).
    labels: LabelSet = ADIENCE8
    frames: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, frame: int, face: FaceResult) -> None:
        self.first_frame = min(self.first_frame, frame)
        self.last_frame = max(self.last_frame, frame)
        self.frames += 1
        add_probs(self.sums, face)

    def mean(self) -> dict[str, np.ndarray]:
        return {task: s / max(self.frames, 1) for task, s in self.sums.items()}

    def labels_now(self) -> dict[str, str]:
        """{task: label of the averaged probabilities} for the tasks the network has."""
        return averaged_labels(self.sums, self.labels)

    def row(self) -> dict[str, object]:
        row: dict[str, object] = dict.fromkeys(track_columns(self.labels), "")
        row.update(
            video=self.video,
            track=self.track,
            first_frame=self.first_frame,
            last_frame=self.last_frame,
            frames=self.frames,
        )
        names = self.labels.class_names
        for task, p in self.mean().items():
            best = int(np.argmax(p))
            row[task] = names[task][best]
            row[f"{task}_prob"] = round(float(p[best]), 4)
            for k, value in enumerate(p):
                row[f"p_{task}_{k}"] = round(float(value), 6)
        return row


class TrackBook:
    """Every track of a run, per video, in the order they started; written as tracks.csv."""

    def __init__(self, labels: LabelSet = ADIENCE8) -> None:
        self.labels = labels
        self.tracks: dict[tuple[str, int], Track] = {}

    def add(self, video: str, frame: int, track: int, face: FaceResult) -> Track:
        key = (video, track)
        entry = self.tracks.get(key)
        if entry is None:
            entry = self.tracks[key] = Track(video, track, frame, frame, self.labels)
        entry.add(frame, face)
        return entry

    def get(self, video: str, track: int) -> Track | None:
        return self.tracks.get((video, track))

    def rows(self) -> list[dict[str, object]]:
        return [t.row() for t in self.tracks.values()]


def write_tracks_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, object]],
    labels: LabelSet | None = None,
) -> Path:
    """Write tracks.csv atomically (rewritten whole after each video: it is small)."""
    return write_csv_rows(path, rows, track_columns(labels))


def read_tracks_csv(
    path: str | os.PathLike[str], labels: LabelSet | None = None
) -> list[dict[str, str]]:
    """Rows of an existing tracks.csv (for ``resume=true``); [] when there is none or its
    columns are not :func:`track_columns` of ``labels``."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != track_columns(labels):
            return []
        return [{k: from_spreadsheet_safe(v or "") for k, v in row.items()} for row in reader]


def label_changes(labels: Sequence[str]) -> int:
    """How often consecutive labels differ (the flicker a viewer sees)."""
    return sum(1 for a, b in zip(labels[:-1], labels[1:], strict=True) if a != b)
