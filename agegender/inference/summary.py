"""The closing line of a prediction run (and the numbers behind it, for tests and scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agegender.inference.results import ImageResult


@dataclass
class Summary:
    """Counters only: nothing here grows with the number of inputs (at most 5 error
    examples), so a run over millions of files keeps a flat memory profile."""

    inputs: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)
    #: Folder entries that are not inputs by the folder rule (agegender.inference.inputs).
    skipped: list[str] = field(default_factory=list)
    #: ``resume=true``: inputs (video frames) found in the CSV and not predicted again; they
    #: are not counted in ``inputs``/``faces``/... (those describe this run's work).
    already_done: int = 0
    #: What resuming repaired in the CSV (torn last line...), one note each.
    repairs: list[str] = field(default_factory=list)
    #: The CSV written (predictions.csv, or the shard's CSV).
    csv: str = ""
    #: Videos/streams whose faces were tracked, their tracks (tracks.csv), annotated videos.
    videos: int = 0
    tracks: int = 0
    annotated_videos: list[str] = field(default_factory=list)
    #: Streams: frames ``received``, ``analysed``, ``dropped`` and the ``end`` reason.
    stream: dict[str, object] | None = None
    #: ``audience.window``: audience.json's content (windows, totals, gates); else None.
    audience: dict[str, object] | None = None
    #: Of ``inputs``: video and stream frames analysed, and the videos they came from
    #: (a video's frames arrive together, so a change of video is a new one: no set kept).
    frames: int = 0
    frame_sources: int = 0
    #: Of ``errors``: those of inputs that are not frames (a broken photo, a stream that
    #: did not open): neither an image nor a frame analysed.
    other_errors: int = 0
    _last_video: str | None = field(default=None, repr=False)

    def add(self, result: ImageResult) -> None:
        self.inputs += 1
        if result.item.frame is not None:
            self.frames += 1
            if result.item.video != self._last_video or self.frame_sources == 0:
                self.frame_sources += 1
                self._last_video = result.item.video
        self.faces += len(result.faces)
        if result.error is not None:
            self.errors += 1
            self.other_errors += result.item.frame is None
            if len(self.error_examples) < 5:
                self.error_examples.append(f"{result.item.path}: {result.error}")
        elif not result.faces:
            self.no_face += 1

    @property
    def images_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def images(self) -> int:
        """Inputs that are photos (not frames; a broken one is counted with the errors)."""
        return self.inputs - self.frames - self.other_errors

    def inputs_text(self) -> str:
        """What was analysed, in words a person counts in: ``4 inputs`` for photos,
        ``1 video, 50 frames analysed`` (``2 images, 1 video, 50 frames analysed`` mixed;
        ``1 stream`` for a camera or stream), never "50 inputs" for one video."""
        if not self.frames:
            return f"{self.inputs} inputs"
        images = self.images
        kind = "stream" if self.stream else "video"
        sources = max(self.frame_sources, self.videos)
        text = f"{images} image{'s' if images != 1 else ''}, " if images else ""
        text += f"{sources} {kind}{'s' if sources != 1 else ''}, "
        return text + f"{self.frames} frame{'s' if self.frames != 1 else ''} analysed"

    def line(self) -> str:
        unit = "frames/s" if self.frames and not self.images else "images/s"
        return (
            f"{self.inputs_text()}, {self.faces} faces, {self.no_face} without a face, "
            f"{self.errors} errors, {len(self.skipped)} other files skipped, "
            f"{self.already_done} already done "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} {unit})"
        )
