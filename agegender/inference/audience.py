"""Audience counts: unique people per time window of a video, camera or stream, by age class
and gender (``audience.window=60``: audience.csv, audience.json, audience.png).

Why here, fed by the job loop: the loop already tracks every face of a video or stream
(:mod:`agegender.inference.video`), so a person is a TRACK, and counting people is counting
tracks. :class:`AudienceCounter` receives each analysed frame's result once its faces' track
ids are final, in input order, and keeps only counters and the tracks still in view:

- **quality gates** (``audience.*``, conf/predict.yaml): a face smaller than ``min_face``
  pixels, scored below ``min_score`` or turned further than ``max_yaw`` (:func:`yaw_degrees`)
  does not enter its track's average; a track counts as a person only once ``min_frames``
  of its faces passed. What each gate removed (faces, tracks) is reported.
- **windows**: a video file's windows are ``[k W, (k+1) W)`` seconds of its own time (frame
  index / fps); a camera's or stream's are ``[k W, (k+1) W)`` of the wall clock (Unix time,
  so a 60 s window starts on the minute), written in ISO 8601 with the local offset. A
  person counts once in each window in which any of their tracked faces was seen, with the
  track's answer (argmax of the probabilities averaged over the faces that passed the gates)
  as known when the window's row is written: a window's row waits until every track seen in
  it has either passed ``min_frames`` or ended (missing from the analysed frames for longer
  than ``video.lost_seconds`` of the video's time, the tracker's own rule:
  :func:`~agegender.inference.tracking.is_lost`), so a person is never missed because they
  qualified a little after a window closed. ``totals`` count each person once, with the
  track's final answer.
- **dwell**: from a person's first to last analysed frame (within the window for a window's
  mean; over the whole track for the totals).

Two videos are two audiences (a person cannot be recognised across videos): the totals add
them up, and each row names its video.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from agegender.fileio import atomic_write, write_csv_rows
from agegender.inference.options import AudienceOptions, OptionError, PredictOptions
from agegender.inference.results import (
    FaceResult,
    ImageResult,
    add_probs,
    averaged_labels,
)
from agegender.inference.tracking import LOST_RULES, frame_time, is_lost, lost_frames
from agegender.labels import LabelSet

CSV_NAME = "audience.csv"
JSON_NAME = "audience.json"
PNG_NAME = "audience.png"
#: Face gates, in the order they are applied (a face is counted under the first that
#: removes it).
FACE_GATES: tuple[str, ...] = ("min_face", "min_score", "max_yaw")
#: Version of audience.json's layout (docs/contracts.md).
JSON_FORMAT = 1


def group_names(labels: LabelSet) -> tuple[str, ...]:
    """The group columns: ``<gender>_<age>`` for every gender x age class of the label set
    (``male_25-32`` ...); a set with one task only: its classes."""
    names = labels.class_names
    genders, ages = names.get("gender", ()), names.get("age", ())
    if genders and ages:
        return tuple(f"{g}_{a}" for g in genders for a in ages)
    return tuple(genders or ages)


def audience_columns(labels: LabelSet) -> tuple[str, ...]:
    """Columns of audience.csv (docs/contracts.md, "audience.csv")."""
    return (
        "video",
        "window_start",
        "window_end",
        "people",
        "new_people",
        *group_names(labels),
        "dwell_mean_s",
    )


def yaw_degrees(landmarks: Sequence[Sequence[float]] | None) -> float | None:
    """How far a face is turned left or right (degrees, >= 0), from the five landmarks
    (eyes, nose, mouth corners); None without landmarks.

    Model: the eyes lie at +-e/2 and the nose tip d_n in front of them; turned by yaw
    theta, the nose's offset from the eyes' midpoint along the eye line is d_n sin(theta)
    and the projected eye distance e cos(theta), so offset / (e / 2) = (2 d_n / e)
    tan(theta). With the nose tip about half the eye distance in front of the eyes
    (2 d_n / e ~ 1): yaw = atan(2 offset / e). Frontal faces give ~0-15 degrees (landmark
    noise); a profile, 60 and more. Measuring along the eye line makes it ignore roll."""
    if landmarks is None:
        return None
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(points) < 3 or not np.all(np.isfinite(points[:3])):
        return None
    left, right, nose = points[0], points[1], points[2]
    eye_line = right - left
    eyes = float(np.hypot(*eye_line))
    if eyes < 1e-6:
        return 90.0  # both eyes on one point: seen from the side
    offset = float(np.dot(nose - (left + right) / 2, eye_line / eyes))
    return abs(math.degrees(math.atan(2.0 * offset / eyes)))


def face_gate(face: FaceResult, options: AudienceOptions) -> str | None:
    """The first gate of :data:`FACE_GATES` that keeps ``face`` out of its track's average,
    or None when it passes (no landmarks: ``max_yaw`` is not applied)."""
    x1, y1, x2, y2 = face.box
    if min(x2 - x1, y2 - y1) < float(options.min_face):
        return "min_face"
    if face.score < float(options.min_score):
        return "min_score"
    yaw = yaw_degrees(face.landmarks)
    if yaw is not None and yaw > float(options.max_yaw):
        return "max_yaw"
    return None


def check_audience(options: PredictOptions, live: bool, has_video: bool = True) -> None:
    """Refuse audience and privacy settings that cannot work for this run (OptionError
    naming the setting): called by the sources' ``check``."""
    audience = options.audience
    if options.privacy and not audience.on:
        raise OptionError(
            "privacy=true writes only the audience aggregates: set audience.window (seconds)"
        )
    if options.blur_faces and options.privacy:
        raise OptionError(
            "blur_faces=true blurs faces in annotated copies, and privacy=true writes none: "
            "choose one"
        )
    if options.blur_faces and not options.annotate:
        raise OptionError("blur_faces=true applies to annotated copies: annotate=false writes none")
    if options.privacy and (options.save_probs or options.expected_age):
        raise OptionError(
            "privacy=true writes no per-face rows: save_probs and expected_age cannot apply"
        )
    if not audience.on:
        return
    if not has_video:
        raise OptionError(
            f"audience.window={audience.window} counts people in videos, cameras and streams; "
            f"input={options.input} has no video (photos get per-face rows only)"
        )
    if options.resume:
        raise OptionError(
            "audience.window cannot be resumed: the people of the frames an earlier run "
            "predicted are not in its files (their tracks are gone); run without resume=true"
            + (" (privacy=true keeps no rows to resume from)" if options.privacy else "")
        )
    if options.num_shards > 1:
        raise OptionError(
            "audience.window needs the whole input in one run (each shard would count a part "
            "into the same audience files): run with num_shards=1"
        )


