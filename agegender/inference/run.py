"""A whole prediction run: inputs -> predictions.csv (+ annotated copies) -> summary."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from agegender.faces import Detector, build_detector
from agegender.images import DEFAULT_MAX_PIXELS
from agegender.inference.annotate import save_annotated
from agegender.inference.classifier import FaceClassifier
from agegender.inference.csv_writer import PredictionWriter
from agegender.inference.inputs import is_video, iter_inputs, scan_inputs
from agegender.inference.pipeline import Pipeline
from agegender.inference.summary import Summary

CSV_NAME = "predictions.csv"
ANNOTATED_DIR = "annotated"
#: Folder entries that are not inputs (folder rule in agegender.inference.inputs), one per line.
SKIPPED_NAME = "skipped.txt"
#: Annotated copies waiting to be written (each holds a decoded image in memory).
MAX_PENDING_ANNOTATIONS = 8


def predict(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    detector: Detector,
    classifier: FaceClassifier,
    batch_size: int = 32,
    workers: int = 2,
    save_probs: bool = False,
    annotate: bool = True,
    video_stride: int = 10,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    decode_min_side: int | None = None,
) -> Summary:
    """Predict every face of ``input`` (image, folder or video) into ``output``/predictions.csv.

    Raises only for a missing ``input`` (:class:`InputNotFoundError`); bad files become rows.
    ``decode_min_side``: decode big JPEGs reduced (see :func:`agegender.images.load_image_reduced`);
    boxes stay in full-size pixels, annotated copies are written at the decoded size.
    """
    output = Path(output)
    files, skipped = scan_inputs(input)
    if not files:
        print(f"agegender: no image or video files under {input}", file=sys.stderr)
    pipeline = Pipeline(
        detector,
        classifier,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        keep_images=annotate,
        decode_min_side=decode_min_side,
    )
    summary = Summary(skipped=[str(p) for p in skipped])
    if skipped:  # every folder entry is accounted for in the output, not only on stderr
        output.mkdir(parents=True, exist_ok=True)
        (output / SKIPPED_NAME).write_text("".join(f"{p}\n" for p in summary.skipped))
    has_video = any(is_video(f) for f in files)
    bar = tqdm(
        total=None if has_video else len(files),
        unit="img",
        desc="predict",
        disable=not progress,
        file=sys.stderr,
    )
    start = time.perf_counter()
    # Drawing + JPEG encoding of annotated copies runs in its own thread (OpenCV releases the
    # GIL), a few images behind, so it overlaps the network instead of adding to it.
    annotating: deque[Future[Path | None]] = deque()
    with (
        warnings.catch_warnings(),
        PredictionWriter(output / CSV_NAME, save_probs) as writer,
        ThreadPoolExecutor(1, thread_name_prefix="agegender-annotate") as annotator,
    ):
        # load_image applies its own size limit and reports it per file; PIL's warning for
        # images between its soft and hard limits would only be noise on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for result in pipeline.run(iter_inputs(input, files, video_stride)):
            writer.write(result)
            if annotate:
                annotating.append(annotator.submit(save_annotated, result, output / ANNOTATED_DIR))
                while len(annotating) > MAX_PENDING_ANNOTATIONS:
                    _finish(annotating.popleft())
            summary.add(result)
            bar.update(1)
        while annotating:
            _finish(annotating.popleft())
    summary.seconds = time.perf_counter() - start
    bar.close()
    return summary


def _finish(future: Future[Path | None]) -> None:
    try:
        future.result()
    except OSError as exc:  # a full disk must not lose the CSV rows: report and go on
        print(f"agegender: annotated copy not written: {exc}", file=sys.stderr)


def build_classifier(
    checkpoint: str | os.PathLike[str] | None = None,
    oversample: bool = False,
    device: str = "cpu",
    download: bool = True,
    precision: str = "fp32",
) -> tuple[FaceClassifier, dict[str, Any]]:
    """The classifier for ``checkpoint`` (ours or train.py's), default the original weights.

    Raises :class:`agegender.weights.WeightsNotFoundError` offline with nothing cached, and
    :class:`agegender.checkpoints.CheckpointError` for a file that is not a usable checkpoint.
    """
    from agegender.checkpoints import load_model
    from agegender.weights import ensure_original_weights

    path = Path(checkpoint) if checkpoint else ensure_original_weights(download=download)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    model, meta = load_model(path, map_location=device)
    classifier = FaceClassifier(model, oversample=oversample, device=device, precision=precision)
    return classifier, meta


def configure_torch_threads(threads: int | None, workers: int) -> int:
    """Set PyTorch's (process-wide) intra-op threads; ``None`` = CPU cores / loader threads.

    Detection runs in ``workers`` threads at once and the network in the main thread, so
    each stream gets its share of the cores instead of all of them fighting over every core
    (measured here on 2 cores: ~1.3x images/s versus torch's default of one thread per core).
    """
    import torch

    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(int(threads))
    return int(threads)


def predict_from_config(cfg: Mapping[str, Any]) -> Summary:
    """What ``predict.py`` runs: builds detector and classifier from the composed config."""
    scan_inputs(cfg["input"])  # a missing input fails now, before any model is loaded
    configure_torch_threads(cfg.get("threads"), int(cfg["workers"]))
    detector_cfg = dict(cfg["detector"])
    detector = build_detector(detector_cfg.pop("name"), **detector_cfg)
    classifier, _ = build_classifier(
        cfg.get("checkpoint"),
        oversample=bool(cfg.get("oversample", False)),
        device=cfg["device"],
        precision=str(cfg.get("precision", "fp32")),
    )
    output = Path(cfg["output"])
    summary = predict(
        cfg["input"],
        output,
        detector,
        classifier,
        batch_size=int(cfg["batch_size"]),
        workers=int(cfg["workers"]),
        save_probs=bool(cfg["save_probs"]),
        annotate=bool(cfg["annotate"]),
        video_stride=int(cfg["video"]["stride"]),
        max_pixels=cfg.get("max_pixels"),
        progress=bool(cfg.get("progress", True)),
        decode_min_side=cfg.get("decode_min_side"),
    )
    print(f"predict: {summary.line()} -> {output / CSV_NAME} (precision {classifier.precision})")
    for example in summary.error_examples:
        print(f"  error: {example}", file=sys.stderr)
    for path in summary.skipped[:5]:
        print(f"  skipped (not an image/video file, or hidden): {path}", file=sys.stderr)
    if summary.skipped:
        print(f"  all {len(summary.skipped)} skipped: {output / SKIPPED_NAME}", file=sys.stderr)
    return summary
