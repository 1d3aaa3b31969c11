"""The Python API: age and gender of the faces in images held in memory.

    from agegender import AgeGender

    ag = AgeGender()                      # MTCNN + the original Levi-Hassner nets
    for face in ag.predict("photo.jpg"):  # a path, a PIL image or an H x W x 3 uint8 array
        print(face.box, face.age, face.age_prob, face.gender)

Built once, called many times, like insightface's ``FaceAnalysis``. ``predict.py`` runs on
the same object (:meth:`AgeGender.predict_folder`): decoding, detection, alignment,
preprocessing and the network are the :class:`~agegender.inference.pipeline.Pipeline` the
folder command uses, so a face gets the same label here as in predictions.csv.
Bad input raises :class:`~agegender.images.ImageLoadError` whose ``reason`` is the text the
CSV's ``status`` column carries (``error: <reason>``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agegender.images import DEFAULT_MAX_PIXELS, ImageLoadError

if TYPE_CHECKING:
    from agegender.faces import Detector, Face
    from agegender.inference.classifier import FaceClassifier
    from agegender.inference.onnx_classifier import OnnxFaceClassifier
    from agegender.inference.pipeline import ImageResult, Pipeline
    from agegender.inference.summary import Summary


@dataclass
class FaceResult:
    """One face: where it is, and its age and gender with their probabilities.

    ``box`` is (x1, y1, x2, y2) in the input image's pixels; ``score`` the detector's
    confidence (1.0 for boxes given by the caller); ``landmarks`` 5 (x, y) points (eyes,
    nose, mouth corners) or None. ``age``/``gender`` are the most probable classes and
    ``age_prob``/``gender_prob`` their probabilities; ``age_probs``/``gender_probs`` every
    class's probability in the model's class order. A model without a head gives None there.
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
        }


def face_results(result: ImageResult) -> list[FaceResult]:
    """The faces of a classified pipeline result (what the API returns, and what the JSON
    Lines output of ``predict.py`` writes)."""
    faces = []
    for i, face in enumerate(result.faces):
        out = FaceResult(
            box=tuple(float(v) for v in face.box),  # type: ignore[arg-type]
            score=float(face.score),
            landmarks=None
            if face.landmarks is None
            else [(float(x), float(y)) for x, y in np.asarray(face.landmarks)],
        )
        for task in ("age", "gender"):
            probs = result.probs.get(task)
            if probs is None:
                continue
            names = result.labels[task]
            p = probs[i]
            best = int(np.argmax(p))
            setattr(out, task, names[best])
            setattr(out, f"{task}_prob", float(p[best]))
            setattr(out, f"{task}_probs", {n: float(v) for n, v in zip(names, p, strict=True)})
        faces.append(out)
    return faces


