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
from typing import TYPE_CHECKING, Any

from PIL import Image
from tqdm import tqdm

from agegender.faces import Detector
from agegender.fileio import atomic_write, remove_temporaries
from agegender.images import DEFAULT_MAX_PIXELS
from agegender.inference.annotate import save_annotated
from agegender.inference.csv_writer import WRITERS, PredictionWriter, ResumeError
from agegender.inference.inputs import frame_limit, is_video, iter_inputs, scan_inputs
from agegender.inference.pipeline import ImageResult, Pipeline
from agegender.inference.shards import (
    CSV_NAME,  # noqa: F401 - run.CSV_NAME predates shards.py; kept importable
    ShardError,
    check_shard,
    clear_done,
    csv_name,
    shard_slice,
    write_done,
)
from agegender.inference.summary import Summary
from agegender.inference.video import VideoOptions, VideoOutputs, tracks_path, video_line

if TYPE_CHECKING:
    from agegender.inference.classifier import FaceClassifier
    from agegender.inference.onnx_classifier import OnnxFaceClassifier

#: ``backend=``: where the network (and MTCNN) run; ``auto`` resolves per run
#: (:func:`resolve_backend`).
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")

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
    video: VideoOptions | None = None,
    format: str = "csv",
    expected_age: bool = False,
) -> Summary:
    """Predict every face of ``input`` (image, folder or video) into ``output``/predictions.csv.

    ``format="jsonl"``: ``predictions.jsonl`` instead, one JSON object per face
    (:class:`agegender.inference.csv_writer.JsonlWriter`), with the same resume and shards.
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

    Videos (:mod:`agegender.inference.video`): the faces of the analysed frames are tracked
    (the ``track`` column, ``tracks.csv``) and the annotated copy is ``annotated/<video>.mp4``
    with every frame, written once the video's last frame is in; ``video`` holds the other
    ``video.*`` settings.
    """
    check_shard(shard, num_shards)
    try:
        writer_class, suffix = WRITERS[format]
    except KeyError:
        raise ValueError(f"format must be one of {sorted(WRITERS)}, got {format!r}") from None
    output = Path(output)
    files, skipped = scan_inputs(input)
    if not files:
        print(f"agegender: no image or video files under {input}", file=sys.stderr)
    files = shard_slice(files, shard, num_shards)
    csv_path = output / csv_name(shard, num_shards, suffix)
    # Opened first: a CSV that cannot be resumed stops the run before any model work (and
    # before a finished shard loses its completion marker).
    writer = writer_class(
        csv_path, save_probs, resume=resume, labels=classifier.labels, expected_age=expected_age
    )
    with writer:
        summary = _predict_into(
            writer, input, output, files, skipped, detector, classifier, batch_size, workers,
            annotate, video_stride, max_pixels, progress, decode_min_side, resume,
            video or VideoOptions(),
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
    video: VideoOptions,
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

    def commit(
        result: ImageResult,
        annotation: Future[Path | None] | None,
        tracks: list[int | None] | None = None,
    ) -> None:
        if annotation is not None:
            _finish(annotation)
        writer.write(result, tracks)
        summary.add(result)
        bar.update(1)

    # Drawing + JPEG encoding of annotated copies runs in its own thread (OpenCV releases the
    # GIL), a few images behind, so it overlaps the network instead of adding to it.
    annotating: deque[tuple[ImageResult, Future[Path | None] | None, list[int | None] | None]]
    annotating = deque()
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(1, thread_name_prefix="agegender-annotate") as annotator,
    ):
        # load_image applies its own size limit and reports it per file; PIL's warning for
        # images between its soft and hard limits would only be noise on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # --- video hook (agegender.inference.video): tracks, annotated/<video>.mp4, tracks.csv
        base = Path(input) if Path(input).is_dir() else Path(input).parent
        videos = VideoOutputs(
            output,
            csv_path,
            relpath=lambda file: file.relative_to(base).as_posix(),
            stride=video_stride,
            lost_seconds=video.lost_seconds,
            limit=lambda capture: frame_limit(capture, video.max_frames, video.max_seconds),
            submit=annotator.submit if annotate else None,
            resume=resume,
        )
        items = iter_inputs(
            input, files, video_stride, done, video.max_frames, video.max_seconds
        )  # fmt: skip
        for result in pipeline.run(items):
            tracks = videos.observe(result)  # None unless a video frame
            if not annotate:
                commit(result, None, tracks)
                continue
            if tracks is None:
                # the result carries its classifier's class names (Pipeline.classify)
                future = annotator.submit(save_annotated, result, output / ANNOTATED_DIR)
            else:  # drawn into the video's annotated copy when the video is done
                future, result.image = None, None
            annotating.append((result, future, tracks))
            del result, future  # the queue holds the only references (memory stays flat)
            while len(annotating) > MAX_PENDING_ANNOTATIONS:
                commit(*annotating.popleft())
        while annotating:
            commit(*annotating.popleft())
        for future in videos.close():
            _finish(future)
    summary.videos, summary.tracks = videos.videos, videos.tracks
    summary.annotated_videos = [str(p) for p in videos.annotated if p.is_file()]
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


