"""Decode any image file a user may point us at into one array convention: H x W x 3 uint8 RGB.

Photos arrive rotated by their EXIF tag, as grayscale, palette, RGBA, CMYK or 16-bit files,
truncated by a failed copy, or as something that is not an image at all. Every consumer
(detection, alignment, dataset preprocessing, prediction) wants the same thing, and every
failure must become a short reason a CSV row can carry, so both live here, once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agegender.errors import AgeGenderError

#: Default decompression-bomb guard: PIL's own default limit (~89.5 megapixels, about a
#: 11000 x 8000 photo). A decoded RGB image of that size already takes ~270 MB.
DEFAULT_MAX_PIXELS: int = int(1024 * 1024 * 1024 // 4 // 3)


#: The formats decoded, recognised by CONTENT (``Image.open(formats=...)``), never by the file
#: name: the raster formats cameras, phones, scanners and the web produce. Every other
#: Pillow plugin is never tried: PostScript/EPS (Pillow hands it to Ghostscript, an
#: interpreter), PDF, and the rarely used scientific and game formats.
DECODED_FORMATS: tuple[str, ...] = (
    "JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "ICO",
    "JPEG2000", "PCX", "SGI", "QOI",
)  # fmt: skip


#: Pillow's plugin modules of :data:`DECODED_FORMATS`. Importing just these instead of
#: ``Image.init()``'s ~45 plugins saves ~40 ms of every start (measured: 30 vs 72 ms) and
#: never loads the EPS or PDF plugins at all.
_PLUGINS: tuple[str, ...] = (
    "Jpeg", "Mpo", "Png", "WebP", "Gif", "Bmp", "Tiff", "Ppm", "Tga", "Ico", "Jpeg2K", "Pcx",
    "Sgi", "Qoi",
)  # fmt: skip


@functools.cache
def _register_formats() -> None:
    for name in _PLUGINS:
        # a Pillow built without one: that format is not decoded
        with contextlib.suppress(ImportError):
            importlib.import_module(f"PIL.{name}ImagePlugin")


@functools.cache
def _open_formats() -> tuple[str, ...]:
    """:data:`DECODED_FORMATS` that this Pillow opens (MPO is read by the JPEG plugin)."""
    _register_formats()
    return tuple(f for f in DECODED_FORMATS if f in Image.OPEN)


def image_extensions() -> frozenset[str]:
    """File extensions of :data:`DECODED_FORMATS` (what a folder run treats as images)."""
    _register_formats()
    return frozenset(
        ext.lower()
        for ext, fmt in Image.EXTENSION.items()
        if fmt in DECODED_FORMATS  # all readable (MPO through the JPEG plugin)
    )


class ImageLoadError(AgeGenderError, ValueError):
    """A file could not be turned into an image; ``reason`` is short enough for a CSV cell."""

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read ``path`` as an upright H x W x 3 uint8 RGB array or raise :class:`ImageLoadError`.

    The size guard is checked on the header, before any pixel is decoded, so a 20000 x 20000
    file costs nothing to reject. ``max_pixels=None`` disables our guard (PIL's own hard
    limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies).
    """
    return _load(Path(path), max_pixels, None)[0]


def load_image_reduced(
    path: str | os.PathLike[str],
    min_side: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, float]:
    """Like :func:`load_image`, but a JPEG at least twice ``min_side`` on its longer side is
    decoded at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling, several times faster than a full
    decode plus a resize) while its longer side stays >= ``min_side``.

    Returns ``(image, scale)``: ``scale`` full-size pixels per returned pixel (1.0 when not
    reduced), so coordinates found on ``image`` times ``scale`` are full-size coordinates.
    """
    if min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    return _load(Path(path), max_pixels, min_side)