@dataclass
class Person:
    """One track's audience state: the sums of its gated faces' probabilities, when and how
    often it was seen."""

    video: str
    track: int
    first_time: float
    last_time: float
    #: The video's analysed-frame counter when last seen.
    last_index: int
    frames: int = 0
    passed: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    ended: bool = False
    counted: bool = False  # already counted in an earlier window (``new_people``)
    #: Time of the first analysed frame without this person since last seen (None: in view).
    missing_since: float | None = None

    def see(self, time: float, index: int, face: FaceResult, gate: str | None) -> None:
        self.last_time, self.last_index = time, index
        self.missing_since = None
        self.frames += 1
        if gate is not None:
            self.removed[gate] = self.removed.get(gate, 0) + 1
            return
        self.passed += 1
        add_probs(self.sums, face)

    def group(self, labels: LabelSet) -> str | None:
        """The group column of the track's answer (averaged gated probabilities)."""
        if not self.sums:
            return None
        best = averaged_labels(self.sums, labels)
        if "gender" in best and "age" in best:
            return f"{best['gender']}_{best['age']}"
        return best.get("gender") or best.get("age")


@dataclass
class Window:
    """One time window of one video: the people seen in it (first, last time each)."""

    video: str
    index: int
    seen: dict[int, list[Any]] = field(default_factory=dict)  # track -> [Person, first, last]


