"""Detectors find the sample faces in original-image coordinates; alignment is a similarity
warp onto the fixed template (or a box crop / whole-image resize without landmarks)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender.faces import (
    Face,
    align_face,
    box_crop,
    build_detector,
    crop_box,
    similarity_matrix,
    template,
)
from agegender.images import load_image
from agegender.spec import ADIENCE_FRAMING, LEGACY_FRAMING, TEMPLATE_112, resolve_framing

SAMPLES = ("astronaut.jpg", "camera.png", "obama.jpg", "biden.jpg")


def _smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=2).astype(np.uint8)


def test_face_rejects_bad_landmarks() -> None:
    with pytest.raises(ValueError, match="shape"):
        Face(box=(0, 0, 1, 1), score=1.0, landmarks=np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("framing", [ADIENCE_FRAMING, LEGACY_FRAMING], ids=lambda f: f.name)
def test_template_is_inside_the_crop_and_ordered(framing) -> None:
    t = template(256, framing)
    assert t.shape == (5, 2)
    assert (t > 0.15 * 256).all() and (t < 0.85 * 256).all()  # margin: whole head visible
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # left/right as seen
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above nose above mouth


def test_legacy_framing_is_the_old_constants_bit_for_bit() -> None:
    """Models that store no framing are served with the legacy one: the tight 112 template
    shrunk by 2/3 as before (the same float operations, so the same pixels)."""
    tight = np.array(TEMPLATE_112, dtype=np.float64)
    old = ((0.5 + (tight / 112.0 - 0.5) * (2.0 / 3.0)) * 256).astype(np.float32)
    assert np.array_equal(template(256, LEGACY_FRAMING), old)
    assert LEGACY_FRAMING.box_scale == 1.6 and LEGACY_FRAMING.box_centre_y == 0.5
    assert box_crop(LEGACY_FRAMING, ((0.0, 0.0),) * 5) == (1.6, (0.5, 0.5))


def test_alignment_maps_landmarks_onto_the_template() -> None:
    # Landmarks = template under a known rotation/scale/shift: the fitted transform inverts it.
    angle, scale, shift = np.deg2rad(25.0), 1.7, np.array([40.0, 15.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = template(256, ADIENCE_FRAMING)
    landmarks = (t @ rot.T + shift).astype(np.float32)
    matrix = similarity_matrix(landmarks, 256, ADIENCE_FRAMING)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, t, atol=1e-2)

    image = _smooth(600, 700)
    aligned = align_face(image, Face((0, 0, 10, 10), 1.0, landmarks), 256, ADIENCE_FRAMING)
    assert aligned.shape == (256, 256, 3) and aligned.dtype == np.uint8
    for (u, v), (x, y) in zip(t, landmarks, strict=True):
        expected = image[round(y), round(x)].astype(int)
        assert np.abs(aligned[round(v), round(u)].astype(int) - expected).max() <= 3


def test_framing_reaches_the_pixels() -> None:
    """The template moves the landmarks' targets; a fixed box crop or the detector's box
    geometry decides a box's crop."""
    image = _smooth(600, 700)
    landmarks = template(256, LEGACY_FRAMING) * 1.3 + 50.0
    face = Face((0, 0, 10, 10), 1.0, landmarks)
    assert not np.array_equal(
        align_face(image, face, 256, LEGACY_FRAMING), align_face(image, face, 256, ADIENCE_FRAMING)
    )
    tight = resolve_framing("legacy", template_shrink=1.0)
    matrix = similarity_matrix(landmarks, 256, tight)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, template(256, tight), atol=1e-2)
    box = Face((200, 150, 300, 250), 0.9)
    fixed = resolve_framing("adience", box_crop_scale=2.0)
    np.testing.assert_array_equal(
        align_face(image, box, 256, fixed), crop_box(image, box.box, 256, scale=2.0)
    )
    # measured box geometry: another detector's boxes give another crop of the same box
    haar = build_detector("haar").box_points
    assert not np.array_equal(
        align_face(image, box, 256, ADIENCE_FRAMING),
        align_face(image, box, 256, ADIENCE_FRAMING, haar),
    )
    scale, (u, v) = box_crop(ADIENCE_FRAMING)
    assert 1.2 < scale < 1.8 and 0.45 < u < 0.55 and 0.35 < v < 0.45  # the face's upper part
    with pytest.raises(ValueError, match="shrink"):
        resolve_framing("legacy", template_shrink=0.0)


