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
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agegender.faces.appearance import look_square, similarity
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


#: ``video.min_similarity``'s default (conf/predict.yaml's): one person's looks correlate at
#: 0.82 or more from frame to frame on the benchmark's clips, different people's at 0.42 at
#: most (:mod:`agegender.faces.appearance`).
MIN_SIMILARITY = 0.65
#: A face whose look's square is covered this much (a share of its area) by the person of
#: another face of the same frame is not judged by its look: part of it shows the other one.
COVERED = 0.05
#: The square around a face that its person fills (head, hair, shoulders), in units of the
#: face box's longer side: what may cover another face's look.
PERSON = 4.0
#: How a track's look follows its faces: look = (1 - RATE) look + RATE face (then unit length).
LOOK_RATE = 0.3
#: ``lost_rule``: ``seconds`` (video.lost_seconds of the video's own time) or ``frames`` (the
#: tracker before it, exactly: ByteTrack's ids, a lost buffer of round(lost_seconds x fps /
#: stride) analysed frames, at least 1, and no appearance check; kept so that
#: benchmarks/bench_tracking.py measures against it).
LOST_RULES: tuple[str, ...] = ("seconds", "frames")


def lost_frames(fps: float, stride: int, lost_seconds: float) -> int:
    """The ``frames`` rule's buffer: analysed frames a missing face keeps its id."""
    rate = max(fps, 1e-3) / max(stride, 1)  # analysed frames per second
    return max(1, round(lost_seconds * rate))


def frame_time(item: object, fps: float) -> float:
    """A video frame's time in seconds: a live frame's wall-clock stamp (cameras and
    streams, whose analysed frames come as fast as the model goes), a file's frame index /
    fps (its own time, whatever the stride). The tracker and the audience counter both use
    it, so a face is lost after the same ``video.lost_seconds`` in both."""
    stamp = getattr(item, "stamp", None)
    if stamp is not None:
        return float(stamp)
    return float(getattr(item, "frame", None) or 0) / max(fps, 1e-3)


def is_lost(missing_since: float, now: float, lost_seconds: float) -> bool:
    """The ``seconds`` rule: a face missing from the analysed frames since ``missing_since``
    (the first analysed frame without it) is lost at ``now`` when that is longer ago than
    ``lost_seconds``. Shared by :class:`FaceTracker` and the audience counter."""
    return now - missing_since > lost_seconds + 1e-6


