"""The one job loop of a prediction run, for every source: inputs -> rows -> files.

Files, folders, videos, cameras and streams all run here; the source
(:mod:`agegender.inference.sources`) is the only thing that varies. Each result goes through
the video side (:class:`~agegender.inference.video.VideoOutputs`: track ids, held one frame
until confirmed), then its annotated copy, then the writer (CSV or JSON Lines) and the
summary, in input order. An input's rows are written only once its annotated copy is
written (a few inputs behind the network), so after a kill every input in the file has its
copy, and an input that is not in the file is predicted (and its copy rewritten) on resume.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from agegender.faces import Detector
from agegender.fileio import display_path
from agegender.inference.annotate import save_annotated
from agegender.inference.audience import AudienceCounter
from agegender.inference.csv_writer import CsvWriter
from agegender.inference.inputs import InputItem
from agegender.inference.jsonl_writer import JsonlWriter
from agegender.inference.options import OptionError, PredictOptions
from agegender.inference.pipeline import Pipeline
from agegender.inference.results import ImageResult
from agegender.inference.settings import check_resume, read_settings, run_settings, write_settings
from agegender.inference.shards import clear_done, csv_name
from agegender.inference.sources import ANNOTATED_DIR, Source, open_source
from agegender.inference.summary import Summary
from agegender.inference.video import VideoOutputs
from agegender.inference.writer import NullWriter, PredictionWriter
from agegender.runtime.base import Classifier

#: ``format=``: the writer class and the file suffix.
WRITERS: dict[str, tuple[type[PredictionWriter], str]] = {
    "csv": (CsvWriter, ".csv"),
    "jsonl": (JsonlWriter, ".jsonl"),
}
#: Annotated copies waiting to be written (each holds a decoded image in memory).
MAX_PENDING_ANNOTATIONS = 8


def run_job(
    source: Source,
    output: str | Path,
    detector: Detector,
    classifier: Classifier,
    options: PredictOptions,
    *,
    on_window: Callable[[Mapping[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> Summary:
    """Predict every face of ``source`` into ``output`` (see the module docstring).

    Raises only for settings the source refuses, or a file ``resume`` cannot continue
    (:class:`~agegender.inference.writer.ResumeError`); bad inputs become rows.

    For callers that show a run as it goes (the web demo's Audience tab), so that they run
    this loop instead of a copy of it: ``on_window(row)`` receives each audience.csv row as
    its window is written (``audience.window``); setting ``stop`` ends the run as Ctrl-C
    ends a stream's, from any thread (a file source reads no further input, a camera or
    stream stops grabbing), and everything seen so far is still written.
    """
    source.check()
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OptionError(f"output={display_path(output)} is a file: name a folder")
    writer_class, suffix = WRITERS[options.format]
    csv_path = output / csv_name(options.shard, options.num_shards, suffix)
    if options.privacy:  # aggregates only: no rows, no settings record (check_audience)
        output.mkdir(parents=True, exist_ok=True)
        with NullWriter() as nothing:
            return _loop(
                source, output, csv_path, nothing, detector, classifier, options, Summary(),
                on_window, stop,
            )  # fmt: skip
    settings = run_settings(source.name, options, classifier, detector)
    if options.resume:
        check_resume(csv_path, settings)
    # a resumed file keeps the record of the run that started it
    keep_record = options.resume and csv_path.exists() and read_settings(csv_path) is not None
    # Opened first: a file that cannot be resumed stops the run before any model work (and
    # before a finished shard loses its completion marker).
    writer = writer_class(
        csv_path,
        options.save_probs,
        resume=options.resume,
        labels=classifier.labels,
        expected_age=options.expected_age,
    )
    with writer:
        clear_done(csv_path)  # not complete until this run has gone through its whole block
        if not keep_record:
            write_settings(csv_path, settings)
        summary = Summary(csv=str(csv_path), repairs=list(writer.repairs))
        source.begin(csv_path, writer.done, summary)
        summary = _loop(
            source, output, csv_path, writer, detector, classifier, options, summary,
            on_window, stop,
        )  # fmt: skip
    source.end(csv_path, writer.rows, writer.columns)
    return summary


def _loop(
    source: Source,
    output: Path,
    csv_path: Path,
    writer: PredictionWriter | NullWriter,
    detector: Detector,
    classifier: Classifier,
    options: PredictOptions,
    summary: Summary,
    on_window: Callable[[Mapping[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> Summary:
    annotate = options.annotates
    pipeline = Pipeline(
        detector,
        classifier,
        batch_size=options.batch_size,
        workers=1 if source.live else options.workers,
        max_pixels=options.max_pixels,
        keep_images=annotate and not source.live or options.video.show,
        decode_min_side=options.decode_min_side,
        min_prob=options.min_prob,
    )
    bar = tqdm(
        total=source.total(summary),
        unit="img",
        desc="predict",
        disable=not options.progress or source.live,
        file=sys.stderr,
    )
    start = time.perf_counter()

    def commit(result: ImageResult, annotation: Future[Path | None] | None) -> None:
        if annotation is not None:
            _finish(annotation)
        writer.write(result)
        summary.add(result)
        bar.update(1)

    # Drawing + encoding of annotated copies runs in its own thread (OpenCV releases the
    # GIL), a few images behind, so it overlaps the network instead of adding to it.
    annotating: deque[tuple[ImageResult, Future[Path | None] | None]] = deque()
    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(1, thread_name_prefix="agegender-annotate") as annotator,
    ):
        # load_image applies its own size limit and reports it per file; PIL's warning for
        # images between its soft and hard limits would only be noise on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        videos = VideoOutputs(
            output,
            csv_path,
            classifier.labels,
            relpath=source.relpath,
            stride=options.video.stride,
            lost_seconds=options.video.lost_seconds,
            fps=source.fps,
            limit=source.limit,
            submit=annotator.submit if annotate and not source.live else None,
            resume=options.resume,
            taken=source.taken,
            keep_tracks=not options.privacy,
            blur=options.blur_faces,
            min_similarity=options.video.min_similarity,
        )
        audience = (
            AudienceCounter(
                options.audience,
                classifier.labels,
                output,
                fps=_cached(source.fps),
                stride=options.video.stride,
                lost_seconds=options.video.lost_seconds,
                live=source.live,
                on_end=videos.forget,
                privacy=options.privacy,
                on_window=on_window,
            )
            if options.audience.on
            else None
        )

        def accept(ready: list[ImageResult]) -> None:
            for result in ready:
                if result.item.replay:  # already in the file: it only fed the tracker
                    continue
                if audience is not None:
                    audience.observe(result)
                future = None
                if annotate and result.item.video is None and not source.live:
                    future = annotator.submit(
                        save_annotated, result, output / ANNOTATED_DIR, source.taken,
                        options.blur_faces,
                    )  # fmt: skip
                result.image = None if future is None else result.image
                annotating.append((result, future))
                while len(annotating) > MAX_PENDING_ANNOTATIONS:
                    commit(*annotating.popleft())

        items = _until(source.items(writer.done, videos.complete), source, stop)
        try:
            for result in pipeline.run(items, live=source.live):
                accept(videos.observe(result))
                source.after(result, videos)
                del result  # the queues hold the only references (memory stays flat)
        except KeyboardInterrupt:
            source.interrupt()  # files: re-raised; a stream ends here, its rows kept
            print("agegender: interrupted; files written", file=sys.stderr)
        accept(videos.close())
        accept(source.finish(summary))
        while annotating:
            commit(*annotating.popleft())
        for future in videos.futures:
            _finish(future)
    summary.videos, summary.tracks = videos.videos, videos.tracks
    if audience is not None:
        summary.audience = audience.close()
        if options.privacy:  # ended tracks were dropped from the book as they ended
            summary.tracks = summary.audience["gates"]["tracks"]["seen"]
    summary.annotated_videos += [str(p) for p in videos.annotated if p.is_file()]
    summary.seconds = time.perf_counter() - start
    bar.close()
    return summary


def _until(
    items: Iterator[InputItem], source: Source, stop: threading.Event | None
) -> Iterator[InputItem]:
    """``items`` until ``stop`` is set: a file source's inputs end there; a camera or stream
    is interrupted (as by Ctrl-C: its grabber stops) and its generator ends by itself, so its
    closing row and figures are still written."""
    for item in items:
        if stop is not None and stop.is_set():
            if not source.live:
                close = getattr(items, "close", None)
                if close is not None:  # a video's reader is released now, not by the GC
                    close()
                return
            source.interrupt()
            stop = None  # once: the stream's items end after it
        yield item


def _cached(fps: Callable[[str], float]) -> Callable[[str], float]:
    """``source.fps`` asked once per video (a file source opens the video to read it)."""
    known: dict[str, float] = {}

    def rate(video: str) -> float:
        if video not in known:
            known[video] = fps(video)
        return known[video]

    return rate


def _finish(future: Future[Path | None]) -> None:
    try:
        future.result()
    except OSError as exc:  # a full disk must not lose the rows: report and go on
        print(f"agegender: annotated copy not written: {exc}", file=sys.stderr)


def predict(
    input: str | Path,
    output: str | Path,
    detector: Detector,
    classifier: Classifier,
    options: PredictOptions | None = None,
    *,
    on_window: Callable[[Mapping[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    **settings: Any,
) -> Summary:
    """:func:`run_job` on the source ``input`` names (an image, folder, video, camera or
    stream) with ``options`` (default: conf/predict.yaml's) changed by ``settings``
    (:meth:`PredictOptions.replace`: ``save_probs=True``, ``video_stride=5`` ...);
    ``on_window`` and ``stop``: see :func:`run_job`."""
    options = (options or PredictOptions.defaults()).replace(
        input=str(input), output=str(output), **settings
    )
    source = open_source(input, Path(output), options)
    return run_job(source, output, detector, classifier, options, on_window=on_window, stop=stop)
