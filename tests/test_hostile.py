"""Hostile folder entries and settings (issue 20): names that are not UTF-8, named pipes,
PostScript, an output inside its input, rows with newlines torn by a kill, a resume with
other settings, a folder listed but not entered, names a spreadsheet would evaluate, and a
16-bit PNG's memory. Each was reproduced on main before the fix."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from agegender.faces import Face, build_detector
from agegender.inference import FaceResult, ImageResult, InputItem, ResumeError, predict
from agegender.inference.csv_writer import CsvWriter
from agegender.inference.inputs import scan_inputs
from agegender.inference.options import OptionError
from agegender.labels import ADIENCE8, load_label_set

REPO = Path(__file__).resolve().parents[1]
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def _jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # encoded in memory: OpenCV's own file functions crash on names that are not UTF-8
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (40, 32, 3), np.uint8))
    path.write_bytes(data.tobytes())
    return path


def _run(folder: Path, out: Path, classifier, **settings):  # noqa: ANN001, ANN202
    options = {"workers": 1, "annotate": False, "progress": False} | settings
    return predict(folder, out, build_detector("none"), classifier, **options)


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_names_that_are_not_utf8(tmp_path, random_classifier, fmt):
    folder = tmp_path / "in"
    _jpeg(folder / "ok.jpg")
    odd = folder / os.fsdecode(b"x\xff.jpg")
    _jpeg(odd, seed=1)
    (folder / os.fsdecode(b"notes\xff.txt")).write_text("not an input")
    out = tmp_path / "out"
    summary = _run(folder, out, random_classifier, format=fmt, annotate=True)
    assert summary.inputs == 2 and summary.errors == 0
    text = (out / f"predictions.{fmt}").read_text(encoding="utf-8")  # valid UTF-8
    rows = (
        pd.read_json(out / "predictions.jsonl", lines=True)
        if fmt == "jsonl"
        else _csv(out / "predictions.csv")
    )
    assert sorted(Path(p).name for p in rows["path"]) == ["ok.jpg", "x\\xff.jpg"]
    assert text.count("ok.jpg") == 1
    assert "notes\\xff.txt" in (out / "skipped.txt").read_text(encoding="utf-8")
    assert any(p.name.startswith("x") for p in (out / "annotated").iterdir())
    again = _run(folder, out, random_classifier, format=fmt, resume=True)
    assert again.already_done == 2 and again.inputs == 0  # recognised, not redone


def test_pipes_are_never_opened(tmp_path):
    """A named pipe called pipe.mp4 used to block the run forever (and pipe.jpg got a row):
    entries that are not regular files are listed as skipped and never opened."""
    folder = tmp_path / "in"
    _jpeg(folder / "a.jpg")
    for name in ("pipe.mp4", "pipe.jpg"):
        os.mkfifo(folder / name)
    (folder / "sub").mkdir()
    _jpeg(folder / "sub" / "b.jpg")
    (folder / "dir.jpg").symlink_to(folder / "sub", target_is_directory=True)
    inputs, skipped = scan_inputs(folder)
    assert [p.name for p in inputs] == ["a.jpg", "b.jpg"]
    assert sorted(p.name for p in skipped) == ["dir.jpg", "pipe.jpg", "pipe.mp4"]
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={folder}", f"output={tmp_path / 'out'}",
         "detector=none", "progress=false"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = _csv(tmp_path / "out" / "predictions.csv")
    assert list(rows["path"]) == [str(folder / "a.jpg"), str(folder / "sub" / "b.jpg")]
    skipped_txt = (tmp_path / "out" / "skipped.txt").read_text()
    assert "pipe.mp4" in skipped_txt and "dir.jpg" in skipped_txt


def test_postscript_never_reaches_an_interpreter(tmp_path):
    """EPS is not decoded: not by extension (x.eps is skipped) and not by content (an EPS
    named .jpg is 'not an image'); a stand-in Ghostscript on PATH is never run."""
    folder = tmp_path / "in"
    _jpeg(folder / "a.jpg")
    (folder / "x.eps").write_bytes(EPS)
    (folder / "y.jpg").write_bytes(EPS)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-ran"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(gs.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={folder}", f"output={tmp_path / 'out'}",
         "detector=none", "progress=false"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert not marker.exists()
    rows = _csv(tmp_path / "out" / "predictions.csv").set_index("path")
    assert rows.loc[str(folder / "y.jpg"), "status"] == "error: not an image"
    assert "x.eps" in (tmp_path / "out" / "skipped.txt").read_text()
    assert shutil.which("gs", path=env["PATH"]) == str(gs)  # the stand-in was in reach


def test_an_output_inside_the_input_is_not_read_back(tmp_path, random_classifier):
    folder = tmp_path / "in"
    _jpeg(folder / "a.jpg")
    _jpeg(folder / "b.jpg", seed=1)
    counts = [
        _run(folder, folder / "out", random_classifier, annotate=True).inputs for _ in range(3)
    ]
    assert counts == [2, 2, 2]
    assert not (folder / "out" / "annotated" / "out").exists()


def test_output_naming_a_file_is_refused(tmp_path, random_classifier):
    _jpeg(tmp_path / "in" / "a.jpg")
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OptionError, match="is a file"):
        _run(tmp_path / "in", tmp_path / "out", random_classifier)


def _result(path: str) -> ImageResult:
    probs = {"age": np.full(8, 1 / 8), "gender": np.full(2, 0.5)}
    face = FaceResult.decode(Face(box=(1.0, 2.0, 11.0, 12.0), score=0.9), probs, ADIENCE8)
    return ImageResult(InputItem(path, path), faces=[face])


def test_a_write_torn_inside_a_quoted_newline_is_cut(tmp_path):
    """Killed while writing the row of a file named ``b<newline>c.jpg``: the file's last
    newline is inside that row's quotes; resume cuts the whole row, and the file parses."""
    path = tmp_path / "predictions.csv"
    with CsvWriter(path) as writer:
        writer.write(_result("a.jpg"))
        writer.write(_result("b\nc.jpg"))
    data = path.read_bytes()
    torn = data[: data.index(b"b\nc.jpg") + 2]  # up to and including the quoted newline
    path.write_bytes(torn)
    with CsvWriter(path, resume=True) as writer:
        assert writer.done == {"a.jpg"}
        writer.write(_result("b\nc.jpg"))
    assert path.read_bytes() == data
    assert list(_csv(path)["path"]) == ["a.jpg", "b\nc.jpg"]


