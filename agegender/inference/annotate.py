"""Annotated copies of the inputs: a box and "gender, age" label per face."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Container, Sequence
from dataclasses import dataclass
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
    (``blur``: every face blurred instead, nothing written on it). An image without a face
    gets a "no face found" banner, so that a copy without marks is never mistaken for one
    that was not looked at."""
    canvas = cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR)
    boxes = [tuple(v / result.scale for v in face.box) for face in result.faces]
    labels = [face.label() for face in result.faces]
    if not result.faces and result.error is None:
        return draw_banner(canvas, NO_FACE_TEXT)
    return draw_faces(canvas, boxes, labels, blur=blur)


#: The banner of an image in which no face was found.
NO_FACE_TEXT = "no face found"
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: The smallest label font (OpenCV scale; capitals ~9 px high): crowded frames shrink their
#: labels down to this and no further, so a label stays readable at 100 % zoom.
MIN_FONT_SCALE = 0.4
#: Each step of shrinking the labels of a crowded frame.
SHRINK = 0.85


def font_for(width: int, height: int) -> tuple[float, int]:
    """(font scale, stroke thickness) of labels on a ``width`` x ``height`` image: labels
    grow with the image, so that they keep their size relative to the faces when shown
    scaled to a screen or a thumbnail."""
    side = max(width, height)
    return max(MIN_FONT_SCALE, side / 1000), max(1, round(side / 500))


def draw_banner(canvas: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a dark band across the top of the BGR ``canvas`` (in place, and
    returned), its font shrunk to fit a narrow image."""
    height, width = canvas.shape[:2]
    scale, thickness = font_for(width, height)
    scale *= 1.5
    pad = max(3, round(6 * scale))
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    if tw + 2 * pad > width:
        scale *= max(0.1, (width - 2 * pad) / max(tw, 1))
        thickness = max(1, min(thickness, round(scale * 2)))
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    band = min(height, th + base + 2 * pad)
    region = canvas[:band]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)  # darkened, still visible
    cv2.putText(canvas, text, (pad, pad + th), FONT, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)  # fmt: skip
    return canvas


@dataclass(frozen=True)
class LabelPlacement:
    """Where one face's label goes: its background rectangle ``rect`` (x1, y1, x2, y2,
    exclusive ends, inside the image), the text's baseline ``origin`` and its font."""

    rect: tuple[int, int, int, int]
    origin: tuple[int, int]
    scale: float
    thickness: int


def _overlap(a: tuple[int, int, int, int], b: tuple[float, ...]) -> float:
    """Area shared by two (x1, y1, x2, y2) rectangles (0 when they only touch)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(w * h) if w > 0 and h > 0 else 0.0


def _overlaps(rects: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per row of ``rects`` (K x 4), its summed overlap area with all ``others`` (M x 4)."""
    if len(others) == 0:
        return np.zeros(len(rects))
    w = np.minimum(rects[:, None, 2], others[None, :, 2]) - np.maximum(
        rects[:, None, 0], others[None, :, 0]
    )
    h = np.minimum(rects[:, None, 3], others[None, :, 3]) - np.maximum(
        rects[:, None, 1], others[None, :, 1]
    )
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


def _candidates(box: tuple[float, ...], w: int, h: int, width: int, height: int) -> np.ndarray:
    """Top-left corners (K x 2) to try for a ``w`` x ``h`` label of ``box``, best first:
    above the box, below it, inside its top and bottom, then rows further above and below;
    each at the box's left edge, its right edge and its middle, then half and whole label
    widths further out; every corner moved into the image (a face at the right edge gets
    its label shifted left, not cut off)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    tops = [y1 - h, y2, y1, y2 - h]
    tops += [y1 - h * k for k in (2, 3, 4)] + [y2 + h * (k - 1) for k in (2, 3, 4)]
    lefts = [x1, x2 - w, (x1 + x2 - w) / 2]
    lefts += [x1 - w * k / 2 for k in (1, 2)] + [x2 - w + w * k / 2 for k in (1, 2)]
    grid = np.array([(left, top) for top in tops for left in lefts])
    corners = np.empty(grid.shape, dtype=np.int64)
    corners[:, 0] = np.clip(np.round(grid[:, 0]), 0, max(0, width - w))
    corners[:, 1] = np.clip(np.round(grid[:, 1]), 0, max(0, height - h))
    return corners  # repeats (corners moved to the same place) cost nothing: first wins


def _fit(
    text: str, scale: float, thickness: int, width: int
) -> tuple[float, tuple[int, int], int, int]:
    """(scale, text size, baseline, padding) of ``text``: at ``scale``, or smaller on an
    image narrower than the label (a smaller label beats one cut off at the edge)."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(1, round(3 * scale))
    if tw + 2 * pad > width and tw > 0:
        scale *= max(0.2, (width - 2 * pad) / tw)
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    return scale, (tw, th), base, pad


