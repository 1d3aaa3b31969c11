"""Annotated copies as a person sees them: every label inside the image and clear of the
others (group photos, faces at the edges, crowded video frames), the probability in the
label, unsure answers drawn dashed, and a "no face found" banner. Each test renders a real
PNG and reads it back: the layout's rectangles are checked, and the pixels that were drawn."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES

from agegender.images import load_image
from agegender.inference.annotate import (
    MIN_FONT_SCALE,
    NO_FACE_TEXT,
    draw,
    draw_faces,
    layout_labels,
    save_annotated,
)
from agegender.inference.inputs import InputItem
from agegender.inference.results import UNSURE_BELOW, FaceResult, ImageResult, Label

#: Set to a folder to keep the rendered PNGs (to look at them).
KEEP_ENV = "AGEGENDER_ANNOTATE_PNGS"


def _face(box: tuple[float, float, float, float], gender: str, gp: float, age: str, ap: float):  # noqa: ANN202
    return FaceResult(box=box, score=1.0, gender=gender, gender_prob=gp, age=age, age_prob=ap)


def _photo(width: int, height: int) -> np.ndarray:
    """A BGR canvas with the sample portraits tiled on it (something real under the labels)."""
    tile = cv2.resize(load_image(SAMPLES / "obama.jpg")[..., ::-1], (64, 80))
    reps = (height // 80 + 1, width // 64 + 1, 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


def _render(tmp_path: Path, name: str, canvas: np.ndarray, boxes: list, labels: list) -> Path:
    """draw_faces onto ``canvas``, written as a PNG and read back (what a person opens)."""
    path = tmp_path / name
    assert cv2.imwrite(str(path), draw_faces(canvas, boxes, labels))
    if os.environ.get(KEEP_ENV):
        shutil.copy(path, Path(os.environ[KEEP_ENV]) / name)
    return path


def _assert_readable(placements: list, width: int, height: int) -> None:
    """Every label rectangle inside the image, none overlapping another, font readable."""
    for p in placements:
        x1, y1, x2, y2 = p.rect
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, p.rect
        assert p.scale >= MIN_FONT_SCALE - 1e-9
    for a, b in itertools.combinations(placements, 2):
        w = min(a.rect[2], b.rect[2]) - max(a.rect[0], b.rect[0])
        h = min(a.rect[3], b.rect[3]) - max(a.rect[1], b.rect[1])
        assert w <= 0 or h <= 0, (a.rect, b.rect)


def _label_drawn(image: np.ndarray, rect: tuple[int, int, int, int], colour: tuple) -> bool:
    """The rectangle is the label's colour with white text on it (not covered by another)."""
    x1, y1, x2, y2 = rect
    region = image[y1:y2, x1:x2].reshape(-1, 3).astype(int)
    fill = np.all(np.abs(region - np.array(colour)) <= 2, axis=1).mean()
    white = np.all(region >= 200, axis=1).mean()
    return fill > 0.4 and white > 0.03


def test_group_photo_labels_do_not_hide_each_other(tmp_path) -> None:
    """Two people side by side, their labels wider than their faces: above both boxes the
    labels would collide ("female, 15-20" hidden under "male, 8-12"); both stay readable."""
    canvas = _photo(300, 260)
    boxes = [(40, 60, 130, 160), (140, 62, 230, 165)]
    labels = [_face(boxes[0], "male", 1.0, "8-12", 0.71).label(),
              _face(boxes[1], "female", 0.97, "15-20", 0.61).label()]  # fmt: skip
    placements = layout_labels(boxes, [label.text for label in labels], 300, 260)
    _assert_readable(placements, 300, 260)
    image = cv2.imread(str(_render(tmp_path, "group.png", canvas, boxes, labels)))
    assert _label_drawn(image, placements[0].rect, (230, 140, 30))  # male: blue
    assert _label_drawn(image, placements[1].rect, (60, 40, 230))  # female: red


def test_faces_at_the_edges_keep_their_labels_inside(tmp_path) -> None:
    """A face touching the right edge, one at the top, one in the bottom-left corner: no
    label is cut off."""
    width, height = 400, 300
    boxes = [(330, 100, 399, 180), (150, 0, 220, 70), (0, 230, 70, 299)]
    labels = [_face(b, "female", 0.97, "25-32", 0.61).label() for b in boxes]
    placements = layout_labels(boxes, [label.text for label in labels], width, height)
    _assert_readable(placements, width, height)
    image = cv2.imread(str(_render(tmp_path, "edges.png", _photo(width, height), boxes, labels)))
    for place in placements:
        assert _label_drawn(image, place.rect, (60, 40, 230))


