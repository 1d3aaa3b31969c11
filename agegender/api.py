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
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegender.faces import Detector, Face, build_detector
from agegender.faces.registry import detector_config
from agegender.fileio import display_path
from agegender.images import ImageLoadError, image_extensions, to_rgb_array
from agegender.inference.inputs import InputItem
from agegender.inference.job import predict
from agegender.inference.options import PredictOptions
from agegender.inference.pipeline import Pipeline
from agegender.inference.results import FaceResult
from agegender.inference.summary import Summary
from agegender.runtime.base import Classifier
from agegender.runtime.build import build_classifier

__all__ = ["AgeGender", "FaceResult", "ImageLoadError"]


class AgeGender:
    """Detector + classifier, built once; call :meth:`predict` on as many images as you like.

    Every setting is predict.py's (``conf/predict.yaml``, read here: the defaults live there
    once), as keywords (``device="cuda"``, ``precision="bf16"``, ``batch_size=64``,
    ``labels="coarse3"`` ...) or a whole :class:`~agegender.inference.options.PredictOptions`
    (``options=``); they are :attr:`options`.

    ``detector``: a name (``mtcnn``, ``mtcnn_facenet``, ``opencv_ssd``, ``haar``, ``none``:
    the image is already a face crop; built from ``conf/detector/<name>.yaml``) with
    ``detector_options`` overriding that file's settings, or any
    :class:`~agegender.faces.Detector` instance. ``checkpoint``: None for the original
    Levi-Hassner weights (converted into the cache by ``python -m agegender.weights
    original``; never downloaded here unless ``download=True``), or a file written by
    ``train.py``. ``precision``: ``auto`` (the path measured fastest here), ``fp32`` (exact),
    ``bf16`` or ``int8`` (an int8 ONNX graph; see
    :func:`agegender.runtime.build.choose_backend`). ``decode_min_side``: paths to
    big JPEGs are decoded reduced (boxes stay in full-size pixels); arrays are used as given.
    ``backend``: ``auto`` (onnxruntime on the CPU when the exported original nets are cached
    and nothing needs torch, else PyTorch), ``torch`` or ``onnxruntime``
    (:func:`agegender.runtime.build.resolve_backend`); ``threads``: onnxruntime's threads.
    ``labels``: the label set to report (None: the checkpoint's; ``coarse3`` etc. on the
    original weights sums bucket probabilities, see :mod:`agegender.labels`).
    """

    def __init__(
        self,
        detector: str | Detector | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        *,
        detector_options: Mapping[str, Any] | None = None,
        options: PredictOptions | None = None,
        **settings: Any,
    ) -> None:
        if checkpoint is not None:
            settings["checkpoint"] = str(checkpoint)
        name = detector if isinstance(detector, str) else "mtcnn"
        if options is None:
            options = PredictOptions.defaults(detector=name, **settings)
        else:
            options = options.replace(**settings)
            if isinstance(detector, str) and detector != options.detector_name:
                where = {"device": options.device, "backend": options.backend}
                options = options.replace(detector=detector_config(detector, **where))
        if isinstance(detector, Detector):
            if detector_options:
                raise ValueError("detector_options go with a detector name, not an instance")
        else:
            detector = build_detector(options.detector, **dict(detector_options or {}))
        #: Every setting this object runs with (conf/predict.yaml's, changed by yours).
        self.options = options
        self.detector: Detector = detector
        self.classifier: Classifier
        self.classifier, self.checkpoint_meta = build_classifier(
            options.checkpoint,
            oversample=options.oversample,
            device=options.device,
            download=options.download,
            precision=options.precision,
            backend=options.backend,
            threads=options.threads,
            labels=options.labels,
            calibration=options.calibration,
            workload="single" if _one_photo(options.input) else "folder",
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AgeGender:
        """Built from a composed ``conf/predict.yaml`` (what ``predict.py`` does)."""
        return cls(options=PredictOptions.from_config(cfg).replace(download=True))

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

    def pipeline(self, keep_images: bool = False, detector: Detector | None = None) -> Pipeline:
        """The pipeline every entry point runs (API calls, ``predict.py``, the web demo, the
        server, evaluation); ``detector``: another one for this pipeline only (evaluation
        classifies the whole image where nothing was detected)."""
        options = self.options
        return Pipeline(
            detector or self.detector,
            self.classifier,
            batch_size=options.batch_size,
            workers=options.workers,
            max_pixels=options.max_pixels,
            keep_images=keep_images,
            decode_min_side=options.decode_min_side,
            min_prob=options.min_prob,
        )

    def predict(
        self,
        image: Any,
        boxes: Sequence[Any] | None = None,
        bgr: bool = False,
    ) -> list[FaceResult]:
        """The faces of one image, best detection first.

        ``image``: a path, a PIL image (any mode), an H x W x 3 uint8 array, RGB unless
        ``bgr=True`` (OpenCV frames), or the bytes of an encoded image file (decoded in memory
        exactly as that file would be: what the prediction server receives). ``boxes``:
        classify these faces instead of detecting (x1, y1, x2, y2 in the image's pixels, or
        :class:`~agegender.faces.Face` objects with landmarks); without landmarks a face is
        cropped around its box, as for the box-only detectors. Raises
        :class:`~agegender.images.ImageLoadError` for input that cannot be used (``reason``:
        the CSV's text).
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
        results = self.pipeline().run_all(items)
        out = []
        for result in results:
            if result.error is not None:
                raise ImageLoadError(result.error, result.item.path)
            out.append(result.faces)
        return out

    def predict_folder(
        self, input: str | os.PathLike[str], output: str | os.PathLike[str], **settings: Any
    ) -> Summary:
        """What ``predict.py input=... output=...`` does with this object's detector and
        network: every image and video under ``input`` (or a camera index / stream URL) into
        ``output``/predictions.csv (or ``.jsonl``); ``settings`` change this object's
        :attr:`options` for the run (``save_probs=True``, ``video_stride=5``, ...)."""
        return predict(input, output, self.detector, self.classifier, self.options, **settings)

    def __repr__(self) -> str:
        return (
            f"AgeGender(detector={self.detector!r}, device={self.classifier.device}, "
            f"precision={self.precision}, backend={self.backend})"
        )


def _item(image: Any, index: int, bgr: bool, boxes: Sequence[Any] | None) -> InputItem:
    """An :class:`~agegender.inference.inputs.InputItem` for one API input."""
    faces = None if boxes is None else [face_of_box(box) for box in boxes]
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if bgr:
            raise ValueError("bgr=True is for arrays; files are decoded as RGB")
        return InputItem(display_path(path), path.name, file=path, faces=faces)
    name = f"images[{index}]"
    if isinstance(image, (bytes, bytearray, memoryview)):
        if bgr:
            raise ValueError("bgr=True is for arrays; encoded images are decoded as RGB")
        return InputItem(name, name, data=bytes(image), faces=faces)
    try:
        rgb = _to_rgb(image, bgr)
    except ImageLoadError as exc:
        return InputItem(name, name, error=exc.reason)
    return InputItem(name, name, image=rgb, faces=faces)


def _to_rgb(image: Any, bgr: bool) -> np.ndarray:
    """PIL image or array -> H x W x 3 uint8 RGB (contiguous), or ImageLoadError."""
    if isinstance(image, Image.Image):
        if bgr:
            raise ValueError("bgr=True is for arrays; PIL images are RGB")
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


def _one_photo(input: str | None) -> bool:
    """True when a run's input is one image file: ``precision=auto`` then weighs start-up
    against throughput (:func:`agegender.runtime.build.choose_backend`)."""
    if input is None or "://" in input:
        return False
    path = Path(input)
    return path.suffix.lower() in image_extensions() and path.is_file()


#: The largest box coordinate taken, in pixels: far beyond any decodable image, small enough
#: that a crop's scale stays a number (a box of 1e308 px would warp nothing, slowly).
MAX_BOX_COORDINATE = 1e7


def face_of_box(box: Any) -> Face:
    """A caller's box (x1, y1, x2, y2 in pixels, four numbers) or Face as a
    :class:`~agegender.faces.Face`; ValueError for anything else (the API and the prediction
    server check boxes alike: text such as ``"1234"`` or ``["1", "2", "3", "4"]`` is refused,
    never read digit by digit)."""
    if isinstance(box, Face):
        return box
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__"):
        raise ValueError(f"a box is (x1, y1, x2, y2) in pixels, got {box!r}")
    if len(box) != 4 or not all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        for v in box
    ):
        raise ValueError(f"a box is (x1, y1, x2, y2) in pixels, four numbers, got {box!r}")
    values = [float(v) for v in box]
    if not np.all(np.isfinite(values)) or max(abs(v) for v in values) > MAX_BOX_COORDINATE:
        raise ValueError(
            f"box coordinates must be finite and within {MAX_BOX_COORDINATE:g} px, got {box!r}"
        )
    x1, y1, x2, y2 = values
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty box {box!r} (x2 must exceed x1, y2 exceed y1)")
    return Face(box=(x1, y1, x2, y2), score=1.0)