class AgeGender:
    """Detector + classifier, built once; call :meth:`predict` on as many images as you like.

    ``detector``: a name (``mtcnn``, ``mtcnn_facenet``, ``opencv_ssd``, ``haar``, ``none``:
    the image is already a face crop) with ``detector_options`` (the settings of
    ``conf/detector/<name>.yaml``; the constructor defaults equal those files), or any
    :class:`~agegender.faces.Detector` instance. ``checkpoint``: None for the original
    Levi-Hassner weights (converted into the cache by ``python -m agegender.weights
    original``; never downloaded here unless ``download=True``), or a file written by
    ``train.py``. ``precision``: ``auto``, ``fp32`` (exact) or ``bf16`` (see
    :func:`agegender.inference.classifier.resolve_precision`). ``decode_min_side``: paths to
    big JPEGs are decoded reduced (boxes stay in full-size pixels); arrays are used as given.
    ``backend``: ``auto`` (onnxruntime on the CPU when the exported original nets are cached
    and nothing needs torch, else PyTorch), ``torch`` or ``onnxruntime``
    (:func:`agegender.inference.run.resolve_backend`); ``threads``: onnxruntime's threads.
    ``labels``: the label set to report (None: the checkpoint's; ``coarse3`` etc. on the
    original weights sums bucket probabilities, see :mod:`agegender.labels`).
    """

    def __init__(
        self,
        detector: str | Detector = "mtcnn",
        checkpoint: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        precision: str = "auto",
        oversample: bool = False,
        batch_size: int = 32,
        workers: int = 2,
        detector_options: Mapping[str, Any] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        decode_min_side: int | None = 1600,
        download: bool = False,
        backend: str = "auto",
        threads: int | None = None,
        labels: Any = None,
    ) -> None:
        from agegender.faces import build_detector
        from agegender.inference.run import build_classifier

        if isinstance(detector, str):
            options = dict(detector_options or {})
            if detector in ("mtcnn", "mtcnn_facenet"):
                options.setdefault("device", device)
            if detector == "mtcnn":
                options.setdefault("backend", backend)
            detector = build_detector(detector, **options)
        elif detector_options:
            raise ValueError("detector_options go with a detector name, not an instance")
        self.detector: Detector = detector
        self.classifier: FaceClassifier | OnnxFaceClassifier
        self.classifier, self.checkpoint_meta = build_classifier(
            checkpoint,
            oversample=oversample,
            device=device,
            download=download,
            precision=precision,
            backend=backend,
            threads=threads,
            labels=labels,
        )
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self.decode_min_side = decode_min_side

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AgeGender:
        """Built from a composed ``conf/predict.yaml`` (what ``predict.py`` does)."""
        detector_cfg = dict(cfg["detector"])
        name = detector_cfg.pop("name")
        return cls(
            detector=name,
            detector_options=detector_cfg,
            checkpoint=cfg.get("checkpoint"),
            device=cfg.get("device", "cpu"),
            precision=str(cfg.get("precision", "fp32")),
            oversample=bool(cfg.get("oversample", False)),
            batch_size=int(cfg.get("batch_size", 32)),
            workers=int(cfg.get("workers", 2)),
            max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS),
            decode_min_side=cfg.get("decode_min_side"),
            download=True,
            backend=str(cfg.get("backend", "auto")),
            threads=cfg.get("threads"),
            labels=cfg.get("labels"),
        )

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        """Class names per task, in the order of ``age_probs`` / ``gender_probs``."""
        return dict(self.classifier.labels.class_names)

    @property
    def precision(self) -> str:
        return self.classifier.precision

    @property
    def backend(self) -> str:
        """Where the network runs: ``torch`` or ``onnxruntime``."""
        return self.classifier.backend

    def pipeline(self, keep_images: bool = False) -> Pipeline:
        """The pipeline every entry point runs (API calls, ``predict.py``, the web demo)."""
        from agegender.inference.pipeline import Pipeline

        return Pipeline(
            self.detector,
            self.classifier,
            batch_size=self.batch_size,
            workers=self.workers,
            max_pixels=self.max_pixels,
            keep_images=keep_images,
            decode_min_side=self.decode_min_side,
        )

    def predict(
        self,
        image: Any,
        boxes: Sequence[Any] | None = None,
        bgr: bool = False,
    ) -> list[FaceResult]:
        """The faces of one image, best detection first.

        ``image``: a path, a PIL image (any mode) or an H x W x 3 uint8 array, RGB unless
        ``bgr=True`` (OpenCV frames). ``boxes``: classify these faces instead of detecting
        (x1, y1, x2, y2 in the image's pixels, or :class:`~agegender.faces.Face` objects with
        landmarks); without landmarks a face is cropped around its box, as for the box-only
        detectors. Raises :class:`~agegender.images.ImageLoadError` for input that cannot be
        used (``reason``: the CSV's text).
        """
        return self.predict_batch([image], None if boxes is None else [boxes], bgr)[0]

    def predict_batch(
        self,
        images: Sequence[Any],
        boxes: Sequence[Sequence[Any] | None] | None = None,
        bgr: bool = False,
    ) -> list[list[FaceResult]]:
        """:meth:`predict` for many images: decoding and detection run in ``workers`` threads
        and the faces of all images share network batches. ``boxes``: one list (or None, to
        detect) per image. The first unusable image raises
        :class:`~agegender.images.ImageLoadError` (its ``path`` names it: the file, or
        ``images[i]``); nothing is returned for the others then, so check inputs or use
        ``predict.py`` (which writes a row for every input) when some may be bad.
        """
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        items = [
            _item(image, i, bgr, None if boxes is None else boxes[i])
            for i, image in enumerate(images)
        ]
        pipeline = self.pipeline()
        if len(items) == 1:  # no thread pool for a single image
            results = pipeline.classify([pipeline.prepare(items[0])])
        else:
            results = list(pipeline.run(items))
        out = []
        for result in results:
            if result.error is not None:
                raise ImageLoadError(result.error, result.item.path)
            out.append(face_results(result))
        return out

    def predict_folder(
        self, input: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
    ) -> Summary:
        """What ``predict.py input=... output=...`` does with this object's detector and
        network: every image and video under ``input`` into ``output``/predictions.csv (or
        ``.jsonl``); ``options`` are those of :func:`agegender.inference.run.predict`."""
        from agegender.inference.run import predict

        options.setdefault("batch_size", self.batch_size)
        options.setdefault("workers", self.workers)
        options.setdefault("max_pixels", self.max_pixels)
        options.setdefault("decode_min_side", self.decode_min_side)
        return predict(input, output, self.detector, self.classifier, **options)

    def __repr__(self) -> str:
        return (
            f"AgeGender(detector={self.detector!r}, device={self.classifier.device}, "
            f"precision={self.precision}, backend={self.backend})"
        )


def _item(image: Any, index: int, bgr: bool, boxes: Sequence[Any] | None) -> Any:
    """An :class:`~agegender.inference.inputs.InputItem` for one API input."""
    from agegender.inference.inputs import InputItem

    faces = None if boxes is None else [_face(box) for box in boxes]
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if bgr:
            raise ValueError("bgr=True is for arrays; files are decoded as RGB")
        return InputItem(str(path), path.name, file=path, faces=faces)
    name = f"images[{index}]"
    try:
        rgb = _to_rgb(image, bgr)
    except ImageLoadError as exc:
        return InputItem(name, name, error=exc.reason)
    return InputItem(name, name, image=rgb, faces=faces)


def _to_rgb(image: Any, bgr: bool) -> np.ndarray:
    """PIL image or array -> H x W x 3 uint8 RGB (contiguous), or ImageLoadError."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if bgr:
            raise ValueError("bgr=True is for arrays; PIL images are RGB")
        from agegender.images import to_rgb_array

        return to_rgb_array(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"expected a path, a PIL image or a numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ImageLoadError(f"unsupported array dtype {image.dtype} (expected uint8)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageLoadError(f"unsupported array shape {tuple(image.shape)} (expected H x W x 3)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageLoadError(f"empty image {tuple(image.shape)}")
    if bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _face(box: Any) -> Face:
    from agegender.faces import Face

    if isinstance(box, Face):
        return box
    values = [float(v) for v in box]
    if len(values) != 4 or not np.all(np.isfinite(values)):
        raise ValueError(f"a box is (x1, y1, x2, y2) in pixels, got {box!r}")
    x1, y1, x2, y2 = values
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty box {box!r} (x2 must exceed x1, y2 exceed y1)")
    return Face(box=(x1, y1, x2, y2), score=1.0)
