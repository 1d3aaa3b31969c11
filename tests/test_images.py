"""load_image: every mode becomes upright H x W x 3 uint8 RGB; every bad file a short reason."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.images import ImageLoadError, load_image


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) * 2 % 256], axis=2).astype(np.uint8)


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A valid PNG header announcing width x height with almost no data (a cheap 'bomb')."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_round_trip_is_exact(tmp_path: Path) -> None:
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _gradient()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (40, 60, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_transparent_pixels_become_white_opaque_ones_keep_colour(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (10, 200, 30, 255)  # opaque green-ish
    rgba[:, 5:] = (0, 0, 0, 0)  # fully transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    assert out.shape == (10, 10, 3)
    assert (out[:, :5] == (10, 200, 30)).all()
    assert (out[:, 5:] == 255).all()


def test_cmyk_jpeg_keeps_its_colour(tmp_path: Path) -> None:
    colour = (200, 100, 50)
    rgb = np.zeros((32, 32, 3), np.uint8) + np.array(colour, np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - colour).max() <= 6


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 4, 128, 255])  # clipping would give 255s


def test_sixteen_bit_grey_png_holding_8_bit_values_equals_the_8_bit_image(tmp_path: Path) -> None:
    """A converter's 16-bit PNG of an 8-bit picture (values 0..255) used to come out black."""
    grey = _gradient()[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    expected = load_image(tmp_path / "g8.png")
    assert expected.max() > 200  # a real picture, not a black one
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png"), expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_rgb_holding_8_bit_values_equals_the_8_bit_image(
    tmp_path: Path, suffix: str
) -> None:
    """16-bit RGB: Pillow keeps only the high byte of each value (all 0 for 8-bit data)."""
    import cv2

    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "c8.png")
    cv2.imwrite(str(tmp_path / f"c16{suffix}"), rgb[:, :, ::-1].astype(np.uint16))
    assert cv2.imread(str(tmp_path / f"c16{suffix}"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    np.testing.assert_array_equal(load_image(tmp_path / f"c16{suffix}"), rgb)


def test_sixteen_bit_rgb_full_range_and_12_bit(tmp_path: Path) -> None:
    """Full 16-bit range: value / 257 (v * 257 -> v exactly); 12-bit data (max 4095): scaled
    by 255 / 4095, not by 255 / 65535 (16x too dark)."""
    import cv2

    rgb = _gradient()
    rgb[0, 0] = 255  # the brightest value present, as in any real exposure
    cv2.imwrite(str(tmp_path / "full.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    np.testing.assert_array_equal(load_image(tmp_path / "full.png"), rgb)
    twelve = np.rint(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "twelve.png"), twelve[:, :, ::-1])
    assert np.abs(load_image(tmp_path / "twelve.png").astype(int) - rgb).max() <= 1


def test_sixteen_bit_rgba_is_composited_over_white(tmp_path: Path) -> None:
    import cv2

    rgba = np.zeros((4, 4, 4), np.uint16)
    rgba[..., :3] = (200 * 257, 100 * 257, 50 * 257)
    rgba[..., 3] = 65535
    rgba[0, 0, 3] = 0  # one transparent pixel
    cv2.imwrite(str(tmp_path / "a.png"), rgba[..., [2, 1, 0, 3]])
    out = load_image(tmp_path / "a.png")
    assert out[1, 1].tolist() == [200, 100, 50] and out[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = _gradient(30, 50)
    # Orientation 6 = "rotate 90 CW to display": store the pixels rotated 90 CCW.
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "r.png", exif=exif)
    out = load_image(tmp_path / "r.png")
    np.testing.assert_array_equal(out, upright)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is not a picture\n" * 4, "not an image"),
    ],
)
def test_bad_bytes_named_jpg(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="truncated image"):
        load_image(path)


def test_huge_image_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    write_huge_png(path, 20000, 20000)
    assert path.stat().st_size < 1000
    with pytest.raises(ImageLoadError, match=r"too large: 20000x20000"):
        load_image(path)
    # Our guard is configurable; PIL's hard limit still refuses 400 MP, with a clear reason.
    with pytest.raises(ImageLoadError, match=r"too large: 20000x20000 \(limit \d+ pixels\)"):
        load_image(path, max_pixels=None)
    with pytest.raises(ImageLoadError, match=r"too large: 300x200"):
        Image.fromarray(_gradient(200, 300)).save(tmp_path / "small.png")
        load_image(tmp_path / "small.png", max_pixels=300 * 200 - 1)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    Image.fromarray(_gradient()).save(path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("agegender.images.open", refuse, raising=False)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_image(path)


def test_permission_denied_real(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.fromarray(_gradient()).save(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reads (simulated test covers it)")
        with pytest.raises(ImageLoadError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_samples_load(samples_dir: Path) -> None:
    for name in ("astronaut.jpg", "camera.png", "obama.jpg", "biden.jpg"):
        out = load_image(samples_dir / name)
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


def test_reduced_decode_of_a_big_jpeg_keeps_coordinates(tmp_path: Path) -> None:
    from agegender.images import load_image_reduced

    big = np.zeros((1800, 2400, 3), np.uint8)
    big[600:1000, 1200:1600] = (250, 20, 20)  # a red square at known full-size coordinates
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    small, scale = load_image_reduced(tmp_path / "big.jpg", min_side=600)
    assert scale == 4.0 and small.shape == (450, 600, 3)
    ys, xs = np.nonzero(small[:, :, 0] > 128)
    assert abs(xs.min() * scale - 1200) <= 8 and abs(ys.max() * scale - 1000) <= 8
    # Never below min_side; PNG (no DCT scaling) and small JPEGs come back full size.
    assert load_image_reduced(tmp_path / "big.jpg", min_side=1000)[1] == 2.0
    assert load_image_reduced(tmp_path / "big.jpg", min_side=1300)[1] == 1.0
    Image.fromarray(big).save(tmp_path / "big.png")
    full, scale = load_image_reduced(tmp_path / "big.png", min_side=600)
    assert scale == 1.0 and full.shape == big.shape


def test_reduced_decode_applies_exif_rotation(tmp_path: Path) -> None:
    from agegender.images import load_image_reduced

    upright = np.zeros((1600, 1200, 3), np.uint8)
    upright[:400, :300] = 255  # white block in the top-left corner when displayed
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "r.jpg", exif=exif, quality=95)
    small, scale = load_image_reduced(tmp_path / "r.jpg", min_side=400)
    assert scale == 4.0 and small.shape == (400, 300, 3)
    assert small[:90, :65].mean() > 240 and small[120:, 90:].mean() < 15


def test_only_the_decoded_formats_plugins_load_and_the_extensions_are_pillows() -> None:
    """Start-up: decoding a JPEG and a PNG and listing the image extensions imports only the
    plugins of DECODED_FORMATS (not Image.init()'s ~45: EPS and PDF never), and the
    extensions are exactly those a full init registers for those formats."""
    code = (
        "import sys\n"
        "from agegender.images import DECODED_FORMATS, image_extensions, load_image\n"
        "load_image('data/samples/obama.jpg'); load_image('data/samples/camera.png')\n"
        "ours = image_extensions()\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('PIL.') and m.endswith('Plugin'))\n"
        "from PIL import Image\n"
        "Image.init()\n"
        "full = {e.lower() for e, f in Image.registered_extensions().items()"
        " if f in DECODED_FORMATS}\n"
        "print(len(loaded), 'PIL.EpsImagePlugin' in loaded, 'PIL.PdfImagePlugin' in loaded,"
        " ours == full, '.jpg' in ours, '.eps' in ours)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["14", "False", "False", "True", "True", "False"]


def _deep_reference(values: np.ndarray, mode: str) -> np.ndarray:
    """The whole-image formula of agegender.images._deep_to_uint8 (float64 copies)."""
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0 and hi <= 255:
        scaled = values
    elif mode != "F" and lo >= 0 and hi <= 65535:
        scaled = values * (255.0 / ((1 << int(hi).bit_length()) - 1))
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("dtype", "high", "mode"),
    [
        (np.uint16, 65535, "I;16"),
        (np.uint16, 4095, "I;16"),
        (np.uint16, 200, "I;16"),
        (np.int32, 70000, "I"),
        (np.float32, 1.0, "F"),
        (np.float32, 9.5, "F"),
    ],  # fmt: skip
)
def test_deep_images_convert_in_strips_bit_exactly_with_bounded_memory(dtype, high, mode):
    """Deep (16/32-bit) pixels become uint8 in strips: the same values as the whole-image
    formula, with memory near the input's (a 6000 x 6000 16-bit RGB PNG peaked at 4.2 GB
    converted whole; 0.5 GB now)."""
    import tracemalloc

    from agegender.images import _deep_to_uint8

    rng = np.random.default_rng(0)
    values = (rng.random((1500, 1000, 3)) * high).astype(dtype)
    tracemalloc.start()
    try:
        got = _deep_to_uint8(values, mode)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, _deep_reference(values, mode))
    # the uint8 output plus one strip of float64; whole-image float64 would be 24x the output
    assert peak < got.nbytes + 3 * 8 * (1 << 20), peak
