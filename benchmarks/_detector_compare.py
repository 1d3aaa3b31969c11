"""RetinaFace against MTCNN (``bench_detect.py --retinaface``): recall, false positives,
time, landmarks and the labels after alignment, on real photos and generated composites.

Composites paste face regions cut from real photos (around the face MTCNN finds in each,
2x its box) onto varied backgrounds, in kinds that stress what users meet: ``mixed`` (30-200
px faces), ``small`` (14-32 px), ``tilted`` (rolled 20-45 degrees), ``narrowed`` (squeezed to
55-75% of their width: the foreshortening of a turned head, approximated; real profiles are
not generated), ``grey+dark`` (greyscale or 25-45% brightness with a gamma) and ``crowd``
(15-25 faces of 24-60 px on 1280 x 720). Ground truth is the source face's MTCNN box mapped
through the paste; a detection finds a face when its centre lies in that box and its side is
0.5-2x the box's (the two detectors draw boxes differently: IoU would measure conventions).
A detection that finds no face is a false positive (on composites; real photos have no
ground truth, so only the counts are compared there).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from agegender.faces.types import Detector, Face

Box = tuple[float, float, float, float]
KINDS = ("mixed", "small", "tilted", "narrowed", "grey+dark", "crowd")


def face_sources(images: list[np.ndarray], reference: Detector) -> list[tuple[np.ndarray, Box]]:
    """(crop around each photo's best face, that face's box in the crop)."""
    sources = []
    for image in images:
        faces = reference.detect(image)
        if not faces:
            continue
        x1, y1, x2, y2 = faces[0].box
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 2.0 * max(x2 - x1, y2 - y1)
        cx1, cy1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        cx2, cy2 = int(min(image.shape[1], cx + side / 2)), int(min(image.shape[0], cy + side / 2))
        sources.append((image[cy1:cy2, cx1:cx2].copy(), (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)))
    return sources


def _background(rng: np.random.Generator, h: int, w: int, scenery: list[np.ndarray]) -> np.ndarray:
    kind = int(rng.integers(4))
    if kind == 0:  # two-colour gradient
        a, b = rng.integers(0, 256, (2, 3))
        t = np.linspace(0, 1, w)[None, :, None]
        return np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8).copy()
    if kind == 1:  # textured noise
        noise = rng.normal(128, 50, (h // 4 + 1, w // 4 + 1, 3)).clip(0, 255).astype(np.uint8)
        return cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == 2:  # blurred coloured blocks
        blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        return cv2.GaussianBlur(
            cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST), (0, 0), 9
        )
    photo = scenery[int(rng.integers(len(scenery)))]
    return cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)


def _transform(
    crop: np.ndarray, box: Box, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, Box]:
    """The crop as the kind wants it, and the face's box in the result."""
    x1, y1, x2, y2 = box
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
        x1, x2 = crop.shape[1] - x2, crop.shape[1] - x1
    if kind == "tilted":
        angle = float(rng.uniform(20, 45) * rng.choice([-1, 1]))
        h, w = crop.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        crop = cv2.warpAffine(crop, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
        corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]]) @ matrix.T
        # the rolled face's extent, shrunk to the face's own size (its corners are not skin)
        cx, cy = corners.mean(axis=0)
        half_w, half_h = (x2 - x1) / 2, (y2 - y1) / 2
        x1, y1, x2, y2 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    elif kind == "narrowed":
        factor = float(rng.uniform(0.55, 0.75))
        h, w = crop.shape[:2]
        crop = cv2.resize(crop, (max(2, round(w * factor)), h), interpolation=cv2.INTER_AREA)
        x1, x2 = x1 * factor, x2 * factor
    elif kind == "grey+dark":
        if rng.random() < 0.5:
            crop = cv2.cvtColor(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        else:
            gain, gamma = float(rng.uniform(0.25, 0.45)), float(rng.uniform(1.2, 1.8))
            crop = (255 * ((crop / 255.0) ** gamma) * gain).clip(0, 255).astype(np.uint8)
    return crop, (x1, y1, x2, y2)


def composites(
    kind: str,
    n: int,
    sources: list[tuple[np.ndarray, Box]],
    scenery: list[np.ndarray],
    seed: int = 0,
) -> list[tuple[np.ndarray, list[Box]]]:
    """``n`` pictures of ``kind`` (H x W x 3 uint8 RGB) with their faces' boxes."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    h, w = (720, 1280) if kind == "crowd" else (480, 640)
    count = {"crowd": (15, 26), "small": (6, 13)}.get(kind, (3, 7))
    widths = {
        "small": [14, 18, 22, 26, 32],
        "crowd": [24, 30, 36, 44, 52, 60],
    }.get(kind, [30, 42, 56, 75, 100, 140, 200])
    out = []
    for _ in range(n):
        canvas = _background(rng, h, w, scenery)
        taken: list[tuple[int, int, int, int]] = []
        truth: list[Box] = []
        for _ in range(int(rng.integers(*count))):
            crop, box = sources[int(rng.integers(len(sources)))]
            crop, (bx1, by1, bx2, by2) = _transform(crop, box, kind, rng)
            scale = float(rng.choice(widths)) / max(bx2 - bx1, 1.0)
            ch, cw = max(2, round(crop.shape[0] * scale)), max(2, round(crop.shape[1] * scale))
            if ch >= h or cw >= w:
                continue
            for _try in range(30):
                px, py = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
                if all(
                    px + cw <= a or a + c <= px or py + ch <= b or b + d <= py
                    for a, b, c, d in taken
                ):
                    break
            else:
                continue
            patch = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_AREA)
            if kind != "grey+dark":
                patch = (patch * rng.uniform(0.7, 1.2)).clip(0, 255).astype(np.uint8)
            canvas[py : py + ch, px : px + cw] = patch
            taken.append((px, py, cw, ch))
            truth.append((px + bx1 * scale, py + by1 * scale, px + bx2 * scale, py + by2 * scale))
        out.append((canvas, truth))
    return out


def finds(face: Box, truth: Box) -> bool:
    """Whether a detection finds a true face: centre inside it, side within 0.5-2x."""
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    if not (truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3]):
        return False
    ratio = max(face[2] - face[0], face[3] - face[1]) / max(truth[2] - truth[0], 1e-6)
    return 0.5 <= ratio <= 2.0


def score(found: list[list[Face]], truths: list[list[Box]]) -> tuple[int, int, int]:
    """(true faces found, true faces, detections that find none)."""
    hits = false = 0
    for faces, boxes in zip(found, truths, strict=True):
        hits += sum(any(finds(f.box, t) for f in faces) for t in boxes)
        false += sum(not any(finds(f.box, t) for t in boxes) for f in faces)
    return hits, sum(len(b) for b in truths), false


def ms_per_photo(
    detectors: dict[str, Detector], images: list[np.ndarray], rounds: int
) -> dict[str, float]:
    """Median ms per photo of each detector, rounds alternating the order (shared machine)."""
    times: dict[str, list[float]] = {name: [] for name in detectors}
    names = list(detectors)
    for name in names:
        detectors[name].detect(images[0])  # warm-up (session start, allocations)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for image in images:
                detectors[name].detect(image)
            times[name].append((time.perf_counter() - start) / len(images) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def pairs(a: list[Face], b: list[Face]) -> list[tuple[Face, Face]]:
    """Faces of ``a`` and ``b`` that are the same face (each one's centre in the other's box)."""
    out, left = [], list(b)
    for face in a:
        for other in left:
            if finds(face.box, other.box) and finds(other.box, face.box):
                out.append((face, other))
                left.remove(other)
                break
    return out


def landmark_error(a: Face, b: Face) -> float:
    """Mean distance of the 5 landmarks, in units of ``b``'s eye distance."""
    eye = float(np.linalg.norm(b.landmarks[0] - b.landmarks[1]))
    return float(np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean() / max(eye, 1e-6))


def label_agreement(
    matched: list[tuple[np.ndarray, Face, Face]], labels: Callable[[list], list[tuple[str, str]]]
) -> tuple[int, int, int]:
    """(same age group, same gender, faces) of the classifier on each pair's two alignments."""
    if not matched:
        return 0, 0, 0
    a = labels([(image, fa) for image, fa, _ in matched])
    b = labels([(image, fb) for image, _, fb in matched])
    same_age = sum(x[0] == y[0] for x, y in zip(a, b, strict=True))
    same_gender = sum(x[1] == y[1] for x, y in zip(a, b, strict=True))
    return same_age, same_gender, len(matched)


def mirror_pairs(
    matched: list[tuple[np.ndarray, Face, Face]], reference: Detector
) -> list[tuple[np.ndarray, Face, Face]]:
    """Each pair's reference face (the second) against the reference's face of the mirror
    image: (mirror, that face, the first face mirrored), so both alignments see the same
    pixels and differ only by where the detector put the face."""
    out = []
    cache: dict[int, tuple[np.ndarray, list[Face]]] = {}
    for image, _, face in matched:
        if id(image) not in cache:
            mirror = np.ascontiguousarray(image[:, ::-1])
            cache[id(image)] = (mirror, reference.detect(mirror))
        mirror, faces = cache[id(image)]
        width = image.shape[1]
        x1, y1, x2, y2 = face.box
        # left and right swap in a mirror: eyes (0, 1) and mouth corners (3, 4)
        points = face.landmarks[[1, 0, 2, 4, 3]].copy()
        points[:, 0] = width - points[:, 0]
        flipped = Face(box=(width - x2, y1, width - x1, y2), score=face.score, landmarks=points)
        for other in faces:
            if finds(other.box, flipped.box) and finds(flipped.box, other.box):
                out.append((mirror, other, flipped))
                break
    return out


def photos(folders: list[Path]) -> list[tuple[str, np.ndarray]]:
    from agegender.images import load_image

    out = []
    for folder in folders:
        files = [folder] if folder.is_file() else sorted(folder.iterdir())
        for path in files:
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                out.append((path.name, load_image(path)))
    return out