def resolve_backend(
    backend: str = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "auto",
    oversample: bool = False,
) -> str:
    """``torch`` or ``onnxruntime`` for these settings.

    ``auto`` runs onnxruntime where it gives the same probabilities faster and without
    importing torch: on the CPU, in fp32, single-crop, with the original weights' exported
    graph cached (the install command writes it) or a checkpoint that is an ``.onnx``
    export. Everything else (a GPU, bf16 where the CPU has AMX, over-sampling, train.py
    checkpoints) runs PyTorch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    onnx_file = checkpoint is not None and str(checkpoint).lower().endswith(".onnx")
    if backend == "torch":
        if onnx_file:
            raise ValueError(f"checkpoint {checkpoint} is an ONNX export: use backend=onnxruntime")
        return "torch"
    if backend == "onnxruntime" or onnx_file:
        problems = [
            what
            for what, bad in (
                (f"device={device}", str(device) != "cpu"),
                ("oversample=true", oversample),
                ("precision=bf16", precision == "bf16"),
                (f"checkpoint={checkpoint} (export it: python -m agegender.export)",
                 checkpoint is not None and not onnx_file),
            )
            if bad
        ]  # fmt: skip
        if problems:
            raise ValueError(
                f"backend=onnxruntime runs exported fp32 single-crop models on the CPU; "
                f"not with {', '.join(problems)} (use backend=torch)"
            )
        return "onnxruntime"
    if str(device) != "cpu" or oversample or precision == "bf16":
        return "torch"
    if precision == "auto":
        from agegender.hardware import cpu_has_fast_bf16

        if cpu_has_fast_bf16():
            return "torch"  # bf16 on AMX: ~2.6x faster than fp32 (the README's figures)
    if checkpoint is None:
        from agegender.weights import original_onnx_path

        return "onnxruntime" if original_onnx_path().is_file() else "torch"
    return "torch"


def build_classifier(
    checkpoint: str | os.PathLike[str] | None = None,
    oversample: bool = False,
    device: str = "cpu",
    download: bool = True,
    precision: str = "fp32",
    backend: str = "torch",
    threads: int | None = None,
    labels: Any = None,
) -> tuple[FaceClassifier | OnnxFaceClassifier, dict[str, Any]]:
    """The classifier for ``checkpoint`` (ours or train.py's, or an ONNX export), default the
    original weights, on ``backend`` (:func:`resolve_backend`).

    ``labels``: the label set to report (None: the checkpoint's own; another set only for
    adience8 networks, by summing bucket probabilities, see :class:`FaceClassifier`).

    Raises :class:`agegender.weights.WeightsNotFoundError` offline with nothing cached, and
    :class:`agegender.checkpoints.CheckpointError` for a file that is not a usable checkpoint.
    """
    backend = resolve_backend(backend, checkpoint, device, precision, oversample)
    if backend == "onnxruntime":
        from agegender.inference.onnx_classifier import OnnxFaceClassifier
        from agegender.weights import original_onnx_path

        path = Path(checkpoint) if checkpoint else original_onnx_path()
        if not path.is_file():
            hint = (
                ""
                if checkpoint
                else (": the install command `python -m agegender.weights original` writes it")
            )
            raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist{hint}")
        classifier = OnnxFaceClassifier(path, threads=threads, labels=labels)
        return classifier, dict(classifier.metadata)

    from agegender.checkpoints import label_set_of, load_model
    from agegender.inference.classifier import FaceClassifier
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
    from agegender.inference.streams import is_stream

    video_cfg = dict(cfg.get("video") or {})
    stream = is_stream(cfg["input"])  # a camera index or URL (agegender.inference.streams)
    if stream and int(cfg.get("num_shards", 1)) > 1:
        raise ShardError("a camera or stream cannot be sharded (num_shards must be 1)")
    if stream and bool(cfg.get("resume", False)):
        raise ResumeError(
            "a camera or stream cannot be resumed (its frames are gone): run without "
            "resume=true, into another output to keep this one's files"
        )
    if not stream:
        scan_inputs(cfg["input"])  # a missing input fails now, before any model is loaded
    check_shard(int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
    from agegender.api import AgeGender

    # The Python API's object: one pipeline. `threads` reaches onnxruntime there (null: one
    # thread per core, which measured faster end to end on 2 cores than torch's
    # cores // workers: 1.59-1.66x the seed pipeline vs 1.46-1.50x, bench_predict.py's
    # folder, 3 rounds); PyTorch's process-wide count is set here.
    agegender = AgeGender.from_config(cfg)
    classifier = agegender.classifier
    if classifier.backend == "torch":
        configure_torch_threads(cfg.get("threads"), int(cfg["workers"]))
    output = Path(cfg["output"])
    video = VideoOptions(
        lost_seconds=float(video_cfg.get("lost_seconds", 1.0)),
        max_frames=video_cfg.get("max_frames"),
        max_seconds=video_cfg.get("max_seconds"),
    )
    if stream:
        from agegender.inference.streams import predict_stream

        summary = predict_stream(
            str(cfg["input"]),
            output,
            agegender.detector,
            classifier,
            save_probs=bool(cfg["save_probs"]),
            annotate=bool(cfg["annotate"]),
            stride=int(video_cfg.get("stride", 1)),
            options=video,
            show=bool(video_cfg.get("show", False)),
            open_seconds=float(video_cfg.get("open_seconds", 10.0)),
            stall_seconds=float(video_cfg.get("stall_seconds", 10.0)),
            progress=bool(cfg.get("progress", True)),
            format=str(cfg.get("format", "csv")),
        )
    else:
        summary = agegender.predict_folder(
            cfg["input"],
            output,
            save_probs=bool(cfg["save_probs"]),
            annotate=bool(cfg["annotate"]),
            video_stride=int(video_cfg["stride"]),
            max_pixels=cfg.get("max_pixels"),
            progress=bool(cfg.get("progress", True)),
            decode_min_side=cfg.get("decode_min_side"),
            resume=bool(cfg.get("resume", False)),
            shard=int(cfg.get("shard", 0)),
            num_shards=int(cfg.get("num_shards", 1)),
            format=str(cfg.get("format", "csv")),
            video=video,
            expected_age=bool(cfg.get("expected_age", False)),
        )
    for repair in summary.repairs:
        print(f"  resume: {repair}", file=sys.stderr)
    print(
        f"predict: {summary.line()} -> {summary.csv} "
        f"(precision {classifier.precision}, {classifier.backend})"
    )
    if summary.videos:  # videos and streams (agegender.inference.video, .streams)
        print(f"  {video_line(summary)} -> {tracks_path(Path(summary.csv))}")
    for example in summary.error_examples:
        print(f"  error: {example}", file=sys.stderr)
    for path in summary.skipped[:5]:
        print(f"  skipped (not an image/video file, or hidden): {path}", file=sys.stderr)
    if summary.skipped:
        print(f"  all {len(summary.skipped)} skipped: {output / SKIPPED_NAME}", file=sys.stderr)
    return summary
