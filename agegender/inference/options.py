"""Every setting of a prediction run in one typed object, built from the Hydra config.

``conf/predict.yaml`` (and ``conf/detector/<name>.yaml``) hold the defaults, once: predict.py
composes them with Hydra, and :meth:`PredictOptions.defaults` reads the same files for the
Python API. ``AgeGender``, the folder and stream runs, and the web demo all take this object
instead of re-reading the config key by key; an option that does not apply to a source is
refused by the source (:mod:`agegender.inference.sources`), never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from agegender.config import CONF_DIR, load_yaml
from agegender.errors import AgeGenderError
from agegender.faces.registry import detector_config
from agegender.runtime.base import PRECISIONS


class OptionError(AgeGenderError, ValueError):
    """A setting that does not apply to the run's source (the message names both)."""


@dataclass(frozen=True)
class VideoOptions:
    """``video.*``: how videos, cameras and streams are read (conf/predict.yaml)."""

    #: Analyse every Nth frame (streams: the newest frame, at most every Nth).
    stride: int
    #: A face missing from the analysed frames this long (seconds of the video's own time;
    #: a stream's: the wall clock) loses its track id.
    lost_seconds: float
    #: A face keeps a track's id only if its look correlates with the track's at least this
    #: much (-1 to 1; :mod:`agegender.faces.appearance`); None = by box overlap alone.
    min_similarity: float | None
    #: Read only the first frames / seconds of each video or stream; None = all.
    max_frames: int | None
    max_seconds: float | None
    #: Streams: a live window where OpenCV has a GUI.
    show: bool
    #: Streams: give up opening after this long; no frame for this long = stalled.
    open_seconds: float
    stall_seconds: float

    def __post_init__(self) -> None:
        if int(self.stride) < 1:
            raise ValueError(f"video.stride must be >= 1, got {self.stride}")
        if not float(self.lost_seconds) >= 0:
            raise ValueError(f"video.lost_seconds must be >= 0, got {self.lost_seconds}")
        if self.min_similarity is not None and not -1 <= float(self.min_similarity) <= 1:
            raise ValueError(
                f"video.min_similarity must lie in [-1, 1] or be null, got {self.min_similarity}"
            )


@dataclass(frozen=True)
class AudienceOptions:
    """``audience.*``: people counted per time window in videos, cameras and streams
    (:mod:`agegender.inference.audience`; conf/predict.yaml documents each default)."""

    #: Window length in seconds of the source's time; None = no audience report (default).
    window: float | None
    #: A track counts as a person only once this many of its analysed faces passed the gates.
    min_frames: int
    #: Faces whose box is smaller than this on its shorter side (pixels) are left out.
    min_face: float
    #: Faces the detector is less sure of than this are left out.
    min_score: float
    #: Faces turned further than this (degrees, estimated from the 5 landmarks) are left
    #: out; faces without landmarks are not gated (the report counts them).
    max_yaw: float

    def __post_init__(self) -> None:
        if self.window is not None and not float(self.window) > 0:
            raise ValueError(f"audience.window must be > 0 seconds or null, got {self.window}")
        if int(self.min_frames) < 1:
            raise ValueError(f"audience.min_frames must be >= 1, got {self.min_frames}")
        if float(self.min_face) < 0 or not 0 <= float(self.min_score) <= 1:
            raise ValueError("audience.min_face must be >= 0 and audience.min_score in [0, 1]")
        if not 0 < float(self.max_yaw) <= 90:
            raise ValueError(f"audience.max_yaw must lie in (0, 90] degrees, got {self.max_yaw}")

    @property
    def on(self) -> bool:
        """True when the run writes an audience report."""
        return self.window is not None