def test_crowded_frame_shrinks_labels_but_keeps_them_readable(tmp_path) -> None:
    """A crowded video frame (24 faces of 60 px on 640 x 360): labels shrink, not below
    the readable minimum, and none lies on another."""
    width, height = 640, 360
    boxes = [(10 + 105 * c, 20 + 88 * r, 70 + 105 * c, 80 + 88 * r) for r in range(4)
             for c in range(6)]  # fmt: skip
    labels = [Label(f"#{i} male 0.9{i % 10}, 25-32 0.6{i % 10}", "male") for i in range(24)]
    placements = layout_labels(boxes, [label.text for label in labels], width, height)
    _assert_readable(placements, width, height)
    image = cv2.imread(str(_render(tmp_path, "crowd.png", _photo(width, height), boxes, labels)))
    drawn = sum(_label_drawn(image, p.rect, (230, 140, 30)) for p in placements)
    assert drawn == len(boxes)
    # a big photo's labels scale with it (readable when shown smaller)
    big = layout_labels([(100, 100, 400, 400)], ["male 0.90, 25-32 0.60"], 4000, 3000)
    assert big[0].scale >= 3.5


def test_label_shows_probabilities_and_marks_unsure_answers(tmp_path) -> None:
    sure = _face((20, 40, 120, 140), "female", 0.97, "25-32", 0.61)
    assert sure.label() == Label("female 0.97, 25-32 0.61", "female", False)
    unsure = _face((160, 40, 260, 140), "male", 0.62, "25-32", 0.61)
    assert unsure.label() == Label("male? 0.62, 25-32 0.61", "male", True)
    assert UNSURE_BELOW["gender"] > 0.62
    abstained = _face((0, 0, 1, 1), "male", 0.99, None, 0.2)  # type: ignore[arg-type]
    abstained.abstained = ("age",)
    assert abstained.label() == Label("male 0.99, age? 0.20", "male", True)
    boxes = [sure.box, unsure.box]
    image = cv2.imread(
        str(
            _render(tmp_path, "unsure.png", _photo(300, 200), boxes, [sure.label(), unsure.label()])
        )
    )

    def edge_fill(box: tuple[float, ...], colour: tuple) -> float:
        _, y1, x2, y2 = (int(v) for v in box)
        row = image[y1 + 3 : y2 - 2, x2].astype(int)  # the right edge (labels sit above/below)
        return float(np.all(np.abs(row - np.array(colour)) <= 2, axis=1).mean())

    assert edge_fill(sure.box, (60, 40, 230)) > 0.95  # a solid box
    assert 0.3 < edge_fill(unsure.box, (230, 140, 30)) < 0.75  # dashes


def test_image_without_a_face_gets_a_banner(tmp_path) -> None:
    rgb = load_image(SAMPLES / "camera.png")
    result = ImageResult(InputItem("camera.png", "camera.png"), image=rgb)
    path = save_annotated(result, tmp_path)
    assert path is not None
    image = cv2.imread(str(path))
    original = rgb[..., ::-1]
    assert np.array_equal(image[100:], original[100:])  # the photo itself untouched
    band = image[:20].astype(int)
    assert np.median(band) < np.median(original[:20]) / 2  # darkened under the banner
    assert np.all(image[:30] >= 200, axis=2).sum() > 150  # white text on it
    assert NO_FACE_TEXT == "no face found"
    if os.environ.get(KEEP_ENV):
        shutil.copy(path, Path(os.environ[KEEP_ENV]) / "no_face.png")
    # a face found: no banner
    result.faces = [_face((200, 50, 300, 170), "male", 0.9, "25-32", 0.6)]
    assert np.array_equal(draw(result)[:30, :150], original[:30, :150])


@pytest.mark.parametrize("width", [120, 200])
def test_narrow_image_keeps_a_label_inside(width: int) -> None:
    placements = layout_labels([(5, 5, width - 5, 60)], ["female 0.97, 25-32 0.61"], width, 80)
    x1, y1, x2, y2 = placements[0].rect
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= 80
