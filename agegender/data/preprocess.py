"""Detect, align and cache every face once, so that training reads only the cache.

``python -m agegender.data.preprocess data.root=/data/adience [data.source=mtcnn|aligned]``
(config ``conf/preprocess.yaml``). The Hydra entry is thin: the work is :func:`run_preprocess`,
which :meth:`AdienceDataModule.prepare_data` also calls.

- ``source=mtcnn``: load ``faces/<user>/coarse_tilt_aligned_face.*``, find the face and its five
  landmarks with MTCNN and warp it onto the alignment template (:func:`agegender.faces.align_face`,
  the same function prediction uses). When MTCNN finds nothing, the centre of the coarse crop is
  used instead and the row is flagged (``fallback``). A given box (CSV data) skips detection.
- ``source=aligned``: Adience's own ``aligned/`` images resized to the face size with
  ``cv2.INTER_LINEAR``, as Caffe's ``convert_imageset`` did: the exact-paper input, no detector.

Each combination of the settings that change a pixel (:meth:`FaceOptions.settings`) is cached
in its own folder, named by their hash (:meth:`FaceOptions.cache_name`) and described by its
``cache.json``; the DataModules derive that folder from their config.

Parallel over processes (each with one torch thread and its own detector), chunked, each chunk
written atomically (:mod:`agegender.data.cache`): a killed run resumes where it stopped. A
missing or unreadable file is reported in the index and the closing report, never fatal.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.cache import (
    LANDMARK_COLUMNS,
    cache_key,
    completed_shards,
    read_index,
    remove_stray_temporaries,
    write_manifest,
    write_shard,
)
from agegender.errors import handled
from agegender.faces.align import ALIGN_VERSION
from agegender.images import DEFAULT_MAX_PIXELS
from agegender.spec import (
    ADIENCE_FRAMING,
    LEGACY_SHRINK,
    TEMPLATE_112,
    Framing,
    resolve_framing,
    shrunk_template,
)

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("mtcnn", "aligned")
#: Index statuses of rows without a face that ``retry_failed`` processes again.
FAILED_STATUSES: tuple[str, ...] = ("missing", "error")
BOX_COLUMNS: list[str] = ["x1", "y1", "x2", "y2"]


@dataclass
class PreprocessReport:
    """The closing report: nothing is skipped without being counted here."""

    rows: int = 0
    already_done: int = 0
    processed: int = 0
    detected: int = 0
    fallbacks: int = 0
    missing: int = 0
    errors: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: PreprocessReport) -> None:
        for name in ("processed", "detected", "fallbacks", "missing", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.problems.extend(other.problems)

    def summary(self) -> str:
        return (
            f"rows: {self.rows} (already cached: {self.already_done}, processed now: "
            f"{self.processed}); detected: {self.detected}; fallbacks: {self.fallbacks}; "
            f"missing files: {self.missing}; errors: {self.errors}"
        )


#: OpenCV interpolation of ``source=aligned``: ``cv::resize``'s default, bilinear, which is
#: what Caffe's ``convert_imageset`` (the Levi-Hassner LMDBs) resized with.
ALIGNED_INTERPOLATION: str = "INTER_LINEAR"


def _frozen(value: Any) -> Any:
    """Hashable, order-independent form of a config value (lists -> tuples)."""
    if isinstance(value, Mapping):
        raise TypeError(f"detector options must be plain values or lists, not a mapping: {value}")
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"unsupported detector option value {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class FaceOptions:
    """How one image becomes a face (picklable: it travels to the worker processes).

    Every field changes pixels, so every field is in :meth:`settings`, the cache key.
    ``size``: side of the cached faces; None = the default network's ``face_spec.face_size``
    (:func:`agegender.models.registry.face_spec`; the DataModules pass their model's)."""

    source: str = "mtcnn"
    size: int | None = None
    detector: str = "mtcnn"
    #: Sorted ``(name, value)`` pairs (a mapping is accepted and sorted).
    detector_kwargs: tuple[tuple[str, Any], ...] = ()
    #: Side of the fallback box, as a fraction of the coarse crop's shorter side.
    fallback_fraction: float = 0.5
    #: Where faces sit in the crop (:class:`agegender.spec.Framing`, or a preset's name:
    #: ``adience``, Adience's own aligned faces; ``legacy``, the framing used before).
    #: ``template_shrink`` and ``box_crop_scale`` are folded into it
    #: (:func:`agegender.spec.resolve_framing`) and then hold None.
    framing: Framing | str | Mapping[str, Any] = "adience"
    #: The legacy framing's margin (the tight template shrunk about the centre).
    template_shrink: float | None = None
    #: A fixed crop of boxes without landmarks: side / the box's longer side, centred.
    box_crop_scale: float | None = None

    def __post_init__(self) -> None:
        kwargs = self.detector_kwargs
        pairs = kwargs.items() if isinstance(kwargs, Mapping) else kwargs
        frozen = tuple(sorted((str(k), _frozen(v)) for k, v in pairs))
        object.__setattr__(self, "detector_kwargs", frozen)
        object.__setattr__(self, "fallback_fraction", float(self.fallback_fraction))
        if self.source == "aligned":
            # Adience's own alignment: the faces the adience framing was measured on
            object.__setattr__(self, "framing", ADIENCE_FRAMING)
        else:
            framing = self.framing
            if isinstance(framing, Mapping):
                framing = dict(framing)
            framing = resolve_framing(framing, self.template_shrink, self.box_crop_scale)
            object.__setattr__(self, "framing", framing)
        object.__setattr__(self, "template_shrink", None)
        object.__setattr__(self, "box_crop_scale", None)
        if self.size is None:
            # here, not at import: the workers unpickle options with their size set and
            # never import the networks (torch, the backbones)
            from agegender.models.registry import face_spec

            object.__setattr__(self, "size", face_spec().face_size)
        object.__setattr__(self, "size", int(self.size))
        if not 0 < self.fallback_fraction <= 1:
            raise ValueError(f"fallback_fraction must be in (0, 1], got {self.fallback_fraction}")

    def settings(self) -> dict[str, Any]:
        """Every setting that changes a cached pixel, by name: the cache key and manifest.

        Built here and only here. ``source=aligned`` runs no detector and no alignment, so
        those settings are not part of its key. Worker counts, chunking, progress and
        retrying change no pixel and are not settings. Image decoding is
        :func:`agegender.images.load_image` (EXIF-upright RGB, full resolution) with its
        size guard, which decides whether a huge file becomes a face or an error row.
        """
        settings: dict[str, Any] = {
            "source": self.source,
            "size": self.size,
            "decode": {"loader": "agegender.images.load_image", "max_pixels": DEFAULT_MAX_PIXELS},
        }
        if self.source == "aligned":
            settings["resize"] = f"cv2.resize {ALIGNED_INTERPOLATION}"
            return settings
        # deferred: the detector's module (torch for MTCNN), read only for the cache key
        from agegender.faces.registry import detector_arguments, detector_implementation

        arguments = detector_arguments(self.detector, **dict(self.detector_kwargs))
        settings.update(
            detector=self.detector,
            detector_implementation=detector_implementation(self.detector),
            detector_kwargs={k: _frozen(v) for k, v in arguments.items()},
            fallback_fraction=self.fallback_fraction,
            align_version=ALIGN_VERSION,
        )
        settings.update(self._framing_settings())
        return settings

    def _framing_settings(self) -> dict[str, Any]:
        """The framing, as the cache key names it. A legacy-shaped framing (the tight template
        shrunk, boxes centred) keeps the keys caches were written with before framings had
        names, so those caches (same pixels) are still found; any other names its template,
        and with measured box geometry the detector's box points (its boxes and given ones)."""
        framing = self.framing
        assert isinstance(framing, Framing)  # resolved in __post_init__
        shrink = _legacy_shrink(framing)
        if shrink is not None:
            return {
                "template": [list(point) for point in TEMPLATE_112],
                "template_shrink": shrink,
                "box_crop_scale": framing.box_scale,
            }
        settings: dict[str, Any] = {"framing": framing.key()}
        if framing.box_scale is None:
            from agegender.faces.registry import detector_box_points  # deferred: as above

            settings["box_points"] = [list(p) for p in detector_box_points(self.detector)]
        return settings

    def cache_key(self) -> str:
        """sha256[:10] of the canonical JSON of :meth:`settings` (and the cache format)."""
        return cache_key(self.settings())

    def cache_name(self) -> str:
        """The cache folder's name: ``<source>-<detector>-<key>`` (``aligned-<key>``)."""
        if self.source == "aligned":
            return f"aligned-{self.cache_key()}"
        detector = re.sub(r"[^\w.-]", "_", self.detector)
        return f"{self.source}-{detector}-{self.cache_key()}"


def _legacy_shrink(framing: Framing) -> float | None:
    """The shrink of a legacy-shaped framing (the tight template shrunk about the centre,
    boxes cropped centred at a fixed scale), None for any other."""
    if framing.box_scale is None or framing.box_centre_y != 0.5:
        return None
    (x1, _), (x2, _) = TEMPLATE_112[0], TEMPLATE_112[1]
    (u1, _), (u2, _) = framing.template[0], framing.template[1]
    shrink = (u2 - u1) / ((x2 - x1) / 112.0)
    for candidate in (LEGACY_SHRINK, shrink):
        if shrunk_template(candidate) == framing.template:
            return candidate
    return None


#: Imported once by the forkserver, so each worker forked from it starts warm.
_PRELOAD: dict[str, list[str]] = {
    "mtcnn": ["agegender.data.cache", "torch", "agegender.faces", "agegender.faces.mtcnn"],
    "aligned": ["agegender.data.cache", "agegender.images"],
}
_DETECTORS: dict[tuple, object] = {}  # one detector per worker process, built on first use
_IN_WORKER = False
_BOX_POINTS: dict[str, tuple] = {}  # detector name -> its box geometry


def _detector(options: FaceOptions):
    key = (options.detector, options.detector_kwargs)
    if key not in _DETECTORS:
        # deferred: the detector (torch, cv2) is built in the worker processes only
        from agegender.faces import build_detector

        _DETECTORS[key] = build_detector(options.detector, **dict(options.detector_kwargs))
        if _IN_WORKER:  # torch is imported by now; never touch the threads of the caller
            _init_worker()
    return _DETECTORS[key]


def _box_points(detector: str):  # noqa: ANN202 - BoxPoints (faces: imported in workers only)
    if detector not in _BOX_POINTS:
        # deferred: as _detector's (the detector's class, read without building it)
        from agegender.faces.registry import detector_box_points

        _BOX_POINTS[detector] = detector_box_points(detector)
    return _BOX_POINTS[detector]


def _load(path: Path) -> np.ndarray:
    # deferred: Pillow's plugins, in the worker processes only
    from agegender.images import load_image

    return load_image(path)


def _pick_face(faces: list, height: int, width: int):
    """The face covering the image centre with the best score (coarse crops are centred on
    their subject; a bystander can score higher), else the best face overall."""
    cx, cy = width / 2, height / 2
    central = [f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
    pool = central or faces
    return max(pool, key=lambda f: f.score)


def face_from_image(
    image: np.ndarray, options: FaceOptions, box: tuple[float, float, float, float] | None = None
) -> tuple[np.ndarray, dict]:
    """One aligned size x size face from one RGB image, with what was done to get it."""
    import cv2

    info: dict = {"detected": False, "det_score": math.nan, "fallback": ""}
    if options.source == "aligned":
        interpolation = getattr(cv2, ALIGNED_INTERPOLATION)
        face = cv2.resize(image, (options.size, options.size), interpolation=interpolation)
        return face, info
    # deferred: as _detector's (this runs in the worker processes)
    from agegender.faces import Face, align_face

    h, w = image.shape[:2]
    if box is not None:
        chosen = Face(box=tuple(float(v) for v in box), score=math.nan, landmarks=None)
        info["fallback"] = "given_box"
    else:
        faces = _detector(options).detect(image)
        if faces:
            chosen = _pick_face(faces, h, w)
            info.update(detected=True, det_score=float(chosen.score))
        else:
            side = options.fallback_fraction * min(h, w)
            x1, y1 = (w - side) / 2, (h - side) / 2
            chosen = Face(box=(x1, y1, x1 + side, y1 + side), score=math.nan, landmarks=None)
            info["fallback"] = "no_face:centre"
    if chosen.landmarks is not None:
        info.update(zip(LANDMARK_COLUMNS, np.asarray(chosen.landmarks, float).ravel(), strict=True))
    # a box without landmarks (found, given or the fallback) is read as the detector's
    face = align_face(image, chosen, options.size, options.framing, _box_points(options.detector))
    return face, info


def _process_chunk(args: tuple) -> PreprocessReport:
    """Worker: turn one chunk of jobs into one shard (written atomically)."""
    cache_dir, shard, records, options = args
    report = PreprocessReport()
    faces, rows = [], []
    for rec in records:
        row = {"key": rec["key"], "source": options.source, "offset": -1, "error": ""}
        row.update(detected=False, det_score=math.nan, fallback="")
        path = Path(rec["path"])
        box = None
        if all(c in rec and not pd.isna(rec[c]) for c in BOX_COLUMNS):
            box = tuple(rec[c] for c in BOX_COLUMNS)
        if not path.is_file():
            row.update(status="missing", error=f"file not found: {path}")
            report.missing += 1
            report.problems.append(f"{rec['key']}: missing {path}")
        else:
            try:
                face, info = face_from_image(_load(path), options, box)
            except Exception as e:  # one bad file must never stop the run
                reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
                row.update(status="error", error=reason)
                report.errors += 1
                report.problems.append(f"{rec['key']}: {path}: {reason}")
            else:
                row.update(info, status="ok", offset=len(faces))
                faces.append(face)
                report.detected += bool(info["detected"])
                report.fallbacks += info["fallback"] == "no_face:centre"
        rows.append(row)
        report.processed += 1
    size = options.size
    images = np.stack(faces) if faces else np.zeros((0, size, size, 3), np.uint8)
    write_shard(cache_dir, shard, images, pd.DataFrame(rows))
    return report


def _init_worker() -> None:
    import cv2

    global _IN_WORKER
    _IN_WORKER = True
    # Parallelism comes from the processes; more threads each would just fight for the cores.
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def run_preprocess(
    jobs: pd.DataFrame,
    cache_dir: str | Path,
    options: FaceOptions | None = None,
    workers: int = 2,
    chunk_size: int = 64,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    retry_failed: bool = False,
    start_method: str = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn",
) -> PreprocessReport:
    """Cache a face for every job not cached yet (jobs: ``key``, ``path``, optional box).

    ``on_chunk(n_done)`` is called after each shard lands (progress hooks, and the tests'
    way of interrupting a run). ``workers <= 1`` runs in this process. ``retry_failed``
    processes again the rows recorded as missing or unreadable (after the files were fixed).
    """
    from tqdm import tqdm

    options = options or FaceOptions()
    if options.source not in SOURCES:
        raise ValueError(f"unknown source {options.source!r}; expected one of {SOURCES}")
    if not jobs["key"].is_unique:
        raise ValueError("preprocessing jobs must have unique keys")
    cache_dir = Path(cache_dir)
    write_manifest(cache_dir, options.settings())
    remove_stray_temporaries(cache_dir)
    index = read_index(cache_dir)
    if retry_failed:
        index = index[~index["status"].isin(FAILED_STATUSES)]
    done = set(index["key"])
    todo = jobs[~jobs["key"].isin(done)]
    report = PreprocessReport(rows=len(jobs), already_done=len(jobs) - len(todo))
    first = max(completed_shards(cache_dir), default=-1) + 1
    records = todo.to_dict("records")
    if workers > 1:
        # At least ~4 chunks per worker, so a small run (or the tail of a resumed one) is not
        # left to one worker while the others idle; big runs keep chunk_size.
        chunk_size = max(1, min(chunk_size, math.ceil(len(records) / (4 * workers))))
    chunks = [
        (cache_dir, first + i, records[s : s + chunk_size], options)
        for i, s in enumerate(range(0, len(records), chunk_size))
    ]
    if workers > 1 and mp.get_start_method(allow_none=True) not in mp.get_all_start_methods():
        # Inside a joblib (loky) worker, e.g. folds run by hydra/launcher=local_parallel:
        # child processes inherit a start method the standard library cannot recreate, and
        # the jobs already fill the cores, so preprocess in this process instead.
        log.info("preprocessing in-process: this is a %s worker", mp.get_start_method())
        workers = 1
    bar = tqdm(total=len(jobs), initial=report.already_done, disable=not progress, unit="face")
    executor = None
    try:
        if workers <= 1 or len(chunks) <= workers:
            # Starting a worker costs seconds (imports); a few chunks are faster in-process.
            results = map(_process_chunk, chunks)
        else:
            # Not fork: a forked copy of a process whose OpenCV/OpenMP thread pools already
            # ran can deadlock in its first cv2 call (seen here). forkserver forks each
            # worker from a clean single-threaded server with the heavy imports preloaded.
            # A dying worker raises BrokenProcessPool instead of being silently replaced.
            context = mp.get_context(start_method)
            if start_method == "forkserver":
                context.set_forkserver_preload(_PRELOAD[options.source])
            executor = ProcessPoolExecutor(min(workers, len(chunks)), context, _init_worker)
            futures = [executor.submit(_process_chunk, c) for c in chunks]
            results = (f.result() for f in as_completed(futures))
        for n, chunk_report in enumerate(results, start=1):
            report.add(chunk_report)
            bar.update(chunk_report.processed)
            if on_chunk is not None:
                on_chunk(n)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return report


def print_report(report: PreprocessReport, max_problems: int = 20) -> None:
    print(report.summary(), file=sys.stderr)
    for line in report.problems[:max_problems]:
        print(f"  {line}", file=sys.stderr)
    if len(report.problems) > max_problems:
        print(f"  ... {len(report.problems) - max_problems} more in the index", file=sys.stderr)


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="../../conf", config_name="preprocess")
    def _main(cfg: DictConfig) -> None:
        datamodule = hydra.utils.instantiate(cfg.data)
        # FileExistsError: a cache folder that is not ours to replace
        run = handled("agegender.data.preprocess", exits=True, builtin=(FileExistsError,))
        report = run(datamodule.preprocess)()
        print_report(report)
        print(f"cache: {datamodule.cache_dir}", file=sys.stderr)

    _main()


if __name__ == "__main__":
    main()