def test_resume_with_other_settings_is_refused(tmp_path, random_classifier, monkeypatch):
    """Rows of another label set (or detector, ...) must never be appended under the first
    run's rows; the same folder spelled differently is named, not predicted again."""
    import torch

    from agegender.models import LeviHassnerNet
    from agegender.runtime.torch_classifier import FaceClassifier

    monkeypatch.chdir(tmp_path)
    for i in range(4):
        _jpeg(tmp_path / "in" / f"{i}.jpg", seed=i)
    _run(Path("in"), tmp_path / "out", random_classifier)
    csv_path = tmp_path / "out" / "predictions.csv"
    lines = csv_path.read_bytes().splitlines(keepends=True)
    csv_path.write_bytes(b"".join(lines[:3]))  # killed after two inputs
    before = csv_path.read_bytes()
    torch.manual_seed(0)
    coarse3 = FaceClassifier(LeviHassnerNet(), labels=load_label_set("coarse3"))
    with pytest.raises(ResumeError, match="labels"):
        _run(Path("in"), tmp_path / "out", coarse3, resume=True)
    with pytest.raises(ResumeError, match="video"):
        _run(Path("in"), tmp_path / "out", random_classifier, resume=True, video_stride=2)
    with pytest.raises(ResumeError, match="exactly that spelling"):
        _run(tmp_path / "in", tmp_path / "out", random_classifier, resume=True)
    assert csv_path.read_bytes() == before  # untouched by every refusal
    summary = _run(Path("in"), tmp_path / "out", random_classifier, resume=True)
    assert summary.already_done == 2 and summary.inputs == 2