def load_image_data(
    data: bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> tuple[np.ndarray, float]:
    """An encoded image held in memory (an upload to the prediction server) decoded exactly
    as the same file on disk would be (:func:`load_image_reduced` when ``min_side`` is set,
    else :func:`load_image`): same formats, size guard, reasons and orientation, and never a
    byte written to disk. Returns ``(image, scale)`` as :func:`load_image_reduced` does."""
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    if len(data) == 0:
        raise ImageLoadError("empty file")
    return _decode(bytes(data), None, max_pixels, min_side)


def _load(path: Path, max_pixels: int | None, min_side: int | None) -> tuple[np.ndarray, float]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError("file not found", path) from None
    except PermissionError:
        raise ImageLoadError("permission denied", path) from None
    if path.is_dir():
        raise ImageLoadError("is a directory", path)
    if size == 0:
        raise ImageLoadError("empty file", path)
    return _decode(path, path, max_pixels, min_side)


def _open(source: Path | bytes) -> BinaryIO:
    """The encoded image as a binary file: the file on disk, or the bytes in memory."""
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115


def _decode(
    source: Path | bytes, path: Path | None, max_pixels: int | None, min_side: int | None
) -> tuple[np.ndarray, float]:
    """The one decoder of files and in-memory uploads; ``path`` names the file in errors."""
    try:
        with _open(source) as fp, Image.open(fp, formats=_open_formats()) as im:
            _check_size(im.size, max_pixels, path)
            if _is_deep_colour(im):
                deep = _load_deep_colour(source, im)
                if deep is not None:
                    return deep, 1.0
            scale = _draft(im, min_side) if min_side else 1.0
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no copy when already upright
            return _to_rgb_array(im), scale
    except ImageLoadError:
        raise
    except PermissionError:
        raise ImageLoadError("permission denied", path) from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image", path) from None
    except Image.DecompressionBombError as exc:
        size = _header_size(source)
        detail = f"{size[0]}x{size[1]}" if size else f"{_first_number(str(exc))} pixels"
        # the one limit in force: ours when set (PIL's hard limit is higher), else PIL's
        limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageLoadError(f"too large: {detail} (limit {limit} pixels)", path) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ImageLoadError("permission denied", path) from None
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "premature end" in text:
            raise ImageLoadError("truncated image", path) from None
        raise ImageLoadError(f"corrupt image ({text})", path) from None
    except (SyntaxError, ValueError, EOFError) as exc:
        # PIL plugins report malformed headers/chunks with these.
        raise ImageLoadError(f"corrupt image ({exc})", path) from None
    except MemoryError:
        raise ImageLoadError("out of memory while decoding", path) from None


def _draft(im: Image.Image, min_side: int) -> float:
    """Ask the JPEG decoder for a power-of-two reduction keeping the longer side >= min_side."""
    width, height = im.size
    factor = max(width, height) // min_side
    if im.format != "JPEG" or factor < 2:
        return 1.0
    result = im.draft(None, (max(1, width // factor), max(1, height // factor)))
    if result is None:
        return 1.0
    _, box = result
    return width / box[2]  # exactly 2, 4 or 8 (the decoded image is ceil(size / scale))


def _check_size(size: tuple[int, int], max_pixels: int | None, path: Path | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"invalid size: {width}x{height}", path)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(f"too large: {width}x{height} (limit {max_pixels} pixels)", path)


def _header_size(source: Path | bytes) -> tuple[int, int] | None:
    """Width and height from the header alone, for the error message of an image so large
    that ``Image.open`` itself refuses it (PIL checks the size inside ``open``, before we can
    read ``im.size``). Goes through PIL's format plugins as ``Image.open`` does, minus the
    check, rather than switching PIL's process-wide limit off."""
    _register_formats()
    name = "" if isinstance(source, bytes) else str(source)
    with _open(source) as fp:
        prefix = fp.read(16)
        for fmt in (f for f in Image.ID if f in DECODED_FORMATS):
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            fp.seek(0)
            try:
                return factory(fp, name).size
            except Exception:  # noqa: BLE001 - any plugin failure: try the next format
                continue
    return None


def _first_number(text: str) -> str:
    for token in text.replace("(", " ").split():
        if token.isdigit():
            return token
    return "?"


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """A PIL image in memory (any mode, any EXIF orientation) -> upright H x W x 3 uint8 RGB,
    converted exactly as files are (:func:`load_image`)."""
    upright = ImageOps.exif_transpose(im)
    return _to_rgb_array(upright if upright is not None else im)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> H x W x 3 uint8 RGB, keeping the full dynamic range of deep images."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im)  # writable, unlike np.asarray of a PIL image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return np.repeat(_deep_to_uint8(np.asarray(im), mode)[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        # Transparent pixels hold arbitrary colours (often black); show them as white paper.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")).copy()
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's converters are exact for these.
    return np.asarray(im.convert("RGB")).copy()


def _deep_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit and 32-bit images (any number of channels): scale, never clip, to 0..255.

    Integer data is scaled by the range it actually uses, because 16-bit files often do not
    use all 16 bits: converters store 8-bit pictures in 16-bit PNGs (values 0..255), and
    cameras and scanners write 10-, 12- or 14-bit data. Dividing those by 257 gives a black
    picture (and no face). The rule, on the image's maximum value ``hi`` (over all channels,
    so colours keep their balance):

    - ``hi <= 255``: 8-bit data, taken as is (a 16-bit PNG of an 8-bit picture equals it);
    - ``hi <= 65535``: the bit depth in use, ``b = hi.bit_length()`` (9..16), is the white
      point: values are scaled by ``255 / (2**b - 1)``; full-range 16-bit data (b = 16) is
      divided by 257 as before, 12-bit data (max 4095 or anything above 2047) by 4095/255.
      A dark full-range picture whose brightest pixel is below 2**15 is brightened
      accordingly, which is what face detection wants anyway;
    - float images (``F``) in 0..1 are multiplied by 255; anything else (negative values,
      32-bit integers beyond 16 bits, floats beyond 1) is stretched by its own min/max so the
      picture stays visible.

    Converted in strips of rows: memory stays the input plus its uint8 output, as for an
    8-bit image (whole-image float64 copies took 4 GB for one 6000 x 6000 16-bit PNG).
    """
    out = np.empty(values.shape, dtype=np.uint8)
    if values.size == 0:
        return out
    lo, hi = float(values.min()), float(values.max())
    offset, scale = 0.0, 1.0
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif mode != "F" and lo >= 0 and hi <= 65535:
        scale = 255.0 / ((1 << int(hi).bit_length()) - 1)
    else:
        offset, scale = lo, (255.0 / (hi - lo) if hi > lo else 0.0)
    row_values = max(1, values.size // max(1, values.shape[0]))
    rows = max(1, _STRIP_VALUES // row_values)
    for start in range(0, values.shape[0], rows):
        strip = values[start : start + rows].astype(np.float64)
        strip -= offset
        strip *= scale
        np.rint(strip, out=strip)
        np.clip(strip, 0, 255, out=strip)
        out[start : start + rows] = strip
    return out


#: Values converted at once by :func:`_deep_to_uint8` (8 MB of float64).
_STRIP_VALUES = 1 << 20


def _is_deep_colour(im: Image.Image) -> bool:
    """An RGB(A) file with 16 bits per channel: Pillow would keep only the high byte of each
    value (its RGB modes are 8-bit), which turns 8-bit data stored in 16 bits black."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0].args
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode


#: EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _load_deep_colour(source: Path | bytes, im: Image.Image) -> np.ndarray | None:
    """A 16-bit RGB(A) file decoded with all its bits (OpenCV), scaled by
    :func:`_deep_to_uint8`, alpha over white, EXIF orientation applied; None when OpenCV
    cannot decode it (Pillow's 8-bit reading is then the fallback)."""
    import cv2

    if isinstance(source, bytes):
        data = np.frombuffer(source, dtype=np.uint8)
    else:
        data = np.fromfile(source, dtype=np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.dtype != np.uint16 or decoded.ndim != 3:
        return None
    if decoded.shape[:2] != (im.size[1], im.size[0]) or decoded.shape[2] not in (3, 4):
        return None
    rgb = _deep_to_uint8(decoded[:, :, 2::-1], "I;16")
    if decoded.shape[2] == 4:
        alpha = _deep_to_uint8(decoded[:, :, 3], "I;16").astype(np.float32)[:, :, None] / 255
        rgb = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    orientation = im.getexif().get(0x0112)
    if orientation in _ORIENTATION:
        rgb = np.array(Image.fromarray(rgb).transpose(_ORIENTATION[orientation]))
    return np.ascontiguousarray(rgb)
