"""Every kind of bad or unusual input gets its row; nothing stops the run (issue 2, item 7)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agegender.faces import build_detector
from agegender.images import load_image
from agegender.inference import predict
from agegender.models import LeviHassnerNet
from agegender.runtime.torch_classifier import FaceClassifier


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A valid PNG header announcing width x height, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.fixture(scope="module")
def face_rgb(samples_dir: Path) -> np.ndarray:
    return cv2.resize(
        load_image(samples_dir / "obama.jpg"), (320, 400), interpolation=cv2.INTER_AREA
    )


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, face_rgb: np.ndarray) -> Path:
    root = tmp_path_factory.mktemp("bad")
    face = Image.fromarray(face_rgb)
    (root / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    face.save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "text.jpg").write_text("I am a text file with a .jpg name\n")
    face.convert("L").save(root / "gray.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 200))
    rgba.save(root / "rgba.png")
    face.convert("CMYK").save(root / "cmyk.jpg")
    deep = np.asarray(face.convert("L")).astype(np.uint16) * 257
    Image.fromarray(deep).save(root / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    face.transpose(Image.Transpose.ROTATE_90).save(root / "exif_rotated.jpg", exif=exif)
    write_huge_png(root / "huge.png", 20000, 20000)
    face.save(root / "locked.jpg")
    y, x = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], 2).astype(np.uint8)).save(
        root / "noface.png"
    )
    Image.fromarray(np.vstack([np.hstack([face_rgb] * 2)] * 2)).save(root / "many.jpg")
    return root


@pytest.fixture(scope="module")
def reference_box(face_rgb: np.ndarray) -> np.ndarray:
    """Where MTCNN finds the face in the upright RGB original."""
    return np.array(build_detector("mtcnn").detect(face_rgb)[0].box)


@pytest.fixture(scope="module")
def classifier() -> FaceClassifier:
    torch.manual_seed(0)
    return FaceClassifier(LeviHassnerNet())


@pytest.fixture(scope="module")
def result(bad_folder: Path, classifier: FaceClassifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    locked = bad_folder / "locked.jpg"
    locked.chmod(0)
    simulate = os.access(locked, os.R_OK)  # root reads anything: simulate the refusal
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if simulate and Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("agegender.images.open", guarded_open, raising=False)
        summary = predict(bad_folder, out, build_detector("mtcnn"), classifier)
    locked.chmod(0o644)
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    for column in ("face", "x1", "y1", "x2", "y2", "det_score"):
        df[column] = pd.to_numeric(df[column], errors="coerce")  # "" -> NaN on failed rows
    return summary, df, out


def _rows(df: pd.DataFrame, folder: Path, name: str) -> pd.DataFrame:
    return df[df["path"] == str(folder / name)]


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("zero.jpg", "error: empty file"),
        ("truncated.jpg", "error: truncated image"),
        ("text.jpg", "error: not an image"),
        ("huge.png", "error: too large: 20000x20000"),
        ("locked.jpg", "error: permission denied"),
        ("noface.png", "no_face"),
    ],
)
def test_failing_inputs_get_one_clear_row(result, bad_folder, name, status) -> None:
    _, df, _ = result
    rows = _rows(df, bad_folder, name)
    assert len(rows) == 1
    assert rows["status"].iloc[0].startswith(status)
    assert rows["age"].iloc[0] == "" and pd.isna(rows["x1"].iloc[0])


@pytest.mark.parametrize(
    "name", ["gray.jpg", "rgba.png", "cmyk.jpg", "deep16.png", "exif_rotated.jpg"]
)
def test_unusual_formats_still_find_the_face(result, bad_folder, reference_box, name) -> None:
    _, df, out = result
    rows = _rows(df, bad_folder, name)
    assert list(rows["status"]) == ["ok"]
    # Same place as in the upright RGB original (EXIF applied before detection).
    box = rows[["x1", "y1", "x2", "y2"]].to_numpy(float)[0]
    np.testing.assert_allclose(box, reference_box, atol=12)
    assert (out / "annotated" / name).is_file()


def test_many_faces_one_row_each(result, bad_folder) -> None:
    _, df, _ = result
    rows = _rows(df, bad_folder, "many.jpg")
    assert list(rows["face"]) == [0.0, 1.0, 2.0, 3.0] and (rows["status"] == "ok").all()
    cx, cy = (rows.x1 + rows.x2) / 2 // 320, (rows.y1 + rows.y2) / 2 // 400
    centres = sorted(zip(cx, cy, strict=True))
    assert centres == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one per tile


def test_every_input_has_a_row_and_summary_counts(result, bad_folder) -> None:
    summary, df, _ = result
    files = sorted(p.name for p in bad_folder.iterdir())
    assert sorted({Path(p).name for p in df["path"]}) == files
    assert summary.inputs == len(files) == 12
    assert summary.errors == 5 and summary.no_face == 1
    assert summary.faces == 4 + 5  # many.jpg + the five readable single-face files


def test_empty_folder(tmp_path, classifier) -> None:
    (tmp_path / "empty").mkdir()
    summary = predict(tmp_path / "empty", tmp_path / "out", build_detector("none"), classifier)
    df = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(df) == 0 and "status" in df.columns
    assert summary.inputs == 0 and summary.errors == 0
