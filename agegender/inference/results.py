"""What a prediction run knows about one input and each of its faces, decoded once.

The pipeline fills an :class:`ImageResult` per input; classification turns the network's
probabilities into :class:`FaceResult` objects (class names, the best class and its
probability, every class's probability) exactly once, in the label set the classifier
reports. The CSV and JSON Lines writers, tracks.csv, annotated images and videos, the Python
API and the web demo all read names and probabilities from here, never from raw logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agegender.labels import ADIENCE8, LabelSet

if TYPE_CHECKING:
    from agegender.faces import Face
    from agegender.inference.inputs import InputItem

TASKS: tuple[str, ...] = ("age", "gender")


@dataclass
class FaceResult:
    """One face: where it is, and its age and gender with their probabilities.

    ``box`` is (x1, y1, x2, y2) in the input image's pixels; ``score`` the detector's
    confidence (1.0 for boxes given by the caller); ``landmarks`` 5 (x, y) points (eyes,
    nose, mouth corners) or None. ``age``/``gender`` are the most probable classes and
    ``age_prob``/``gender_prob`` their probabilities; ``age_probs``/``gender_probs`` every
    class's probability in the model's class order. A model without a head gives None there.
    ``abstained`` names the tasks whose best probability fell below the run's ``min_prob``
    for that task: their label (``age``/``gender``) is None instead of a guess, while
    ``*_prob`` and ``*_probs`` still say how unsure the model was.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]] | None = None
    age: str | None = None
    age_prob: float | None = None
    gender: str | None = None
    gender_prob: float | None = None
    age_probs: dict[str, float] = field(default_factory=dict)
    gender_probs: dict[str, float] = field(default_factory=dict)
    abstained: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``ok``, or ``abstained: age`` / ``abstained: age, gender`` (docs/contracts.md)."""
        return f"abstained: {', '.join(self.abstained)}" if self.abstained else "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (lists, floats, strings), the fields above as keys."""
        return {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "landmarks": None if self.landmarks is None else [list(p) for p in self.landmarks],
            "age": self.age,
            "age_prob": self.age_prob,
            "gender": self.gender,
            "gender_prob": self.gender_prob,
            "age_probs": dict(self.age_probs),
            "gender_probs": dict(self.gender_probs),
            "abstained": list(self.abstained),
        }

    def probs(self, task: str) -> np.ndarray | None:
        """``task``'s probabilities in class order (None: the model has no such head)."""
        values = self.age_probs if task == "age" else self.gender_probs
        return np.fromiter(values.values(), dtype=np.float64) if values else None

    def label(self) -> tuple[str, str]:
        """("gender, age" text, gender): what annotated images and videos draw; an
        abstained task is drawn as ``?``."""
        parts = [
            "?" if task in self.abstained else getattr(self, task) for task in ("gender", "age")
        ]
        text = ", ".join(p for p in parts if p)
        return text, self.gender or ""

    @classmethod
    def decode(
        cls,
        face: Face,
        probs: dict[str, np.ndarray],
        labels: LabelSet,
        min_prob: Mapping[str, float | None] | None = None,
    ) -> FaceResult:
        """A detection and its probabilities (``probs[task]``: C values in ``labels``' order).
        ``min_prob``: per task, the lowest best-class probability that still gets a label
        (None or absent: always labelled, the default)."""
        out = cls(
            box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
            score=float(face.score),
            landmarks=None
            if face.landmarks is None
            else [(float(x), float(y)) for x, y in np.asarray(face.landmarks)],
        )
        names = labels.class_names
        abstained = []
        for task, p in probs.items():
            best = int(np.argmax(p))
            floor = (min_prob or {}).get(task)
            if floor is not None and float(p[best]) < floor:
                abstained.append(task)
            else:
                setattr(out, task, names[task][best])
            setattr(out, f"{task}_prob", float(p[best]))
            setattr(
                out, f"{task}_probs", {n: float(v) for n, v in zip(names[task], p, strict=True)}
            )
        out.abstained = tuple(abstained)
        return out


def add_probs(sums: dict[str, np.ndarray], face: FaceResult) -> None:
    """Add ``face``'s probabilities to per-task ``sums``: what a person followed over frames
    (a track of tracks.csv, a person of audience.csv) is answered by (see
    :func:`averaged_labels`)."""
    for task in TASKS:
        p = face.probs(task)
        if p is not None:
            sums[task] = sums[task] + p if task in sums else p.copy()


def averaged_labels(sums: dict[str, np.ndarray], labels: LabelSet) -> dict[str, str]:
    """{task: class of the averaged probabilities} from :func:`add_probs`' sums (the argmax
    of a sum is that of its mean)."""
    names = labels.class_names
    return {task: names[task][int(np.argmax(s))] for task, s in sums.items()}


def expected_years(face: FaceResult, labels: LabelSet) -> float | None:
    """``age_years_estimate``: the face's age probabilities times the classes' midpoints
    (:attr:`agegender.labels.LabelSet.midpoints`), rounded to 0.1 year: an estimate."""
    probs = face.probs("age")
    if probs is None:
        return None
    return round(float(np.dot(probs, np.asarray(labels.midpoints, dtype=np.float64))), 1)


@dataclass
class ImageResult:
    """Everything known about one input: its faces (decoded), or the reason it failed.

    ``detections`` are the detector's faces until classification turns them into
    ``faces``; ``tracks`` holds each face's track id for video and stream frames (None:
    not a frame of a video)."""

    item: InputItem
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = None  # kept only when annotated copies are wanted
    #: Full-size pixels per pixel of ``image`` (> 1 when a big JPEG was decoded reduced);
    #: boxes are always in full-size coordinates.
    scale: float = 1.0
    #: The label set the faces' classes come from (the classifier's).
    labels: LabelSet = ADIENCE8
    #: Video and stream frames: the track id of each face (None: in no confirmed track).
    tracks: list[int | None] | None = None
    detections: list[Face] = field(default_factory=list, repr=False)
    crops: list[Any] = field(default_factory=list, repr=False)  # the classifier's inputs
    #: Video and stream frames: each face's look (:func:`agegender.faces.appearance.
    #: appearance`), for the tracker's appearance check; emptied once the frame is tracked.
    looks: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        return "ok" if self.faces or self.detections else "no_face"

    def track_of(self, i: int) -> int | None:
        return None if not self.tracks else self.tracks[i]