class AudienceCounter:
    """Counts people per window (see the module docstring). Call :meth:`observe` with each
    analysed frame's result once its track ids are final, in input order, then
    :meth:`close`, which writes audience.csv, audience.json and audience.png into ``output``
    and returns the totals. ``fps(video)``: a video's frame rate; ``live``: times are the
    frames' wall-clock stamps; ``report``: where window lines (live sources) and the closing
    lines go; ``on_end(video, track)``: a track ended (privacy drops its other state);
    ``on_window(row)``: each audience.csv row as its window is written (files and live
    sources alike), so a caller can show the counts while the run goes on (the web demo)."""

    def __init__(
        self,
        options: AudienceOptions,
        labels: LabelSet,
        output: Path,
        fps: Callable[[str], float],
        stride: int,
        lost_seconds: float,
        live: bool = False,
        report: Callable[[str], None] | None = None,
        on_end: Callable[[str, int], None] | None = None,
        privacy: bool = False,
        on_window: Callable[[Mapping[str, Any]], None] | None = None,
        lost_rule: str = "seconds",
    ) -> None:
        if lost_rule not in LOST_RULES:
            raise ValueError(f"lost_rule must be one of {LOST_RULES}, got {lost_rule!r}")
        self.lost_rule = lost_rule
        self.options = options
        self.on_window = on_window
        self.window = float(options.window or 0.0)
        self.labels = labels
        self.output = Path(output)
        self.fps = fps
        self.stride = max(1, int(stride))
        self.lost_seconds = float(lost_seconds)
        self.live = live
        self.report = report or (lambda line: print(line, flush=True))
        self.on_end = on_end
        self.privacy = privacy
        self.groups = group_names(labels)
        self.columns = audience_columns(labels)
        self.rows: list[dict[str, Any]] = []
        # totals and gate counters
        self.people = 0
        self.by_group: dict[str, int] = dict.fromkeys(self.groups, 0)
        self.dwell_sum = 0.0
        self.faces = {"seen": 0, **dict.fromkeys(FACE_GATES, 0), "untracked": 0, "used": 0}
        self.no_landmarks = 0
        self.tracks = {"seen": 0, "counted": 0, "min_frames": 0, "face_gates": 0}
        self._reset_video(None)

    # -- per video -------------------------------------------------------------------------

    def _reset_video(self, video: str | None) -> None:
        self.video = video
        self.live_people: dict[int, Person] = {}
        self.pending: list[Window] = []
        self.next_window: int | None = None
        self.analysed = 0
        self.last_time: float | None = None
        self.frame_seconds = 0.0
        self.lost_frames = 1
        if video is not None:
            rate = max(self.fps(video), 1e-3)
            self.frame_seconds = self.stride / rate
            # lost_rule="frames": FaceTracker's earlier rule, a buffer of analysed frames
            self.lost_frames = lost_frames(rate, self.stride, self.lost_seconds)

    def _time(self, result: ImageResult) -> float:
        """The frame's time, as the tracker reads it (:func:`frame_time`)."""
        item = result.item
        if self.live and item.stamp is None:
            return 0.0
        return frame_time(item, self.fps(str(self.video)))

    def _lost(self, person: Person, now: float) -> bool:
        """The tracker's loss rule: this person's id cannot come back any more."""
        if person.missing_since is None:
            return False
        if self.lost_rule == "frames":
            return self.analysed - person.last_index > self.lost_frames
        return is_lost(person.missing_since, now, self.lost_seconds)

    def observe(self, result: ImageResult) -> None:
        """One analysed frame (photos and undecodable frames only move nothing on)."""
        video = result.item.video
        if video is None:
            return
        if video != self.video:
            self._end_video()
            self._reset_video(video)
        if result.error is not None:
            return
        now = self._time(result)
        self.last_time = now
        k = math.floor(now / self.window)
        if self.next_window is None:
            self.next_window = 0 if not self.live else k
        while self.next_window <= k:
            self.pending.append(Window(video, self.next_window))
            self.next_window += 1
        window = next(w for w in reversed(self.pending) if w.index == k)
        self.analysed += 1
        tracks = result.tracks or [None] * len(result.faces)
        for face, track in zip(result.faces, tracks, strict=True):
            self.faces["seen"] += 1
            gate = face_gate(face, self.options)
            if face.landmarks is None:
                self.no_landmarks += 1
            if gate is not None:
                self.faces[gate] += 1
            elif track is None:
                self.faces["untracked"] += 1
            else:
                self.faces["used"] += 1
            if track is None:
                continue
            person = self.live_people.get(track)
            if person is None:
                person = Person(video, track, now, now, self.analysed)
                self.live_people[track] = person
                self.tracks["seen"] += 1
            person.see(now, self.analysed, face, gate)
            entry = window.seen.get(track)
            if entry is None:
                window.seen[track] = [person, now, now]
            else:
                entry[2] = now
        for track, person in list(self.live_people.items()):
            if person.last_index != self.analysed and person.missing_since is None:
                person.missing_since = now  # the first analysed frame without them
            if self._lost(person, now):
                self._end(track)
        self._flush(closed_before=k)

    def _end(self, track: int) -> None:
        """A track ended: into the totals (final answer) or the gate report."""
        person = self.live_people.pop(track)
        person.ended = True
        if person.passed >= self.options.min_frames:
            self.people += 1
            self.tracks["counted"] += 1
            group = person.group(self.labels)
            if group in self.by_group:
                self.by_group[group] += 1
            self.dwell_sum += person.last_time - person.first_time
        elif person.frames < self.options.min_frames:
            self.tracks["min_frames"] += 1
        else:
            self.tracks["face_gates"] += 1
        if self.on_end is not None:
            self.on_end(person.video, track)

    def _decided(self, window: Window) -> bool:
        return all(
            p.ended or p.passed >= self.options.min_frames for p, _, _ in window.seen.values()
        )

    def _flush(self, closed_before: int | None) -> None:
        """Write the rows of the closed windows (index < ``closed_before``; None: all)
        whose people are all decided, in order."""
        while self.pending:
            window = self.pending[0]
            closed = closed_before is None or window.index < closed_before
            if not closed or not self._decided(window):
                return
            self.pending.pop(0)
            self._emit(window, last=closed_before is None and not self.pending)

    def _emit(self, window: Window, last: bool) -> None:
        start = window.index * self.window
        end = start + self.window
        if last and not self.live and self.last_time is not None:
            end = min(end, self.last_time + self.frame_seconds)  # what the video covers
        counts = dict.fromkeys(self.groups, 0)
        people = new = 0
        dwell = 0.0
        for person, first, latest in window.seen.values():
            if person.passed < self.options.min_frames:
                continue
            people += 1
            if not person.counted:
                new += 1
                person.counted = True
            group = person.group(self.labels)
            if group in counts:
                counts[group] += 1
            dwell += latest - first
        row: dict[str, Any] = {
            "video": window.video,
            "window_start": self._stamp(start),
            "window_end": self._stamp(end),
            "people": people,
            "new_people": new,
            **counts,
            "dwell_mean_s": round(dwell / people, 2) if people else "",
        }
        self.rows.append(row)
        if self.live:
            self.report(window_line(row, self.groups))
        if self.on_window is not None:
            self.on_window(dict(row))

    def _stamp(self, seconds: float) -> str | float:
        if self.live:  # to the millisecond when windows are not whole seconds
            spec = "seconds" if self.window.is_integer() else "milliseconds"
            return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec=spec)
        return round(seconds, 3)

    def _end_video(self) -> None:
        if self.video is None:
            return
        for track in list(self.live_people):
            self._end(track)
        self._flush(closed_before=None)

    # -- the end -----------------------------------------------------------------------------

    def close(self) -> dict[str, Any]:
        """Finish the last video, write the three files, report the totals; returns
        audience.json's content."""
        self._end_video()
        self._reset_video(None)
        data = self.to_json()
        self.output.mkdir(parents=True, exist_ok=True)
        write_audience_csv(self.output / CSV_NAME, self.rows, self.columns)
        text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
        atomic_write(self.output / JSON_NAME, lambda fh: fh.write(text), fsync=False)
        try:
            plot_audience(self.output / PNG_NAME, self.rows, data["totals"], self.groups)
        except (OSError, ValueError) as exc:  # the numbers matter more than the chart
            print(f"agegender: {PNG_NAME} not written: {exc}", file=sys.stderr)
        for line in totals_lines(data, self.output / CSV_NAME):
            self.report(line)
        return data

    def to_json(self) -> dict[str, Any]:
        counted = self.tracks["counted"]
        return {
            "format": JSON_FORMAT,
            "window_seconds": self.window,
            "time": "wall clock (ISO 8601)" if self.live else "seconds of the video",
            "privacy": self.privacy,
            "columns": list(self.columns),
            "windows": self.rows,
            "totals": {
                "people": self.people,
                "groups": dict(self.by_group),
                "dwell_mean_s": round(self.dwell_sum / counted, 2) if counted else None,
            },
            "gates": {
                "settings": {
                    "min_frames": int(self.options.min_frames),
                    "min_face": float(self.options.min_face),
                    "min_score": float(self.options.min_score),
                    "max_yaw": float(self.options.max_yaw),
                },
                "faces": dict(self.faces),
                "faces_without_landmarks": self.no_landmarks,
                "tracks": dict(self.tracks),
            },
        }


