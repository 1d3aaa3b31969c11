"""Annotated copies of the inputs: a box and "gender, age" label per face."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Container
from pathlib import Path

import cv2
import numpy as np

from agegender.fileio import atomic_write
from agegender.inference.results import ImageResult

#: Suffixes OpenCV writes as-is; anything else (and video frames) is saved as .jpg beside.
WRITABLE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
#: Box colours (BGR): male blue-ish, female red-ish, unknown grey.
COLOURS: dict[str, tuple[int, int, int]] = {
    "male": (230, 140, 30),
    "female": (60, 40, 230),
    "": (160, 160, 160),
}


def annotated_path(
    root: str | os.PathLike[str], relpath: str, taken: Container[str] = frozenset()
) -> Path:
    """``a/b.png`` -> ROOT/a/b.png, ``v.mp4#frame=30`` -> ROOT/v.mp4_frame000030.jpg,
    ``c.gif`` -> ROOT/c.gif.jpg, next to their source's. ``taken``: the run's input paths
    (relative): a made-up name that is also an input's (``c.gif.jpg`` beside ``c.gif``)
    becomes ``c.gif.1.jpg``, so every input keeps its own copy."""
    match = re.fullmatch(r"(.*)#frame=(\d+)", relpath)
    if match:
        name = f"{match.group(1)}_frame{int(match.group(2)):06d}.jpg"
        return Path(root) / free_name(name, taken)
    if Path(relpath).suffix.lower() in WRITABLE_SUFFIXES:
        return Path(root) / relpath
    return Path(root) / free_name(relpath + ".jpg", taken)


def free_name(relpath: str, taken: Container[str]) -> str:
    """``relpath``, or ``<stem>.<k>.<suffix>`` (k = 1, 2 ...) while an input has that name."""
    if relpath not in taken:
        return relpath
    stem, _, suffix = relpath.rpartition(".")
    k = 1
    while f"{stem}.{k}.{suffix}" in taken:
        k += 1
    return f"{stem}.{k}.{suffix}"


def draw(result: ImageResult, blur: bool = False) -> np.ndarray:
    """A BGR copy of the input (at its decoded size) with every face boxed and labelled
    (``blur``: every face blurred instead, nothing written on it)."""
    canvas = cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR)
    boxes = [tuple(v / result.scale for v in face.box) for face in result.faces]
    labels = [face.label() for face in result.faces]
    return draw_faces(canvas, boxes, labels, blur=blur)


#: Blurred faces: the box grown by this fraction of its size on each side (hair, ears and
#: chin are outside a detector's box), then reduced to at most this many cells across.
BLUR_MARGIN = 0.25
BLUR_CELLS = 6


def blur_faces(canvas: np.ndarray, boxes: list[tuple[float, ...]]) -> np.ndarray:
    """Make every face in ``boxes`` unrecognisable on the BGR ``canvas`` (in place, and
    returned): the grown box is pixelated to a few cells and smoothed. Pixelating throws
    the detail away (a Gaussian blur alone can be partly undone)."""
    height, width = canvas.shape[:2]
    for box in boxes:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        mx, my = (x2 - x1) * BLUR_MARGIN, (y2 - y1) * BLUR_MARGIN
        left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
        right, bottom = min(width, int(math.ceil(x2 + mx))), min(height, int(math.ceil(y2 + my)))
        if right - left < 2 or bottom - top < 2:
            continue
        region = canvas[top:bottom, left:right]
        cells = max(1, min(BLUR_CELLS, right - left, bottom - top))
        small = cv2.resize(region, (cells, cells), interpolation=cv2.INTER_AREA)
        coarse = cv2.resize(small, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
        side = max(3, ((min(right - left, bottom - top) // 4) | 1))
        canvas[top:bottom, left:right] = cv2.GaussianBlur(coarse, (side, side), 0)
    return canvas


def draw_faces(
    canvas: np.ndarray,
    boxes: list[tuple[float, ...]],
    labels: list[tuple[str, str]],
    blur: bool = False,
) -> np.ndarray:
    """Draw each box with its ``(text, gender)`` label on the BGR ``canvas`` (in place, and
    returned); shared by annotated copies, annotated videos and stream recordings.
    ``blur``: blur every face instead (:func:`blur_faces`), with no box and no label."""
    if blur:
        return blur_faces(canvas, boxes)
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    font_scale = max(0.4, max(height, width) / 1200)
    for box, (text, gender) in zip(boxes, labels, strict=True):
        x1, y1, x2, y2 = (round(v) for v in box)
        colour = COLOURS.get(gender, COLOURS[""])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(y2 + th + 4, height - base)
        cv2.rectangle(canvas, (x1, ty - th - 2), (x1 + tw + 2, ty + base), colour, cv2.FILLED)
        cv2.putText(
            canvas,
            text,
            (x1 + 1, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return canvas


def save_annotated(
    result: ImageResult,
    root: str | os.PathLike[str],
    taken: Container[str] = frozenset(),
    blur: bool = False,
) -> Path | None:
    """Write the annotated copy (inputs that decoded, with or without faces); None otherwise.
    ``taken``: see :func:`annotated_path`; ``blur``: faces blurred, not labelled."""
    if result.image is None:
        return None
    path = annotated_path(root, result.item.relpath, taken)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fast PNG compression: level 3 (OpenCV's default) takes ~90 ms for a 2 MP image.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if path.suffix.lower() == ".png" else []
    ok, encoded = cv2.imencode(path.suffix.lower(), draw(result, blur), params)
    if not ok:
        raise OSError(f"cannot encode {path}")
    # Written beside and renamed, so a killed run never leaves a half-written copy under
    # the real name (resume removes the temporaries: agegender.fileio.remove_temporaries).
    atomic_write(path, lambda fh: fh.write(encoded.tobytes()), fsync=False)
    return path
