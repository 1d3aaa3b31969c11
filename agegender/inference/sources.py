"""The sources a prediction run reads: files (an image, a folder, videos) and live streams.

The job loop (:mod:`agegender.inference.job`) is the same for every source; what varies is
here: which items there are, whether the pipeline may read ahead (files) or must take each
live frame as it comes (cameras, streams), which settings apply (a stream cannot be resumed
or sharded: refused with a message naming the setting), and what a source adds to the
output folder (``skipped.txt``, the shard's completion marker; a stream's closing row).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import cv2

from agegender.fileio import atomic_write, display_path, remove_temporaries
from agegender.inference.audience import check_audience
from agegender.inference.inputs import InputItem, is_video, iter_inputs, scan_inputs
from agegender.inference.options import OptionError, PredictOptions
from agegender.inference.results import ImageResult
from agegender.inference.shards import check_shard, shard_slice, write_done
from agegender.inference.streams import StreamSource, is_stream
from agegender.inference.summary import Summary
from agegender.inference.video import VideoOutputs
from agegender.inference.videoio import frame_limit, video_fps

ANNOTATED_DIR = "annotated"
#: Folder entries that are not inputs (folder rule in agegender.inference.inputs), one per line.
SKIPPED_NAME = "skipped.txt"


class Source(Protocol):
    """What the job loop needs of a source."""

    live: bool
    resumable: bool
    shardable: bool
    #: The ``input=`` this source reads, as the user wrote it.
    name: str | Path
    #: Input paths relative to the input (annotated copies never take one's name).
    taken: frozenset[str]

    def check(self) -> None: ...
    def total(self, summary: Summary) -> int | None: ...
    def begin(self, csv_path: Path, done: set[str], summary: Summary) -> None: ...
    def items(self, done: set[str], complete: frozenset[str]) -> Iterator[InputItem]: ...
    def fps(self, video: str) -> float: ...
    def limit(self, video: str) -> int | None: ...
    def relpath(self, file: Path) -> str: ...
    def after(self, result: ImageResult, videos: VideoOutputs) -> None: ...
    def interrupt(self) -> None: ...
    def finish(self, summary: Summary) -> list[ImageResult]: ...
    def end(self, csv_path: Path, rows: int, columns: tuple[str, ...]) -> None: ...


class FileSource:
    """An image, a video, or every image and video under a folder (sorted), optionally one
    shard of them; resumable."""

    live = False
    resumable = True
    shardable = True

    def __init__(self, input: str | Path, output: Path, options: PredictOptions) -> None:
        self.input = Path(input)
        self.name = input
        self.output = output
        self.options = options
        check_shard(options.shard, options.num_shards)
        # a missing input fails here; the run's own output is never read back as input
        files, self.skipped = scan_inputs(self.input, exclude=output)
        if not files:
            print(f"agegender: no image or video files under {input}", file=sys.stderr)
        self.files = shard_slice(files, options.shard, options.num_shards)
        self.base = self.input if self.input.is_dir() else self.input.parent
        # every shard's inputs: shards write their copies into the same folder
        self.taken = frozenset(self.relpath(file) for file in files)

    def check(self) -> None:
        """Refuse the settings of live sources, and audience settings without a video."""
        videos = [f for f in self.files if is_video(f)]
        check_audience(self.options, live=False, has_video=bool(videos) or not self.files)
        if self.options.privacy and len(videos) < len(self.files):
            photo = next(f for f in self.files if not is_video(f))
            raise OptionError(
                f"privacy=true writes only audience aggregates, which photos have none of: "
                f"input={self.input} holds {len(self.files) - len(videos)} non-video "
                f"file(s) ({display_path(photo)} ...); give a video or a folder of videos"
            )
        if self.options.video.show:
            raise OptionError(
                f"video.show=true opens a live window for a camera or stream; input={self.input} "
                "is a file or folder (its annotated copies go to the output's annotated/)"
            )

    def total(self, summary: Summary) -> int | None:
        """Inputs left for the progress bar (None with videos: frames are not known)."""
        if any(is_video(f) for f in self.files):
            return None
        return len(self.files) - summary.already_done

    def begin(self, csv_path: Path, done: set[str], summary: Summary) -> None:
        """Account for every folder entry in the output, and for rows already done."""
        summary.skipped = [display_path(p) for p in self.skipped]
        summary.already_done, foreign = _count_done(self.files, done)
        if foreign:
            print(
                f"agegender: {foreign} paths in {csv_path} are not inputs of this run "
                "(another input= or shard?); their rows are kept",
                file=sys.stderr,
            )
        # Atomic: the shards of one folder all write the same list into the same output.
        skipped_file = self.output / SKIPPED_NAME
        if self.skipped:
            text = "".join(f"{p}\n" for p in summary.skipped).encode()
            atomic_write(skipped_file, lambda fh: fh.write(text))
        else:  # a list left by an earlier run in this output would no longer be true
            skipped_file.unlink(missing_ok=True)
        if self.options.resume and self.options.annotates:
            remove_temporaries(self.output / ANNOTATED_DIR)

    def items(self, done: set[str], complete: frozenset[str]) -> Iterator[InputItem]:
        video = self.options.video
        return iter_inputs(
            self.input, self.files, video.stride, done, video.max_frames, video.max_seconds,
            complete,
        )  # fmt: skip

    def fps(self, video: str) -> float:
        capture = cv2.VideoCapture(video)
        try:
            return video_fps(capture)
        finally:
            capture.release()

    def limit(self, video: str) -> int | None:
        capture = cv2.VideoCapture(video)
        try:
            video = self.options.video
            return frame_limit(capture, video.max_frames, video.max_seconds)
        finally:
            capture.release()

    def relpath(self, file: Path) -> str:
        return file.relative_to(self.base).as_posix()

    def after(self, result: ImageResult, videos: VideoOutputs) -> None:
        """Nothing live to update."""

    def interrupt(self) -> None:
        """Ctrl-C on files stops the run (resume=true continues it)."""
        raise KeyboardInterrupt

    def finish(self, summary: Summary) -> list[ImageResult]:
        return []

    def end(self, csv_path: Path, rows: int, columns: tuple[str, ...]) -> None:
        """A shard that went through its whole block gets its completion marker."""
        options = self.options
        if options.num_shards > 1:
            write_done(
                csv_path,
                {
                    "shard": options.shard,
                    "num_shards": options.num_shards,
                    "input": display_path(self.input),
                    "files": len(self.files),
                    "rows": rows,
                    "columns": list(columns),
                },
            )


def open_source(input: str | Path, output: Path, options: PredictOptions) -> Source:
    """The source ``input`` names: a camera index or stream URL, else a file or folder."""
    if is_stream(input):
        return StreamSource(str(input), output, options)
    return FileSource(input, output, options)


def _count_done(files: list[Path], done: set[str]) -> tuple[int, int]:
    """(already done inputs of this run, CSV paths that are not inputs of this run)."""
    if not done:
        return 0, 0
    mine = 0
    videos = set()
    for file in files:
        name = display_path(file)
        if name in done:
            mine += 1
        elif is_video(file):
            videos.add(name)
    if videos:
        mine += sum(1 for p in done if "#frame=" in p and p.rpartition("#frame=")[0] in videos)
    return mine, len(done) - mine
