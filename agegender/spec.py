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

from dataclasses import dataclass

CHANNEL_ORDERS: tuple[str, ...] = ("RGB", "BGR")


def _triple(value: object, name: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per channel, got {value!r}")
    return values  # type: ignore[return-value]


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
      square; ``mean`` is then only its initial fill), subtracted at each crop's origin.
    """

    face_size: int
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    mean_image: bool = False

    def __post_init__(self) -> None:
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