def test_box_crop_fallback_is_a_square_with_black_outside() -> None:
    image = np.full((200, 300, 3), 90, np.uint8)
    image[80:120, 130:170] = (250, 10, 10)  # the "face", 40 x 40
    crop = crop_box(image, (130, 80, 170, 120), size=64)
    assert crop.shape == (64, 64, 3)
    assert (crop[32, 32] == (250, 10, 10)).all()
    assert (crop[2, 2] == 90).all()  # margin shows surrounding image
    # the box centre at 40% of the crop's height: the face's centre is above the crop's
    high = crop_box(image, (130, 80, 170, 120), size=64, centre=(0.5, 0.4))
    assert (high[int(0.4 * 64), 32] == (250, 10, 10)).all() and (high[60, 32] == 90).all()
    face = Face((0, 0, 40, 40), 0.9)  # at the corner: margin falls outside -> black
    for framing in (ADIENCE_FRAMING, LEGACY_FRAMING):
        out = align_face(image, face, 64, framing)
        assert (out[1, 1] == 0).all()
    with pytest.raises(ValueError, match="empty face box"):
        crop_box(image, (10, 10, 10, 20), 64)


@pytest.mark.parametrize("framing", [ADIENCE_FRAMING, LEGACY_FRAMING], ids=lambda f: f.name)
def test_none_detector_is_the_whole_image_resized(framing) -> None:
    image = _smooth(400, 300)
    faces = build_detector("none").detect(image)
    assert faces == [Face((0.0, 0.0, 300.0, 400.0), 1.0)]
    out = align_face(image, faces[0], 256, framing)
    assert out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out, cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))


def test_unknown_detector_and_bad_image() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("yolo")
    with pytest.raises(ValueError, match="uint8"):
        build_detector("none").detect(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("name", SAMPLES)
def test_mtcnn_finds_the_one_sample_face(mtcnn, samples_dir: Path, name: str) -> None:
    image = load_image(samples_dir / name)
    faces = mtcnn.detect(image)
    assert len(faces) == 1, faces
    face = faces[0]
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
    assert face.score >= 0.9
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    inside = (face.landmarks[:, 0] >= x1 - 5) & (face.landmarks[:, 0] <= x2 + 5)
    assert inside.all()


def test_mtcnn_maps_downscaled_detections_back(mtcnn, samples_dir: Path) -> None:
    image = load_image(samples_dir / "obama.jpg")
    big = cv2.resize(image, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    small_face = mtcnn.detect(image)[0]
    big_face = mtcnn.detect(big)[0]  # 1600 px, detected on a 640 px copy
    np.testing.assert_allclose(np.array(big_face.box), 2 * np.array(small_face.box), atol=12)
    np.testing.assert_allclose(big_face.landmarks, 2 * small_face.landmarks, atol=12)
    lm = big_face.landmarks
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left/right as seen in the image


def test_mtcnn_detect_batch_and_many_faces(mtcnn, samples_dir: Path) -> None:
    faces = [
        cv2.resize(load_image(samples_dir / n), (256, 320)) for n in ("astronaut.jpg", "obama.jpg")
    ]
    grid = np.vstack([np.hstack(faces), np.hstack(faces[::-1])])
    found = mtcnn.detect_batch([grid, np.zeros((100, 100, 3), np.uint8)])
    assert len(found[0]) == 4 and found[1] == []
    scores = [f.score for f in found[0]]
    assert scores == sorted(scores, reverse=True)


def test_haar_finds_a_frontal_face(samples_dir: Path) -> None:
    image = load_image(samples_dir / "astronaut.jpg")
    faces = build_detector("haar").detect(image)
    assert faces, "no face"
    x1, y1, x2, y2 = faces[0].box
    assert x1 < 230 < x2 and y1 < 115 < y2  # astronaut's face centre
    assert faces[0].landmarks is None


@pytest.mark.parametrize("shape", [(1, 1, 3), (13, 13, 3), (10, 3000, 3)])
def test_detectors_on_images_smaller_than_a_face(mtcnn, shape) -> None:
    image = np.zeros(shape, np.uint8)
    assert mtcnn.detect(image) == []
    assert build_detector("haar").detect(image) == []


@pytest.mark.parametrize("scale", [1 / 1.7, 1 / 2.5, 1 / 3, 1 / 4])
def test_warp_puts_a_point_where_the_matrix_says(scale: float) -> None:
    """Strong downscales pre-shrink by area first; the combined mapping must still send a
    point exactly where the similarity matrix sends it (an off-by-half-pixel composition put
    faces 0.2-0.7 output pixels off at scales 1/2.5-1/4)."""
    from agegender.faces.align import _warp

    size = 256
    h = w = int(size / scale) + 40
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy, sigma = w * 0.43, h * 0.57, 12.0 / scale  # a smooth blob, ~12 px wide when warped
    blob = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    image = np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)
    matrix = np.array([[scale, 0.0, 10.0], [0.0, scale, -7.0]])
    out = _warp(image, matrix, size)[..., 0].astype(np.float64)
    oy, ox = np.mgrid[0:size, 0:size]
    got = np.array([(out * ox).sum(), (out * oy).sum()]) / out.sum()
    want = matrix @ np.array([cx, cy, 1.0])
    np.testing.assert_allclose(got, want, atol=0.08)