def window_line(row: Mapping[str, Any], groups: Iterable[str]) -> str:
    """``audience 10:00:00 .. 10:01:00 clip: 3 people (1 new): female_25-32 2, ...``"""
    parts = [f"{g} {row[g]}" for g in groups if row.get(g)]
    dwell = row["dwell_mean_s"]
    return (
        f"audience {row['window_start']} .. {row['window_end']} {row['video']}: "
        f"{row['people']} people ({row['new_people']} new)"
        + (": " + ", ".join(parts) if parts else "")
        + (f"; dwell {dwell} s" if dwell != "" else "")
    )


def totals_lines(data: Mapping[str, Any], csv_path: Path) -> list[str]:
    """The closing lines: the totals, and what each gate removed."""
    totals, gates = data["totals"], data["gates"]
    parts = [f"{g} {n}" for g, n in totals["groups"].items() if n]
    faces, tracks = gates["faces"], gates["tracks"]
    windows = len(data["windows"])
    line = (
        f"audience totals: {totals['people']} people in {windows} window"
        f"{'s' if windows != 1 else ''} of {data['window_seconds']:g} s"
        + (": " + ", ".join(parts) if parts else "")
        + f" -> {csv_path}"
    )
    removed = ", ".join(f"{g} {faces[g]}" for g in FACE_GATES)
    gate_line = (
        f"  audience gates: faces {faces['seen']} seen, removed {removed}, untracked "
        f"{faces['untracked']} (max_yaw not applied to {gates['faces_without_landmarks']} "
        f"without landmarks); tracks {tracks['seen']} seen, {tracks['counted']} counted, "
        f"removed min_frames {tracks['min_frames']}, face gates {tracks['face_gates']}"
    )
    return [line, gate_line]


