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
from agegender.fileio import atomic_write, remove_temporaries
from agegender.images import DEFAULT_MAX_PIXELS
from agegender.inference.annotate import save_annotated
from agegender.inference.classifier import FaceClassifier
from agegender.inference.csv_writer import PredictionWriter
from agegender.inference.inputs import is_video, iter_inputs, scan_inputs
from agegender.inference.pipeline import ImageResult, Pipeline
from agegender.inference.shards import (
    CSV_NAME,  # noqa: F401 - run.CSV_NAME predates shards.py; kept importable
    check_shard,
    clear_done,
    csv_name,
    shard_slice,
    write_done,
)
from agegender.inference.summary import Summary

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
    resume: bool = False,
    shard: int = 0,
    num_shards: int = 1,
    expected_age: bool = False,
) -> Summary:
    """Predict every face of ``input`` (image, folder or video) into ``output``/predictions.csv.

    Ages are written in the classifier's label set (``classifier.labels``); ``expected_age``
    adds ``age_years_estimate`` (probability-weighted class midpoints, an estimate).

    Raises only for a missing ``input`` (:class:`InputNotFoundError`) or a CSV that
    ``resume`` cannot continue (:class:`ResumeError`); bad files become rows.
    ``decode_min_side``: decode big JPEGs reduced (see :func:`agegender.images.load_image_reduced`);
    boxes stay in full-size pixels, annotated copies are written at the decoded size.

    ``resume``: keep the rows already in the CSV and predict only the inputs (video frames)
    it lacks; see :class:`PredictionWriter` for torn tails and column checks.
    ``shard``/``num_shards``: predict only block ``shard`` of the sorted inputs into
    ``predictions.shard-<shard>-of-<num_shards>.csv`` (rule: :mod:`agegender.inference.shards`).

    An input's rows are written only once its annotated copy is written (a few inputs behind
    the network), so after a kill every input in the CSV has its annotated copy, and an input
    that is not in the CSV is predicted (and its copy rewritten) on resume.
    """
    check_shard(shard, num_shards)
    output = Path(output)
    files, skipped = scan_inputs(input)
    if not files:
        print(f"agegender: no image or video files under {input}", file=sys.stderr)
    files = shard_slice(files, shard, num_shards)
    csv_path = output / csv_name(shard, num_shards)
    # Opened first: a CSV that cannot be resumed stops the run before any model work (and
    # before a finished shard loses its completion marker).
    writer = PredictionWriter(
        csv_path, save_probs, resume=resume, labels=classifier.labels, expected_age=expected_age
    )
    with writer:
        summary = _predict_into(
            writer, input, output, files, skipped, detector, classifier, batch_size, workers,
            annotate, video_stride, max_pixels, progress, decode_min_side, resume,
        )  # fmt: skip
    if num_shards > 1:
        write_done(
            csv_path,
            {
                "shard": shard,
                "num_shards": num_shards,
                "input": str(input),
                "files": len(files),
                "rows": writer.rows,
                "columns": list(writer.columns),
            },
        )
    return summary