def covered(boxes: np.ndarray) -> np.ndarray:
    """Per face (n x 4 boxes, x1 y1 x2 y2): whether another face's person (head, hair and
    shoulders: a square of :data:`PERSON` times its box's longer side) reaches into the
    part of the picture its look is read from (:func:`~agegender.faces.appearance.
    look_square`) by more than :data:`COVERED` of it. Two people close together or crossing
    each other: neither look shows one person only."""
    n = len(boxes)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    looks = np.array([look_square(tuple(box)) for box in boxes.tolist()], dtype=np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    half = PERSON * np.max(boxes[:, 2:] - boxes[:, :2], axis=1) / 2.0
    people = np.concatenate([centres - half[:, None], centres + half[:, None]], axis=1)
    x1 = np.maximum(looks[:, None, 0], people[None, :, 0])
    y1 = np.maximum(looks[:, None, 1], people[None, :, 1])
    x2 = np.minimum(looks[:, None, 2], people[None, :, 2])
    y2 = np.minimum(looks[:, None, 3], people[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    np.fill_diagonal(inter, 0)
    area = (looks[:, 2] - looks[:, 0]) * (looks[:, 3] - looks[:, 1])
    return inter.max(axis=1) > COVERED * area


@dataclass
class _Person:
    """One id of :class:`FaceTracker`: how it looks, when it was last seen."""

    id: int
    look: np.ndarray | None
    last_look: np.ndarray | None
    missing_since: float | None = None

    def similarity(self, look: np.ndarray) -> float:
        """How much ``look`` looks like this person: the better of the running look and
        the last face's (a slow change, a turn of the head, follows the last face)."""
        values = [
            similarity(look, mine) for mine in (self.look, self.last_look) if mine is not None
        ]
        return max(values, default=1.0)

    def seen(self, look: np.ndarray | None) -> None:
        self.missing_since = None
        if look is None or not look.any():
            return
        self.last_look = look
        if self.look is None:
            self.look = look.copy()
            return
        mixed = (1.0 - LOOK_RATE) * self.look + LOOK_RATE * look
        norm = float(np.linalg.norm(mixed))
        self.look = mixed / norm if norm > 1e-6 else look.copy()


class FaceTracker:
    """ByteTrack over the analysed frames of ONE video (a new tracker per video), with an
    appearance check on top.

    ByteTrack matches faces to tracks by box overlap alone, so a different person who takes
    the place of another (a hard cut, someone stepping where someone just stood) would carry
    on the first one's id. Each face's look (:func:`~agegender.faces.appearance.appearance`)
    is therefore compared with its track's: below ``min_similarity`` it is not that person,
    and it takes the id of another person of the video who is missing (within
    ``lost_seconds``) and looks like it (two faces that crossed and swapped ByteTrack's
    tracks get their own ids back), else a new id. A face ByteTrack starts a new track for
    is likewise given the id of a missing person it looks like. Faces whose boxes overlap
    (:func:`covered`) are not judged by their look. ``min_similarity=None``: ByteTrack
    alone.

    ``lost_seconds``: a face missing from the analysed frames for longer than this (from the
    first analysed frame without it to the one it is back on, in the frames' times:
    :func:`frame_time`) loses its id, whatever the stride or how many frames a stream
    dropped. ``lost_rule="frames"``: the tracker before that rule and the appearance check
    (ByteTrack's own ids, a buffer of :func:`lost_frames` analysed frames).

    A face found on the first analysed frame gets its id at once; a face appearing later gets
    one when it is matched on the next analysed frame (ByteTrack's confirmation, which keeps
    one-frame false detections out of tracks.csv). :meth:`update` then also says which face
    of the previous frame that new track began with (:attr:`claims`), so the caller can give
    that first row its id too: the rows of a frame with an unconfirmed face wait one analysed
    frame. Ids are 1, 2, ... in the order they are given. Deterministic: the same faces give
    the same ids. One tracker belongs to one thread (the job loop's); the looks are computed
    in the loader threads.
    """

    def __init__(
        self,
        fps: float,
        stride: int = 1,
        lost_seconds: float = 1.0,
        min_similarity: float | None = MIN_SIMILARITY,
        lost_rule: str = "seconds",
    ) -> None:
        import supervision as sv

        if lost_rule not in LOST_RULES:
            raise ValueError(f"lost_rule must be one of {LOST_RULES}, got {lost_rule!r}")
        if lost_rule == "frames" and min_similarity is not None:
            raise ValueError("lost_rule='frames' is the tracker without an appearance check")
        self.fps = max(float(fps), 1e-3)
        self.stride = max(int(stride), 1)
        self.lost_seconds = float(lost_seconds)
        self.min_similarity = None if min_similarity is None else float(min_similarity)
        self.lost_rule = lost_rule
        self.frames_buffer = lost_frames(fps, stride, lost_seconds)
        rate = self.fps / self.stride  # analysed frames per second
        buffer = (
            self.frames_buffer
            if lost_rule == "frames"
            # ByteTrack keeps a lost track at least as many analysed frames as fit in
            # lost_seconds (a stream that drops frames analyses fewer); the time rule decides
            else max(1, math.ceil(self.lost_seconds * rate) + 1)
        )
        with warnings.catch_warnings():  # deprecated in 0.28 (see the module docstring)
            warnings.simplefilter("ignore", FutureWarning)
            self._tracker = sv.ByteTrack(
                # ByteTrack scales the buffer by frame_rate / 30: give it analysed frames.
                lost_track_buffer=buffer,
                frame_rate=30,
                minimum_consecutive_frames=1,
            )
        self._sv = sv
        self._frames = 0
        #: ByteTrack's ids seen so far (a new one is a newly confirmed track).
        self._seen: set[int] = set()
        #: ByteTrack's id -> the id it stands for now (a face can change ByteTrack tracks).
        self._ids: dict[int, int] = {}
        #: The ids that may still be given to a face again.
        self._people: dict[int, _Person] = {}
        self._next = 1
        #: Boxes of the previous frame's faces that got no id: {face index: box}.
        self._pending: dict[int, np.ndarray] = {}
        #: The ids of the previous frame's faces.
        self._previous: set[int] = set()
        #: After :meth:`update`: {previous frame's face index: id of the track it began}.
        self.claims: dict[int, int] = {}

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        time: float | None = None,
        looks: Sequence[np.ndarray | None] | None = None,
    ) -> list[int | None]:
        """One analysed frame's faces (n x 4 boxes x1 y1 x2 y2, n scores; ``looks``: their
        :func:`~agegender.faces.appearance.appearance`, None = not judged by look; ``time``:
        :func:`frame_time`, None = the analysed frames' count x stride / fps) -> id per face
        (None: not (yet) in a confirmed track). Call it for frames without faces too (empty
        arrays), so lost tracks age. Sets :attr:`claims`."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        now = self._frames * self.stride / self.fps if time is None else float(time)
        self._frames += 1
        faces = list(looks) if looks is not None else [None] * len(boxes)
        if len(faces) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(faces)} looks")
        detections = self._sv.Detections(
            xyxy=boxes,
            confidence=scores,
            class_id=np.zeros(len(boxes), dtype=int),
            data={"face": np.arange(len(boxes))},
        )
        tracked = self._tracker.update_with_detections(detections)
        byte_ids: dict[int, int] = {
            int(face): int(track)
            for face, track in zip(tracked.data.get("face", []), tracked.tracker_id, strict=True)
        }
        if self.lost_rule == "frames":  # ByteTrack's own ids
            ids: list[int | None] = [byte_ids.get(j) for j in range(len(boxes))]
            new = [(j, ids[j]) for j, byte_id in byte_ids.items() if byte_id not in self._seen]
            return self._finish(boxes, ids, new, byte_ids)  # type: ignore[arg-type]
        self._forget_lost(now)
        judged = ~covered(boxes)
        ids = [None] * len(boxes)
        taken: set[int] = set()
        unsure: list[int] = []  # faces to give a missing person's id, else a new one
        for j, byte_id in sorted(byte_ids.items()):
            person = self._people.get(self._ids.get(byte_id, 0))
            if (
                person is not None
                and person.id not in taken
                and self._looks_like(person, faces[j], bool(judged[j]))
            ):
                ids[j] = person.id
                taken.add(person.id)
            else:
                unsure.append(j)
        for j, person_id in self._recognise(unsure, faces, judged, taken).items():
            ids[j] = person_id
            taken.add(person_id)
        for j in unsure:
            if ids[j] is None:
                ids[j] = self._new_person()
                taken.add(ids[j])
        for j, byte_id in byte_ids.items():
            person_id = ids[j]
            assert person_id is not None
            for other in [b for b, p in self._ids.items() if p == person_id and b != byte_id]:
                del self._ids[other]  # one ByteTrack track per id
            self._ids[byte_id] = person_id
            self._people[person_id].seen(faces[j] if judged[j] else None)
        for person in self._people.values():
            if person.id not in taken and person.missing_since is None:
                person.missing_since = now  # the first analysed frame without them
        new = [(j, ids[j]) for j, byte_id in byte_ids.items() if byte_id not in self._seen]
        return self._finish(boxes, ids, new, byte_ids)  # type: ignore[arg-type]

    def _finish(
        self,
        boxes: np.ndarray,
        ids: list[int | None],
        new: list[tuple[int, int]],
        byte_ids: dict[int, int],
    ) -> list[int | None]:
        """Claims of the newly confirmed tracks, the faces left pending, ByteTrack's ids seen.
        A new track that took the id of someone already in the previous frame claims none of
        its faces (one id per face of a frame)."""
        claims = self._claim(boxes, new)
        self.claims = {i: track for i, track in claims.items() if track not in self._previous}
        self._pending = {i: boxes[i] for i, track in enumerate(ids) if track is None}
        self._previous = {track for track in ids if track is not None}
        self._seen.update(byte_ids.values())
        return ids

    def _looks_like(self, person: _Person, look: np.ndarray | None, judged: bool) -> bool:
        if self.min_similarity is None or look is None or not judged or not look.any():
            return True
        return person.similarity(look) >= self.min_similarity

    def _recognise(
        self,
        faces: list[int],
        looks: Sequence[np.ndarray | None],
        judged: np.ndarray,
        taken: set[int],
    ) -> dict[int, int]:
        """{face: id} for faces that look like a missing person (or one whose ByteTrack
        track went to someone else this frame): the pairs of best total similarity
        (Hungarian), each at least ``min_similarity``."""
        if self.min_similarity is None:
            return {}
        rows = [j for j in faces if looks[j] is not None and judged[j] and looks[j].any()]
        people = [p for p in self._people.values() if p.id not in taken and p.look is not None]
        if not rows or not people:
            return {}
        from scipy.optimize import linear_sum_assignment  # supervision's own dependency

        sims = np.array([[p.similarity(looks[j]) for p in people] for j in rows])
        out: dict[int, int] = {}
        for r, c in zip(*linear_sum_assignment(-sims), strict=True):
            if sims[r, c] >= self.min_similarity:
                out[rows[r]] = people[c].id
        return out

    def _forget_lost(self, now: float) -> None:
        """Drop the people missing longer than the loss rule allows: their ids end."""
        for person in list(self._people.values()):
            if person.missing_since is None:
                continue
            if is_lost(person.missing_since, now, self.lost_seconds):
                del self._people[person.id]
                for byte_id in [b for b, p in self._ids.items() if p == person.id]:
                    del self._ids[byte_id]

    def _new_person(self) -> int:
        person = _Person(self._next, None, None)
        self._people[person.id] = person
        self._next += 1
        return person.id

    def _claim(self, boxes: np.ndarray, new: list[tuple[int, int]]) -> dict[int, int]:
        """Which pending face of the previous frame each newly confirmed ByteTrack track
        began with. ByteTrack starts an unconfirmed track from an unmatched detection and
        confirms it when the next frame matches it by IoU (its Kalman prediction from one
        observation is that same box), so the face it began with is the pending face
        overlapping the new face most."""
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