@pytest.mark.parametrize(
    ("detector", "backend"),
    [("haar", "auto"), ("opencv_ssd", "auto"), ("mtcnn", "auto"), ("mtcnn", "torch"),
     ("mtcnn_facenet", "torch")],
)  # fmt: skip
def test_threads_sharing_one_agegender_get_the_sequential_answers(detector, backend):
    """A server or the web demo calls one AgeGender from several threads: OpenCV's detectors
    keep per-call state (4 threads used to get wrong boxes and errors from haar/SSD)."""
    import threading

    from agegender import AgeGender

    ag = AgeGender(detector=detector, backend=backend)
    samples = REPO / "data" / "samples"
    photos = [samples / n for n in ("astronaut.jpg", "biden.jpg", "obama.jpg", "camera.png")]
    expected = [[(f.box, f.age, f.gender) for f in ag.predict(p)] for p in photos]
    got: list[tuple[int, list]] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(8):
                k = (i + offset) % len(photos)
                faces = ag.predict(photos[k]) if i % 2 else ag.predict_batch([photos[k]])[0]
                got.append((k, [(f.box, f.age, f.gender) for f in faces]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(got) == 32
    assert all(faces == expected[k] for k, faces in got)


def test_every_input_keeps_its_own_annotated_copy(tmp_path, random_classifier):
    """``coll.gif`` and ``coll.gif.jpg`` both used to write ``annotated/coll.gif.jpg``, and a
    250-byte file name got no copy (its temporary name passed the 255-byte limit)."""
    from PIL import Image

    folder = tmp_path / "in"
    _jpeg(folder / "coll.gif.jpg")
    Image.fromarray(np.full((40, 32, 3), 90, np.uint8)).save(folder / "coll.gif")
    long_name = "l" * 246 + ".jpg"
    _jpeg(folder / long_name, seed=2)
    summary = _run(folder, tmp_path / "out", random_classifier, annotate=True)
    assert summary.inputs == 3 and summary.errors == 0
    copies = sorted(p.name for p in (tmp_path / "out" / "annotated").iterdir())
    assert copies == sorted(["coll.gif.1.jpg", "coll.gif.jpg", long_name])
    gif_copy = cv2.imread(str(tmp_path / "out" / "annotated" / "coll.gif.1.jpg"))
    # the GIF's copy (flat grey inside the drawn box), not the noise JPEG's
    assert abs(float(np.median(gif_copy[2:20, 4:28])) - 90) < 5


def test_auto_says_why_it_took_torch(tmp_path):
    """Where the install's export step did not run (the converted weights only), auto takes
    PyTorch: the run says so and names the command that makes the fast path."""
    from agegender.store import ORIGINAL_CHECKPOINT, cache_dir

    original = cache_dir() / ORIGINAL_CHECKPOINT
    if not original.is_file():
        pytest.fail(f"{original} is missing: run the README's install command")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(original, cache / ORIGINAL_CHECKPOINT)
    env = {**os.environ, "AGEGENDER_CACHE": str(cache)}
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={REPO / 'data' / 'samples' / 'obama.jpg'}",
         f"output={tmp_path / 'out'}", "detector=none", "progress=false", "precision=fp32"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(precision fp32, torch: " in run.stdout
    assert "auto took torch" in run.stderr and "python -m agegender.weights original" in run.stderr


#: File names a spreadsheet would evaluate as formulas when a CSV cell starts with them.
FORMULA_NAMES: tuple[str, ...] = ('=HYPERLINK("x")', "+1", "-2", "@cmd")


def _deny_entries(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """What a folder with mode 644 does for a user (root ignores permissions): its names can
    be listed, but asking whether an entry is a file or a link raises PermissionError."""

    def denied(real):  # noqa: ANN001, ANN202
        def check(self: Path) -> bool:
            if Path(os.path.abspath(self)).parent == folder:  # however the path is spelled
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        return check

    monkeypatch.setattr(Path, "is_file", denied(Path.is_file))
    monkeypatch.setattr(Path, "is_symlink", denied(Path.is_symlink))


def _png16(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` (uint16, RGB order) as a 16-bit-per-channel PNG (encoded in memory, as _jpeg)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok and rgb.dtype == np.uint16
    path.write_bytes(data.tobytes())
    return path


def _hostile_folder(root: Path, rng: np.random.Generator) -> Path:
    """A bounded folder of the entries above, generated: good and broken images, odd names
    (not UTF-8, quotes, commas, newlines, very long, starting with a formula character),
    PostScript, pipes, sockets-like and hidden entries, links, empty files, a bad video,
    a 16-bit RGB PNG beside the same picture in 8 bits, nested folders, and a folder that
    can be listed but not entered (mode 644). Returns that folder (its mode is restored by
    the caller, so that the folder can be deleted)."""
    import socket

    names = ["ok", "sp ace", 'qu"ote', "com,ma", "new\nline", os.fsdecode(b"lat\xe9in"), "é"]
    for i, name in enumerate(names):
        sub = root / ("deep/er" if i % 3 == 0 else "")
        _jpeg(sub / f"{name}.jpg", seed=int(rng.integers(1 << 30)))
    for name in FORMULA_NAMES:  # top level: a relative path starts with the character
        _jpeg(root / f"{name}.jpg", seed=int(rng.integers(1 << 30)))
    picture = rng.integers(0, 256, (40, 32, 3)).astype(np.uint16)
    _png16(root / "deep16.png", picture * 257)
    cv2.imwrite(str(root / "deep8.png"), picture[:, :, ::-1].astype(np.uint8))
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    (root / "trunc.jpg").write_bytes(_jpeg(root / "t0.jpg").read_bytes()[:200])
    (root / "ps.eps").write_bytes(EPS)
    (root / "ps.png").write_bytes(EPS)
    (root / "bad.mp4").write_bytes(b"\x00" * 150)
    (root / "notes.txt").write_text("x")
    (root / ".hidden.jpg").write_bytes(b"")
    (root / ("l" * 240 + ".jpg")).write_bytes((root / "t0.jpg").read_bytes())
    os.mkfifo(root / "fifo.mp4")
    os.mkfifo(root / "fifo.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock.jpg"))
    server.close()
    (root / "link.jpg").symlink_to(root / "t0.jpg")
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    (root / "dir.png").mkdir()
    _jpeg(root / "dir.png" / "inner.jpg", seed=5)
    locked = root / "locked"
    _jpeg(locked / "photo.jpg", seed=6)
    (locked / "inner").mkdir()
    _jpeg(locked / "inner" / "deeper.jpg", seed=7)
    locked.chmod(0o644)
    return locked


@pytest.mark.parametrize("spelling", ["absolute", "relative"])
def test_hostile_folder_contract(tmp_path, random_classifier, monkeypatch, spelling):
    """Every regular file under the folder is in the CSV or skipped.txt exactly once,
    nothing else is opened, the CSV parses, and a run killed at random points and resumed
    ends equal to an uninterrupted one. Run on the folder by its absolute path and as
    ``.`` from inside it: then the top-level names starting with = + - @ begin their CSV
    cell, which must be escaped for spreadsheets and read back as the name."""
    from agegender.fileio import display_path, from_spreadsheet_safe

    rng = np.random.default_rng(20)
    folder = tmp_path / "in"
    folder.mkdir()
    locked = _hostile_folder(folder, rng)
    try:
        if os.geteuid() == 0:  # root enters a 644 folder anyway: the user's view, simulated
            _deny_entries(monkeypatch, locked)
        base = folder
        if spelling == "relative":
            monkeypatch.chdir(folder)
            base = Path(".")
        _check_hostile_run(folder, base, locked, tmp_path / "out", random_classifier, rng)
    finally:
        locked.chmod(0o755)
    cells = _csv(tmp_path / "out" / "predictions.csv")["path"]
    for name in FORMULA_NAMES:
        cell = [c for c in cells if from_spreadsheet_safe(c) == display_path(base / f"{name}.jpg")]
        assert len(cell) == 1, name
        assert cell[0] == (
            f"'{name}.jpg" if spelling == "relative" else str(folder / f"{name}.jpg")
        )


def _check_hostile_run(folder, base, locked, out, classifier, rng) -> None:  # noqa: ANN001
    """The contract of :func:`test_hostile_folder_contract`, the input spelled ``base``."""
    from agegender.fileio import display_path, from_spreadsheet_safe

    def shown(path: Path) -> str:  # a file as the run names it
        return display_path(base / path.relative_to(folder))

    summary = _run(base, out, classifier, annotate=True)
    reference = (out / "predictions.csv").read_bytes()
    rows = _csv(out / "predictions.csv")
    paths = [from_spreadsheet_safe(p) for p in rows["path"]]  # the project's reading
    written = set(paths)
    listed = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
    skipped = set(listed)
    assert len(listed) == len(skipped)  # each entry once
    regular = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if Path(dirpath) / d != locked]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                regular.add(shown(path))
    assert regular <= written | skipped, regular - written - skipped
    assert not (written & skipped)
    assert summary.inputs == len(written)
    assert len(rows) == len(rows["path"])  # parses: one field per column everywhere
    assert shown(folder / "fifo.mp4") in skipped and shown(folder / "sock.jpg") in skipped
    # the 644 folder: its entries are named in skipped.txt, none is opened, the run goes on
    assert {shown(locked / "photo.jpg"), shown(locked / "inner")} <= skipped
    assert not any(p.startswith(shown(locked) + os.sep) for p in written)
    by_path = rows.assign(path=paths).set_index("path")
    assert by_path.loc[shown(folder / "ps.png"), "status"] == "error: not an image"
    # 16 bits per channel, all of them read: the same answer as the picture in 8 bits
    deep = by_path.loc[shown(folder / "deep16.png")].to_dict()
    assert deep["status"] == "ok" and deep == by_path.loc[shown(folder / "deep8.png")].to_dict()
    again = _run(base, out, classifier, annotate=True, resume=True)  # names read back: none redone
    assert again.already_done == summary.inputs and again.inputs == 0
    # killed at random points (a torn write anywhere), then resumed: the same file
    for cut in sorted(rng.integers(len(reference.split(b"\n", 1)[0]) + 2, len(reference), 4)):
        (out / "predictions.csv").write_bytes(reference[:cut])
        _run(base, out, classifier, annotate=True, resume=True)
        assert (out / "predictions.csv").read_bytes() == reference, cut


#: Run by a fresh interpreter: the command in argv, then its exit code and peak resident
#: memory (Linux: KiB). RUSAGE_CHILDREN of that parent holds this one child only.
_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "run = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(run.stderr[-3000:])\n"
    "print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _predict_peak(image: Path, out: Path) -> int:
    """Peak resident bytes of ``predict.py input=image detector=none`` in a subprocess."""
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, sys.executable, "predict.py", f"input={image}",
         f"output={out}", "detector=none", "progress=false"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    code, peak_kib = run.stdout.split()
    assert code == "0", run.stderr
    return int(peak_kib) * 1024


@pytest.mark.slow  # two predict.py runs on a 3000 x 3000 picture (~4 s on 2 cores)
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_deep_colour_png_costs_what_its_8_bit_copy_costs(tmp_path) -> None:
    """A 16-bit RGB PNG is converted to 8 bits in strips (agegender.images._deep_to_uint8):
    predict.py's peak memory on a 3000 x 3000 one is at most its 16-bit decode plus one
    strip of float64 over the same picture saved in 8 bits, and the answer is the same.
    Converting the whole image at once in float64, as before, costs 8 bytes a value more
    (216 MB here; measured 426 MB against 267 MB), which this bound refuses."""
    from agegender.images import _STRIP_VALUES

    side = 3000
    y, x = np.mgrid[0:side, 0:side]
    picture = np.stack([x * 255 // side, y * 255 // side, (x + y) * 255 // (2 * side)], axis=2)
    plain = tmp_path / "plain8.png"
    cv2.imwrite(str(plain), picture[:, :, ::-1].astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    deep = _png16(tmp_path / "deep16.png", picture.astype(np.uint16) * 257)
    decode = picture.size * 2  # the uint16 pixels OpenCV decodes
    margin = decode + 8 * _STRIP_VALUES
    assert margin < picture.size * 8  # smaller than one whole-image float64 copy
    plain_peak = _predict_peak(plain, tmp_path / "out8")
    deep_peak = _predict_peak(deep, tmp_path / "out16")
    assert deep_peak <= plain_peak + margin, (deep_peak, plain_peak, margin)
    rows = [
        _csv(tmp_path / out / "predictions.csv").drop(columns="path") for out in ("out8", "out16")
    ]
    pd.testing.assert_frame_equal(rows[0], rows[1])


def _doctored_export(tmp_path: Path, name: str, **changes: str) -> Path:
    """The original weights' ONNX export with metadata entries replaced."""
    import onnx

    from agegender.store import original_onnx_path

    source = original_onnx_path()
    if not source.is_file():
        pytest.fail(f"{source} is missing: run the README's install command")
    model = onnx.load(str(source))
    entries = {p.key: p.value for p in model.metadata_props} | changes
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outputs": "{not json"}, "malformed agegender metadata"),
        ({"face_size": "twenty"}, "malformed agegender metadata"),
        ({"face_size": "20000", "resize_size": "20000"}, "1..1024"),
        ({"label_set": '{"name": "coarse3"}'}, "output has 8 classes"),
        ({"label_set": '{"path": "/etc/hostname"}'}, "must not name a file"),
        ({"label_set": '"/etc/hostname"'}, "built in or inline"),
        # NaN compares false to everything: it used to pass the increasing-boundaries check
        (
            {
                "label_set": json.dumps(
                    {
                        "name": "nan8",
                        "age": [f"c{i}" for i in range(8)],
                        "boundaries": [0, 5, 10, float("nan"), 30, 40, 50, 60],
                    }
                )
            },
            "must be finite",
        ),
        ({"framing": '{"template": [[0.5, 0.5]]}'}, "malformed agegender metadata"),
    ],
)
def test_model_files_with_bad_metadata_are_refused(tmp_path, changes, message):
    """Refused when loaded, with the file named (predict.py: exit code 2), never a raw
    traceback, a crash half way through a run, or a read of a local file."""
    from agegender.errors import CheckpointError
    from agegender.runtime.onnx_classifier import OnnxFaceClassifier

    path = _doctored_export(tmp_path, "bad.onnx", **changes)
    with pytest.raises(CheckpointError, match=message):
        OnnxFaceClassifier(path)


def test_a_checkpoint_whose_label_set_does_not_fit_its_heads_is_refused(tmp_path):
    import torch

    from agegender.checkpoints import save_model
    from agegender.errors import CheckpointError
    from agegender.models import LeviHassnerNet
    from agegender.runtime.build import build_classifier

    torch.manual_seed(0)
    path = save_model(
        LeviHassnerNet(mode="shared"), "levi_hassner", {"mode": "shared"}, tmp_path / "m.pt",
        labels="coarse3",
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="age head has 8 classes"):
        build_classifier(path)


@pytest.mark.slow
def test_onnxruntime_makes_no_network_lookups(tmp_path):
    """onnxruntime's telemetry looked up a Microsoft host from a plain inference session
    (some seconds after it started: measured here at 5-12 s); ours sets
    ORT_DISABLE_TELEMETRY. strace sees no DNS configuration read and no socket in 15 s."""
    from conftest import require

    from agegender.store import original_onnx_path

    strace = shutil.which("strace")
    require(strace is not None, "strace is not installed (apt-get install strace)")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import time, numpy as np\n"
        "from agegender.runtime.onnx_classifier import OnnxFaceClassifier\n"
        f"c = OnnxFaceClassifier({str(original_onnx_path())!r})\n"
        "c.predict(np.zeros((1, 3, 227, 227), np.float32))\n"
        "time.sleep(15)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    run = subprocess.run(
        [strace, "-f", "-qq", "-e", "trace=socket,connect,openat", sys.executable, str(probe)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    trace = run.stderr
    assert "socket(AF_INET" not in trace
    assert "/etc/resolv.conf" not in trace and "/etc/nsswitch.conf" not in trace


def test_a_box_outside_the_image_is_an_error_not_a_label(random_classifier):
    from agegender import AgeGender, ImageLoadError

    ag = AgeGender(detector="none", backend="torch")
    ag.classifier = random_classifier
    image = np.full((60, 80, 3), 128, np.uint8)
    assert len(ag.predict(image, boxes=[(10, 10, 50, 50)])) == 1
    with pytest.raises(ImageLoadError, match=r"box 0 \(100, 10, 150, 50\) lies outside the 80x60"):
        ag.predict(image, boxes=[(100, 10, 150, 50)])


def test_too_large_quotes_the_limit_in_force(tmp_path):
    """The same limit in the message whether our size check or Pillow's bomb guard refused."""
    from PIL import Image

    from agegender.images import ImageLoadError, load_image

    path = tmp_path / "big.png"
    Image.new("L", (5000, 5000)).save(path)
    for max_pixels in (1_000_000, 10_000):
        with pytest.raises(ImageLoadError, match=f"limit {max_pixels} pixels"):
            load_image(path, max_pixels=max_pixels)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1_000_000  # Pillow's hard limit (2x) refuses in open() now
    try:
        with pytest.raises(ImageLoadError, match="5000x5000 \\(limit 1500000 pixels\\)"):
            load_image(path, max_pixels=1_500_000)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_the_web_demo_leaves_no_uploads_behind(monkeypatch):
    from agegender.app import _private_root, private_temporaries

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    with private_temporaries() as folder:
        assert os.environ["GRADIO_TEMP_DIR"].startswith(str(folder))
        assert _private_root() == str(folder)
        (folder / "uploads").mkdir()
        (folder / "uploads" / "face.jpg").write_bytes(b"x")
    assert not folder.exists() and "GRADIO_TEMP_DIR" not in os.environ


def test_a_missing_input_leaves_no_output_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={tmp_path / 'missing'}",
         f"output={tmp_path / 'out'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and "neither a file nor a folder" in run.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("a user's file")
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={tmp_path / 'missing'}",
         f"output={tmp_path / 'kept'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and (tmp_path / "kept" / "mine.txt").exists()


def test_a_folder_listed_but_not_entered_is_skipped_not_fatal(tmp_path, monkeypatch) -> None:
    """A sub-folder with read but no execute permission (mode 644, as a user, not root): its
    names are listed, but asking whether an entry is a file raises PermissionError. The scan
    lists those entries as skipped and goes on (it used to end the run with a traceback)."""
    (tmp_path / "ok.jpg").write_bytes(b"x")
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "photo.jpg").write_bytes(b"x")
    _deny_entries(monkeypatch, locked)
    inputs, skipped = scan_inputs(tmp_path)
    assert inputs == [tmp_path / "ok.jpg"]
    assert set(skipped) == {locked / "inner", locked / "photo.jpg"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_folder_listed_but_not_entered_for_real(tmp_path) -> None:
    """The same with the folder's real mode 644 (the test above simulates it for root)."""
    (tmp_path / "ok.jpg").write_bytes(b"x")
    locked = tmp_path / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "photo.jpg").write_bytes(b"x")
    locked.chmod(0o644)
    try:
        inputs, skipped = scan_inputs(tmp_path)
    finally:
        locked.chmod(0o755)
    assert inputs == [tmp_path / "ok.jpg"]
    assert set(skipped) == {locked / "inner", locked / "photo.jpg"}


def test_output_naming_an_existing_file_is_one_line_and_exit_2(tmp_path) -> None:
    target = tmp_path / "not-a-folder.csv"
    target.write_text("keep me\n")
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={REPO / 'data' / 'samples'}", f"output={target}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "is a file, not a folder" in run.stderr and "Traceback" not in run.stderr
    assert target.read_text() == "keep me\n"


def test_train_py_refuses_a_pickle_payload_in_one_line(tmp_path) -> None:
    """ckpt_path= a pickle that would run code: refused before Lightning reads it, one line
    and exit code 2 (as predict.py), never run."""
    marker = tmp_path / "ran"
    payload = (
        b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )  # pickle protocol 0: os.system("touch <marker>")
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(payload)
    run = subprocess.run(
        [sys.executable, "train.py", f"ckpt_path={evil}", "train=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "unsafe to unpickle" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists()


def test_formula_names_are_escaped_for_spreadsheets_and_resume_reads_them(
    tmp_path, random_classifier, monkeypatch
):
    """A photo named ``=HYPERLINK("x").jpg`` (or starting with + - @) in a relative input:
    its path cell starts with ``'`` so a spreadsheet shows it instead of evaluating it
    (OWASP CSV injection); the project's readers undo it, so resume (a torn write included)
    recognises every file."""
    from agegender.fileio import from_spreadsheet_safe, spreadsheet_safe

    folder = tmp_path / "in"
    names = ['=HYPERLINK("x")', "+1", "-2", "@cmd", "'quoted", "plain"]
    for i, name in enumerate(names):
        _jpeg(folder / f"{name}.jpg", seed=i)
    monkeypatch.chdir(folder)
    out = tmp_path / "out"
    _run(Path("."), out, random_classifier)
    reference = (out / "predictions.csv").read_bytes()
    cells = list(_csv(out / "predictions.csv")["path"])
    assert sorted(cells) == sorted(spreadsheet_safe(f"{n}.jpg") for n in names)
    assert all(c[0] not in "=+-@" for c in cells) and "plain.jpg" in cells
    assert [from_spreadsheet_safe(spreadsheet_safe(n)) for n in names] == names
    again = _run(Path("."), out, random_classifier, resume=True)
    assert again.already_done == len(names) and again.inputs == 0
    for cut in (len(reference) - 5, reference.index(b"'=") + 3):  # torn inside a record
        (out / "predictions.csv").write_bytes(reference[:cut])
        _run(Path("."), out, random_classifier, resume=True)
        assert (out / "predictions.csv").read_bytes() == reference, cut


def test_csv_and_jsonl_runs_into_one_folder_keep_their_own_settings(tmp_path, random_classifier):
    """A CSV run, then a JSON Lines run into the same output: each file has its own settings
    record, so the CSV still resumes (the JSON Lines run used to overwrite its record)."""
    folder = tmp_path / "in"
    _jpeg(folder / "a.jpg")
    _jpeg(folder / "b.jpg", seed=1)
    out = tmp_path / "out"
    _run(folder, out, random_classifier)
    _run(folder, out, random_classifier, format="jsonl")
    assert (out / "predictions.settings.json").is_file()
    assert (out / "predictions.jsonl.settings.json").is_file()
    again = _run(folder, out, random_classifier, resume=True)
    assert again.already_done == 2 and again.inputs == 0
    again = _run(folder, out, random_classifier, format="jsonl", resume=True)
    assert again.already_done == 2 and again.inputs == 0