def _predict_into(
    writer: PredictionWriter,
    input: str | os.PathLike[str],
    output: Path,
    files: list[Path],
    skipped: list[Path],
    detector: Detector,
    classifier: FaceClassifier,
    batch_size: int,
    workers: int,
    annotate: bool,
    video_stride: int,
    max_pixels: int | None,
    progress: bool,
    decode_min_side: int | None,
    resume: bool,
) -> Summary:
    """The body of :func:`predict` once its CSV is open (the caller closes it)."""
    csv_path = writer.path
    clear_done(csv_path)  # not complete until this run has gone through its whole block
    done = writer.done
    summary = Summary(skipped=[str(p) for p in skipped], csv=str(csv_path))
    summary.already_done, foreign = _count_done(files, done)
    summary.repairs = writer.repairs
    if foreign:
        print(
            f"agegender: {foreign} paths in {csv_path} are not inputs of this run "
            "(another input= or shard?); their rows are kept",
            file=sys.stderr,
        )
    # Every folder entry is accounted for in the output, not only on stderr. Atomic: the
    # shards of one folder all write the same list into the same output.
    skipped_file = output / SKIPPED_NAME
    if skipped:
        text = "".join(f"{p}\n" for p in summary.skipped).encode()
        atomic_write(skipped_file, lambda fh: fh.write(text))
    else:  # a list left by an earlier run in this output would no longer be true
        skipped_file.unlink(missing_ok=True)
    if resume and annotate:
        remove_temporaries(output / ANNOTATED_DIR)
    pipeline = Pipeline(
        detector,
        classifier,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        keep_images=annotate,
        decode_min_side=decode_min_side,
    )
    has_video = any(is_video(f) for f in files)
    bar = tqdm(
        total=None if has_video else len(files) - summary.already_done,
        unit="img",
        desc="predict",
        disable=not progress,
        file=sys.stderr,
    )
    start = time.perf_counter()

    def commit(result: ImageResult, annotation: Future[Path | None] | None) -> None:
        if annotation is not None:
            _finish(annotation)
        writer.write(result)
        summary.add(result)
        bar.update(1)

    # Drawing + JPEG encoding of annotated copies runs in its own thread (OpenCV releases the
    # GIL), a few images behind, so it overlaps the network instead of adding to it.
    annotating: deque[tuple[ImageResult, Future[Path | None]]] = deque()
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(1, thread_name_prefix="agegender-annotate") as annotator,
    ):
        # load_image applies its own size limit and reports it per file; PIL's warning for
        # images between its soft and hard limits would only be noise on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for result in pipeline.run(iter_inputs(input, files, video_stride, done)):
            if not annotate:
                commit(result, None)
                continue
            future = annotator.submit(
                save_annotated, result, output / ANNOTATED_DIR, classifier.labels.class_names
            )
            annotating.append((result, future))
            del result, future  # the queue holds the only references (memory stays flat)
            while len(annotating) > MAX_PENDING_ANNOTATIONS:
                commit(*annotating.popleft())
        while annotating:
            commit(*annotating.popleft())
    summary.seconds = time.perf_counter() - start
    bar.close()
    return summary


def _count_done(files: list[Path], done: set[str]) -> tuple[int, int]:
    """(already done inputs of this run, CSV paths that are not inputs of this run)."""
    if not done:
        return 0, 0
    mine = 0
    videos = set()
    for file in files:
        if str(file) in done:
            mine += 1
        elif is_video(file):
            videos.add(str(file))
    if videos:
        mine += sum(1 for p in done if "#frame=" in p and p.rpartition("#frame=")[0] in videos)
    return mine, len(done) - mine


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
    labels: Any = None,
) -> tuple[FaceClassifier, dict[str, Any]]:
    """The classifier for ``checkpoint`` (ours or train.py's), default the original weights.

    ``labels``: the label set to report (None: the checkpoint's own; another set only for
    adience8 networks, by summing bucket probabilities, see :class:`FaceClassifier`).

    Raises :class:`agegender.weights.WeightsNotFoundError` offline with nothing cached, and
    :class:`agegender.checkpoints.CheckpointError` for a file that is not a usable checkpoint.
    """
    from agegender.checkpoints import label_set_of, load_model
    from agegender.labels import load_label_set
    from agegender.weights import ensure_original_weights

    path = Path(checkpoint) if checkpoint else ensure_original_weights(download=download)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    model, meta = load_model(path, map_location=device)
    classifier = FaceClassifier(
        model,
        oversample=oversample,
        device=device,
        precision=precision,
        model_labels=label_set_of(meta),
        labels=None if labels is None else load_label_set(labels),
    )
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
    check_shard(int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
    configure_torch_threads(cfg.get("threads"), int(cfg["workers"]))
    detector_cfg = dict(cfg["detector"])
    detector = build_detector(detector_cfg.pop("name"), **detector_cfg)
    classifier, _ = build_classifier(
        cfg.get("checkpoint"),
        oversample=bool(cfg.get("oversample", False)),
        device=cfg["device"],
        precision=str(cfg.get("precision", "fp32")),
        labels=cfg.get("labels"),
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
        resume=bool(cfg.get("resume", False)),
        shard=int(cfg.get("shard", 0)),
        num_shards=int(cfg.get("num_shards", 1)),
        expected_age=bool(cfg.get("expected_age", False)),
    )
    for repair in summary.repairs:
        print(f"  resume: {repair}", file=sys.stderr)
    print(f"predict: {summary.line()} -> {summary.csv} (precision {classifier.precision})")
    for example in summary.error_examples:
        print(f"  error: {example}", file=sys.stderr)
    for path in summary.skipped[:5]:
        print(f"  skipped (not an image/video file, or hidden): {path}", file=sys.stderr)
    if summary.skipped:
        print(f"  all {len(summary.skipped)} skipped: {output / SKIPPED_NAME}", file=sys.stderr)
    return summary