@dataclass(frozen=True)
class PredictOptions:
    """The settings of ``conf/predict.yaml`` (see the comments there), typed.

    ``detector`` is the detector's config (``_target_`` and its options, as in
    ``conf/detector/<name>.yaml``); ``labels`` a label-set name or mapping, or None for the
    checkpoint's own."""

    input: str | None
    output: str | None
    checkpoint: str | None
    detector: Mapping[str, Any]
    labels: Any
    save_probs: bool
    format: str
    expected_age: bool
    annotate: bool
    oversample: bool
    batch_size: int
    workers: int
    threads: int | None
    decode_min_side: int | None
    max_pixels: int | None
    device: str
    precision: str
    backend: str
    progress: bool
    video: VideoOptions
    resume: bool
    shard: int
    num_shards: int
    #: Apply the checkpoint's stored temperature scaling (false: raw network probabilities).
    calibration: bool
    #: Per task (``age``, ``gender``): below this best-class probability the label is left
    #: empty (status ``abstained: <task>``); None = always labelled. A number sets both.
    min_prob: Mapping[str, float | None]
    #: People per time window (audience.csv/json/png); off unless ``audience.window`` is set.
    audience: AudienceOptions
    #: Aggregates only: no per-face rows, tracks.csv or annotated copies (needs audience).
    privacy: bool
    #: Annotated copies blur every face instead of boxing and labelling it.
    blur_faces: bool
    #: Set-up only (not in the YAML): let the install step fetch the original weights.
    download: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1 or int(self.workers) < 1:
            raise ValueError("batch_size and workers must be >= 1")
        if self.format not in ("csv", "jsonl"):
            raise ValueError(f"format must be csv or jsonl, got {self.format!r}")
        if self.precision not in PRECISIONS:  # before any model loads, with the choices
            raise OptionError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        object.__setattr__(self, "min_prob", min_prob_of(self.min_prob))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> PredictOptions:
        """From a composed ``conf/predict.yaml`` (plain containers, interpolations resolved).
        Every setting must be there: a missing key is an error, not a silent default."""
        names = [f.name for f in fields(cls) if f.name != "download"]
        # `labels` is a defaults-list group (conf/labels/): absent when none is chosen
        cfg = {"labels": None, **cfg}
        missing = [name for name in names if name not in cfg]
        video = dict(cfg.get("video") or {})
        missing += [f"video.{f.name}" for f in fields(VideoOptions) if f.name not in video]
        audience = dict(cfg.get("audience") or {})
        missing += [f"audience.{f.name}" for f in fields(AudienceOptions) if f.name not in audience]
        if missing:
            raise KeyError(f"prediction config lacks {', '.join(missing)} (conf/predict.yaml)")
        values = {name: cfg[name] for name in names}
        values["video"] = VideoOptions(**{f.name: video[f.name] for f in fields(VideoOptions)})
        values["audience"] = AudienceOptions(
            **{f.name: audience[f.name] for f in fields(AudienceOptions)}
        )
        values["detector"] = dict(cfg["detector"])
        values["min_prob"] = min_prob_of(cfg["min_prob"])
        values["input"] = None if cfg["input"] is None else str(cfg["input"])
        return cls(**values)

    @classmethod
    def defaults(cls, detector: str = "mtcnn", **settings: Any) -> PredictOptions:
        """``conf/predict.yaml``'s defaults with ``conf/detector/<detector>.yaml`` (what
        ``predict.py`` composes without overrides), then :meth:`replace` ``settings``."""
        from omegaconf import OmegaConf  # deferred: the API on photos skips it otherwise

        root = load_yaml("predict.yaml")
        for key in ("defaults", "hydra", "output"):  # output: a Hydra resolver (${now:})
            del root[key]  # (not pop: it would resolve the value)
        cfg = OmegaConf.to_container(root, resolve=True)
        cfg.update(input=None, output=None, labels=None)  # type: ignore[union-attr]
        # the detector's config follows the device and backend this object runs with
        where = {k: settings.get(k, cfg[k]) for k in ("device", "backend")}  # type: ignore[index]
        cfg["detector"] = detector_config(detector, **where)  # type: ignore[index]
        return cls.from_config(cfg).replace(**settings)  # type: ignore[arg-type]

    @classmethod
    def compose(cls, overrides: Sequence[str] = ()) -> PredictOptions:
        """``conf/predict.yaml`` composed with Hydra ``overrides`` (``detector=opencv_ssd``,
        ``checkpoint=...``), as predict.py composes it, for the entry points that run
        without an input of their own (the web demo, the server): input and output None."""
        from hydra import compose, initialize_config_dir  # deferred: only these entries
        from omegaconf import OmegaConf

        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("predict", overrides=["input=none", "output=none", *overrides])
        config = OmegaConf.to_container(cfg, resolve=True)
        return cls.from_config(config).replace(input=None, output=None)  # type: ignore[arg-type]

    def replace(self, **settings: Any) -> PredictOptions:
        """A copy with ``settings`` changed; ``video_<name>=`` sets ``video.<name>`` and
        ``audience_<name>=`` ``audience.<name>``. An unknown setting is a TypeError naming it."""
        own = {f.name for f in fields(self)}
        video_names = {f.name for f in fields(VideoOptions)}
        audience_names = {f.name for f in fields(AudienceOptions)}
        changes: dict[str, Any] = {}
        video: dict[str, Any] = {}
        audience: dict[str, Any] = {}
        for key, value in settings.items():
            if key.startswith("video_") and key[6:] in video_names:
                video[key[6:]] = value
            elif key.startswith("audience_") and key[9:] in audience_names:
                audience[key[9:]] = value
            elif key in own:
                changes[key] = value
            else:
                raise TypeError(f"unknown prediction setting {key!r}")
        if video:
            base = changes.get("video", self.video)
            changes["video"] = dataclasses.replace(base, **video)
        if audience:
            base = changes.get("audience", self.audience)
            changes["audience"] = dataclasses.replace(base, **audience)
        return dataclasses.replace(self, **changes)

    @property
    def annotates(self) -> bool:
        """Annotated copies are written: ``annotate=true`` and not ``privacy=true`` (privacy
        writes aggregates only, whatever ``annotate`` says)."""
        return bool(self.annotate) and not self.privacy

    @property
    def detector_name(self) -> str:
        return str(self.detector.get("name", "detector"))


#: Tasks ``min_prob`` can name.
MIN_PROB_TASKS: tuple[str, ...] = ("age", "gender")


def min_prob_of(value: Any) -> dict[str, float | None]:
    """``min_prob`` as ``{"age": float | None, "gender": float | None}``: from a mapping
    (missing tasks: None), a number (both tasks) or None (neither). Values lie in [0, 1]."""
    if value is None:
        return dict.fromkeys(MIN_PROB_TASKS)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = dict.fromkeys(MIN_PROB_TASKS, value)
    if not isinstance(value, Mapping):
        raise ValueError(f"min_prob must be a number or map age/gender to one, got {value!r}")
    unknown = set(value) - set(MIN_PROB_TASKS)
    if unknown:
        raise ValueError(f"min_prob: unknown task(s) {sorted(unknown)}; use age and/or gender")
    out: dict[str, float | None] = {}
    for task in MIN_PROB_TASKS:
        floor = value.get(task)
        if floor is not None:
            try:
                floor = float(floor)
            except (TypeError, ValueError):
                raise ValueError(
                    f"min_prob.{task} must be a number in [0, 1], got {floor!r}"
                ) from None
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"min_prob.{task} must lie in [0, 1], got {floor}")
        out[task] = floor
    return out