def layout_labels(
    boxes: Sequence[tuple[float, ...]],
    texts: Sequence[str],
    width: int,
    height: int,
    scale: float | None = None,
    thickness: int | None = None,
) -> list[LabelPlacement]:
    """A label rectangle per box, inside the ``width`` x ``height`` image and not
    overlapping one another (a greedy layout: faces top to bottom, each label at the first
    of :func:`_candidates` that overlaps no label already placed, and covers as little of
    the other faces as it can). When some label finds no free place the whole frame is laid
    out again with a smaller font, down to :data:`MIN_FONT_SCALE`; there the least
    overlapping place is taken. No library is used: matplotlib's adjustText and the like
    move labels iteratively on figures, not on pixel rectangles of an image, and this greedy
    pass (numpy over ~70 places per label) takes ~1 ms for 3 faces and ~25 ms for a crowded
    frame of 24 on 2 EPYC cores, cheap enough for every frame of an annotated video."""
    base_scale, base_thickness = font_for(width, height)
    scale = base_scale if scale is None else scale
    thickness = base_thickness if thickness is None else thickness
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1], boxes[i][0]))
    others = np.array([[float(v) for v in b[:4]] for b in boxes]).reshape(-1, 4)
    while True:
        placed: dict[int, LabelPlacement] = {}
        crowded = False
        for i in order:
            own, (tw, th), base, pad = _fit(texts[i], scale, thickness, width)
            w, h = min(width, tw + 2 * pad), min(height, th + base + 2 * pad)
            corners = _candidates(boxes[i], w, h, width, height)
            rects = np.concatenate([corners, corners + (w, h)], axis=1)
            placed_rects = np.array([p.rect for p in placed.values()]).reshape(-1, 4)
            clash = _overlaps(rects, placed_rects)
            hidden = _overlaps(rects, others[np.arange(len(boxes)) != i])
            # fewest label pixels overlapped, then fewest face pixels covered, then order
            k = int(np.lexsort((np.arange(len(rects)), hidden, clash))[0])
            if clash[k] > 0 and scale > MIN_FONT_SCALE:
                crowded = True  # this font cannot work: no need to place the rest
                break
            left, top, right, bottom = (int(v) for v in rects[k])
            placed[i] = LabelPlacement(
                (left, top, right, bottom), (left + pad, top + pad + th), own, thickness
            )
        if not crowded or scale <= MIN_FONT_SCALE:
            return [placed[i] for i in range(len(boxes))]
        scale = max(MIN_FONT_SCALE, scale * SHRINK)
        thickness = max(1, min(thickness, round(scale * 2)))


def _dashed_rectangle(
    canvas: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], colour: tuple[int, int, int],
    thickness: int,
) -> None:  # fmt: skip
    """A box drawn in dashes: how an unsure answer's face is marked."""
    (x1, y1), (x2, y2) = p1, p2
    dash = max(4, 4 * thickness)
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True),
                                    (y1, y2, x1, False), (y1, y2, x2, False)):  # fmt: skip
        for start in range(a, b, 2 * dash):
            end = min(start + dash, b)
            if horizontal:
                cv2.line(canvas, (start, fixed), (end, fixed), colour, thickness)
            else:
                cv2.line(canvas, (fixed, start), (fixed, end), colour, thickness)


#: Blurred faces: the box grown by this fraction of its size on each side (hair, ears and
#: chin are outside a detector's box), then reduced to at most this many cells across.
BLUR_MARGIN = 0.25
BLUR_CELLS = 6


def blur_faces(canvas: np.ndarray, boxes: Sequence[tuple[float, ...]]) -> np.ndarray:
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
    boxes: Sequence[tuple[float, ...]],
    labels: Sequence[tuple[str, ...]],
    blur: bool = False,
) -> np.ndarray:
    """Draw each box with its label (a :class:`~agegender.inference.results.Label`, or a
    plain ``(text, gender)`` pair) on the BGR ``canvas`` (in place, and returned); shared by
    annotated copies, annotated videos and stream recordings. Labels are placed by
    :func:`layout_labels` (inside the image, never on one another); a label that had to
    move away from its face is joined to it by a thin line; an unsure answer's box is
    dashed. ``blur``: blur every face instead (:func:`blur_faces`), with no box and no
    label."""
    if blur:
        return blur_faces(canvas, boxes)
    height, width = canvas.shape[:2]
    texts = [str(label[0]) for label in labels]
    placements = layout_labels(boxes, texts, width, height)
    box_thickness = max(2, font_for(width, height)[1])  # a 1 px dashed box is hard to see
    for box, label, place in zip(boxes, labels, placements, strict=True):
        x1, y1, x2, y2 = (round(v) for v in box[:4])
        colour = COLOURS.get(str(label[1]), COLOURS[""])
        if len(label) > 2 and label[2]:
            _dashed_rectangle(canvas, (x1, y1), (x2, y2), colour, box_thickness)
        else:
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, box_thickness)
        lx1, ly1, lx2, ly2 = place.rect
        if _overlap((lx1 - 2, ly1 - 2, lx2 + 2, ly2 + 2), (x1, y1, x2 + 1, y2 + 1)) == 0:
            centre = ((lx1 + lx2) // 2, (ly1 + ly2) // 2)  # the label moved off its face
            on_box = (min(max(centre[0], x1), x2), min(max(centre[1], y1), y2))
            on_label = (min(max(on_box[0], lx1), lx2 - 1), min(max(on_box[1], ly1), ly2 - 1))
            cv2.line(canvas, on_label, on_box, colour, 1, cv2.LINE_AA)
        cv2.rectangle(canvas, (lx1, ly1), (lx2 - 1, ly2 - 1), colour, cv2.FILLED)
        cv2.putText(canvas, str(label[0]), place.origin, FONT, place.scale, (255, 255, 255),
                    place.thickness, cv2.LINE_AA)  # fmt: skip
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
