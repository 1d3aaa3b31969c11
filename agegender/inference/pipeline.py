"""Decode + detect + align in loader threads, classify faces of many images in batches.

Decoding (PIL releases the GIL) and detection run ahead of the network in a small thread
pool with a bounded window, so a folder of 100k photos or a long video never sits in
memory at once; results come back in input order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from agegender.faces import Detector, align_face
from agegender.faces.appearance import appearance
from agegender.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    load_image,
    load_image_data,
    load_image_reduced,
)
from agegender.inference.inputs import InputItem
from agegender.inference.results import FaceResult, ImageResult
from agegender.runtime.base import Classifier


def _outside(faces: list, width: float, height: float) -> str | None:
    """Why a caller's box cannot be classified (it misses the image entirely), or None."""
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = face.box
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            box = ", ".join(f"{v:g}" for v in face.box)
            return f"box {i} ({box}) lies outside the {width:g}x{height:g} image"
    return None


class Pipeline:
    """Decode, detect and align in ``workers`` threads, classify in shared batches.

    The detector is called under its own lock when it is not thread-safe
    (:attr:`agegender.faces.Detector.thread_safe`): the lock belongs to the detector, so
    every pipeline, API call and thread sharing one detector is serialised on it."""

    def __init__(
        self,
        detector: Detector,
        classifier: Classifier,
        batch_size: int = 32,
        workers: int = 2,
        prefetch: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        keep_images: bool = True,
        decode_min_side: int | None = None,
        min_prob: Mapping[str, float | None] | None = None,
    ) -> None:
        if batch_size < 1 or workers < 1:
            raise ValueError("batch_size and workers must be >= 1")
        self.detector = detector
        self.classifier = classifier
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = prefetch or max(4 * workers, 8)
        #: Smallest batch classified early when the next image is not ready yet.
        self.min_batch = max(1, batch_size // 4)
        self.max_pixels = max_pixels
        self.keep_images = keep_images
        self.decode_min_side = decode_min_side
        #: Per task: below this best-class probability a face's label is left empty.
        self.min_prob = dict(min_prob or {})

    def prepare(self, item: InputItem) -> ImageResult:
        """Runs in a loader thread; a failure becomes the result's error, never an exception."""
        if item.error is not None:
            return ImageResult(item, error=item.error)
        try:
            image, scale = self._decode(item)
        except ImageLoadError as exc:
            return ImageResult(item, error=exc.reason)
        except Exception as exc:  # noqa: BLE001 - contract: a bad file never stops the run
            return ImageResult(item, error=f"cannot read ({type(exc).__name__}: {exc})")
        item.image = item.data = None  # the result owns the pixels from here on
        if item.faces is not None:
            outside = _outside(item.faces, image.shape[1] * scale, image.shape[0] * scale)
            if outside is not None:
                return ImageResult(item, error=outside)
        try:
            if item.faces is not None:  # the caller's boxes, in full-size pixels
                faces = [face.scaled(1.0 / scale) for face in item.faces]
            else:
                faces = self.detector.detect_safely(image)
            spec = self.classifier.face_spec  # the size and framing the network was trained on
            # boxes without landmarks (the detector's, or the caller's, read as the detector's
            # would be: a box copied from predictions.csv frames its face as in that run)
            points = self.detector.box_points
            crops = [
                self.classifier.preprocess(
                    align_face(image, face, spec.face_size, spec.framing, points)
                )
                for face in faces
            ]
            # a video's faces are tracked, and the tracker tells people apart by their look
            looks = (
                [appearance(image, face, points) for face in faces]
                if item.video is not None
                else []
            )
        except Exception as exc:  # noqa: BLE001
            what = "alignment" if item.faces is not None else "detection"
            return ImageResult(item, error=f"{what} failed ({type(exc).__name__}: {exc})")
        if item.faces is not None:
            faces = list(item.faces)  # reported exactly as given
        elif scale != 1.0:
            faces = [face.scaled(scale) for face in faces]
        return ImageResult(
            item,
            detections=faces,
            image=image if self.keep_images else None,
            scale=scale,
            size=(round(image.shape[1] * scale), round(image.shape[0] * scale)),
            crops=crops,
            looks=looks,
        )

    def _decode(self, item: InputItem) -> tuple[np.ndarray, float]:
        if item.image is not None:
            return item.image, 1.0
        if item.data is not None:
            return load_image_data(item.data, self.max_pixels, self.decode_min_side)
        if self.decode_min_side:
            return load_image_reduced(item.file, self.decode_min_side, self.max_pixels)
        return load_image(item.file, self.max_pixels), 1.0

    def run(self, items: Iterable[InputItem], live: bool = False) -> Iterator[ImageResult]:
        """Results in input order, each with probabilities for all its faces.

        Faces are classified in batches of up to ``batch_size``; a batch goes early (at
        ``batch_size // 4`` faces) whenever the next image is still being decoded/detected.
        ``live``: the items come from a camera or stream, which must not be read ahead (a
        frame waiting in a queue is a stale frame): each is analysed as soon as it arrives.
        """
        if live:
            for item in items:
                yield from self.classify([self.prepare(item)])
            return
        iterator = iter(items)
        window: deque[Future[ImageResult]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="agegender-load") as pool:

            def fill() -> None:
                while len(window) < self.prefetch:
                    item = next(iterator, None)
                    if item is None:
                        return
                    window.append(pool.submit(self.prepare, item))

            fill()
            pending: list[ImageResult] = []
            n_faces = 0
            try:
                while window:
                    if n_faces >= self.min_batch and not window[0].done():
                        # The loaders are busy: classify what is ready rather than idle until
                        # a full batch arrives (the network and detection then overlap).
                        yield from self.classify(pending)
                        pending, n_faces = [], 0
                    result = window.popleft().result()
                    fill()
                    pending.append(result)
                    n_faces += len(result.crops)
                    if n_faces >= self.batch_size:
                        yield from self.classify(pending)
                        pending, n_faces = [], 0
                yield from self.classify(pending)
            finally:
                for future in window:
                    future.cancel()

    def run_all(self, items: list[InputItem]) -> list[ImageResult]:
        """Every result of a short list of items (an API call, a server request): a single
        image is prepared in the calling thread, without starting the loader pool."""
        if len(items) == 1:
            return self.classify([self.prepare(items[0])])
        return list(self.run(items)) if items else []

    def classify(self, results: list[ImageResult]) -> list[ImageResult]:
        """Classify prepared results, their faces in shared batches of up to ``batch_size``,
        and decode each face once (:meth:`FaceResult.decode`); frees their crops."""
        labels = self.classifier.labels
        crops = [crop for result in results for crop in result.crops]
        probs_all: dict[str, np.ndarray] = {}
        if crops:
            chunks: dict[str, list[np.ndarray]] = {}
            for start in range(0, len(crops), self.batch_size):
                batch = self.classifier.stack(crops[start : start + self.batch_size])
                for task, probs in self.classifier.predict(batch).items():
                    chunks.setdefault(task, []).append(probs)
            probs_all = {task: np.concatenate(parts) for task, parts in chunks.items()}
        offset = 0
        for result in results:
            result.labels = labels
            result.faces = [
                FaceResult.decode(
                    face, {t: p[offset + i] for t, p in probs_all.items()}, labels, self.min_prob
                )
                for i, face in enumerate(result.detections)
            ]
            offset += len(result.crops)
            result.crops = []
        return results