def write_audience_csv(
    path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> Path:
    """audience.csv, atomically (small: one row per window)."""
    return write_csv_rows(path, rows, columns)


def plot_audience(
    path: Path, rows: Sequence[Mapping[str, Any]], totals: Mapping[str, Any], groups: Sequence[str]
) -> Path:
    """audience.png: people per window by group (stacked bars), and the totals by group
    (:func:`audience_figure`), written atomically."""
    import matplotlib.pyplot as plt

    figure = audience_figure(rows, totals, groups)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    data = buffer.getvalue()
    return atomic_write(Path(path), lambda fh: fh.write(data), fsync=False)


def audience_figure(
    rows: Sequence[Mapping[str, Any]], totals: Mapping[str, Any], groups: Sequence[str]
) -> Any:
    """The matplotlib Figure of audience.png: the legend above both plots (over the bars
    it hid the first windows) and headroom above the tallest bar and the "people" dots (on
    the frame's top edge they could not be read). Returned open; the caller closes it."""
    import matplotlib  # deferred: ~0.3 s, only when an audience report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    shown = [g for g in groups if totals["groups"].get(g) or any(r.get(g) for r in rows)]
    videos = {r["video"] for r in rows}
    labels = [
        (f"{Path(str(r['video'])).name} " if len(videos) > 1 else "") + str(r["window_start"])
        for r in rows
    ]
    figure, (over_time, total) = plt.subplots(
        1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1.2]}
    )
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    colours = plt.get_cmap("tab20")
    for i, group in enumerate(shown):
        values = np.array([float(r.get(group) or 0) for r in rows])
        over_time.bar(x, values, bottom=bottom, label=group, color=colours(i % 20))
        bottom += values
    people = [float(r["people"]) for r in rows]
    over_time.plot(x, people, "k.", markersize=8, label="people (all groups)")
    over_time.set_xticks(x, labels, rotation=45 if len(rows) > 4 else 0, ha="right", fontsize=8)
    over_time.set_ylabel("people seen in the window")
    over_time.set_xlabel(
        "window start" + (" (s)" if rows and not isinstance(rows[0]["window_start"], str) else "")
    )
    # headroom: the "people" dots and the tallest bar stay clear of the frame's top edge
    top = max([*people, *bottom.tolist(), 1.0])
    over_time.set_ylim(0, top * 1.15 + 0.5)
    if len(rows) == 1:
        over_time.set_xlim(-1, 1)
    over_time.yaxis.set_major_locator(MaxNLocator(integer=True))
    total.xaxis.set_major_locator(MaxNLocator(integer=True))
    over_time.set_title("People per window, by gender and age class", fontsize=10)
    legend_height = 0.0
    if shown:
        # above the plots, never over the first bars
        handles, names = over_time.get_legend_handles_labels()
        columns = min(len(names), 5)
        legend = figure.legend(handles, names, loc="upper center", ncol=columns, fontsize=8,
                               frameon=False, bbox_to_anchor=(0.5, 1.0))  # fmt: skip
        box = legend.get_window_extent(figure.canvas.get_renderer())
        legend_height = box.height / figure.bbox.height
    values = [totals["groups"].get(g, 0) for g in shown]
    total.barh(np.arange(len(shown)), values, color=[colours(i % 20) for i in range(len(shown))])
    total.set_yticks(np.arange(len(shown)), shown, fontsize=7)
    total.invert_yaxis()
    total.set_title(f"Totals: {totals['people']} people", fontsize=10)
    if values:
        total.set_xlim(0, max(values) * 1.15 + 0.5)  # room after the longest bar
    figure.tight_layout(rect=(0, 0, 1, 1 - legend_height))
    return figure
