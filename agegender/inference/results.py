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
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from agegender.labels import ADIENCE8, LabelSet

if TYPE_CHECKING:
    from agegender.faces import Face
    from agegender.inference.inputs import InputItem

TASKS: tuple[str, ...] = ("age", "gender")

#: Below these best-class probabilities an answer is drawn as unsure: ``?`` after its class
#: and a dashed box. Per task, because chance differs: 0.5 for two genders, 0.125 for eight
#: age groups (an age answer at 0.45 is far above chance, a gender answer at 0.6 is barely).
UNSURE_BELOW: dict[str, float] = {"gender": 0.8, "age": 0.5}


class Label(NamedTuple):
    """What annotated images and videos draw for a face: the text, the gender (its box
    colour) and whether any answer is unsure (:data:`UNSURE_BELOW`; drawn dashed)."""

    text: str
    gender: str
    unsure: bool = False


def label_of(answers: Mapping[str, tuple[str | None, float | None]]) -> Label:
    """``female 0.97, 25-32 0.61`` from {task: (class or None if abstained, probability)}:
    the probability is shown so that a sure answer and a guess do not look the same; an
    unsure class gets ``?`` after it, an abstained task reads ``age?``."""
    parts = []
    unsure = False
    for task in ("gender", "age"):
        if task not in answers:
            continue
        name, prob = answers[task]
        low = prob is not None and prob < UNSURE_BELOW[task]
        unsure = unsure or low or name is None
        word = f"{task}?" if name is None else name + ("?" if low else "")
        parts.append(word if prob is None else f"{word} {prob:.2f}")
    return Label(", ".join(parts), answers.get("gender", (None, None))[0] or "", unsure)


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

    def label(self) -> Label:
        """What annotated images and videos draw (:func:`label_of`): each task's class and
        probability, ``age?`` for an abstained task; a task the model has no head for is
        left out."""
        answers = {
            task: (
                None if task in self.abstained else getattr(self, task),
                getattr(self, f"{task}_prob"),
            )
            for task in TASKS
            if getattr(self, task) is not None or task in self.abstained
        }
        return label_of(answers)

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
    #: (width, height) of the decoded input in full-size pixels (the coordinates boxes are
    #: in), also when ``image`` is not kept; None for an input that could not be decoded.
    size: tuple[int, int] | None = None
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
