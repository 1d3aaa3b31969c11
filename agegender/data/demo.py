"""A small synthetic Adience-format tree, so training, CV and sweeps run anywhere in minutes.

``python -m agegender.data.demo OUT [--users 20 --images-per-user 10 --seed 0]`` writes
``fold_{0..4}_data.txt`` (with some of Adience's dirt: ``None`` ages, bare numbers, odd
ranges, ``u``/empty genders, one duplicated row), ``faces/<user>/coarse_tilt_aligned_face.*``
and ``aligned/<user>/landmark_aligned_face.*`` JPEGs.

The faces are cartoons drawn with OpenCV whose features follow the labels (hair greys and
forehead lines grow with the age bucket, eyes shrink; women get long hair and red lips), with
per-user skin tone, background and face shape and per-image jitter and noise, so a network can
learn them. It is a smoke and learning fixture: accuracy on it says nothing about Adience.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agegender.data.folds import COLUMNS, NUM_FOLDS, image_relpath
from agegender.errors import handled, translated
from agegender.labels import ADIENCE_AGE_STRINGS

#: Dirty age cells and the bucket the picture is drawn for (the one ``remap`` gives them).
_DIRTY_AGES: tuple[tuple[str, int | None], ...] = (
    ("None", None),
    ("35", 4),
    ("13", 2),
    ("(25, 23)", 4),
    ("(27, 32)", 4),
    ("(38, 42)", 5),
    ("57", 7),
)
MARKER = "DEMO_README.txt"


def draw_face(age: int, gender: int, user: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """One RGB cartoon face of the given age bucket (0-7) and gender (0 male, 1 female)."""
    skin, background, aspect = user["skin"], user["background"], user["aspect"]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    s = size / 256.0
    cx = size / 2 + rng.normal(0, 4 * s)
    cy = size / 2 + rng.normal(0, 4 * s)
    rx = (62 + 4 * (7 - age) / 7 + rng.normal(0, 2)) * s  # children: rounder, larger heads
    ry = rx * aspect
    grey = age / 7.0
    hair = np.array([60, 40, 25]) * (1 - grey) + np.array([225, 225, 225]) * grey
    hair = tuple(int(c) for c in np.clip(hair + rng.normal(0, 8, 3), 0, 255))
    c = (int(cx), int(cy))
    if gender == 1:  # long hair behind the face, falling past the chin
        cv2.ellipse(img, (c[0], int(cy + 0.35 * ry)), (int(1.25 * rx), int(1.3 * ry)), 0, 0, 360,
                    hair, -1, cv2.LINE_AA)  # fmt: skip
    cv2.ellipse(img, c, (int(rx), int(ry)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    # hair cap on top
    cv2.ellipse(img, (c[0], int(cy - 0.55 * ry)), (int(1.02 * rx), int(0.55 * ry)), 0, 180, 360,
                hair, -1, cv2.LINE_AA)  # fmt: skip
    eye_y = int(cy - 0.1 * ry)
    eye_r = max(2, int((9 - 0.6 * age) * s))
    for dx in (-0.38, 0.38):
        ex = int(cx + dx * rx)
        cv2.circle(img, (ex, eye_y), eye_r + int(3 * s), (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(img, (ex, eye_y), eye_r, (40, 30, 20), -1, cv2.LINE_AA)
    nose = (int(cx), int(cy + 0.15 * ry))
    cv2.line(img, (nose[0], eye_y + int(8 * s)), nose, tuple(int(v * 0.7) for v in skin), 2)
    lips = (200, 30, 50) if gender == 1 else tuple(int(v * 0.6) for v in skin)
    cv2.ellipse(img, (int(cx), int(cy + 0.45 * ry)), (int(0.32 * rx), int(0.08 * ry) + 1), 0, 0,
                360, lips, -1, cv2.LINE_AA)  # fmt: skip
    for k in range(max(0, age - 3) * 2):  # forehead lines with age
        y = int(cy - 0.35 * ry + k * 4 * s)
        cv2.line(img, (int(cx - 0.4 * rx), y), (int(cx + 0.4 * rx), y),
                 tuple(int(v * 0.55) for v in skin), 1, cv2.LINE_AA)  # fmt: skip
    angle = rng.normal(0, 5)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REPLICATE)
    noisy = img.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 6, img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def generate_demo(
    out: str | Path,
    users: int = 20,
    images_per_user: int = 10,
    seed: int = 0,
    dirty_fraction: float = 0.08,
    overwrite: bool = False,
) -> Path:
    """Write the demo tree under ``out`` and return it. Users go round-robin to the 5 folds."""
    out = Path(out)
    if users < NUM_FOLDS:
        raise ValueError(f"need at least {NUM_FOLDS} users (one per fold), got {users}")
    if images_per_user < 1:
        raise ValueError("images_per_user must be >= 1")
    if out.exists() and any(out.iterdir()) and not (overwrite or (out / MARKER).exists()):
        raise FileExistsError(f"{out} is not empty and not a demo tree; refusing to write there")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(NUM_FOLDS)]
    for u in range(users):
        user_id = f"{10000000 + u}@N0{u % 10}"
        profile = {
            "skin": tuple(int(v) for v in rng.uniform([150, 100, 80], [245, 200, 170])),
            "background": tuple(int(v) for v in rng.uniform(0, 255, 3)),
            "aspect": float(rng.uniform(1.15, 1.35)),
        }
        for i in range(images_per_user):
            face_id = u * 1000 + i + 1
            image = f"{rng.integers(10**9, 10**10)}_{rng.integers(16**9):09x}_o.jpg"
            age, gender = int(rng.integers(0, 8)), int(rng.integers(0, 2))
            age_cell, gender_cell = ADIENCE_AGE_STRINGS[age], "mf"[gender]
            if rng.random() < dirty_fraction:
                age_cell, drawn = _DIRTY_AGES[int(rng.integers(len(_DIRTY_AGES)))]
                age = drawn if drawn is not None else age
            if rng.random() < dirty_fraction / 2:
                gender_cell = str(rng.choice(["u", ""]))
            coarse = draw_face(age, gender, profile, rng, 320)
            _write_jpeg(out / image_relpath(user_id, face_id, image, "faces"), coarse)
            # Adience's aligned crops are tighter than the coarse ones.
            tight = cv2.resize(coarse[32:288, 32:288], (256, 256), interpolation=cv2.INTER_AREA)
            _write_jpeg(out / image_relpath(user_id, face_id, image, "aligned"), tight)
            cells = [user_id, image, str(face_id), age_cell, gender_cell,
                     "0", "0", "320", "320", "0", "0", "50"]  # fmt: skip
            folds[u % NUM_FOLDS].append("\t".join(cells))
    folds[0].append(folds[0][0])  # Adience repeats some rows; the loader must drop them once
    for k, rows in enumerate(folds):
        text = "\t".join(COLUMNS) + "\n" + "\n".join(rows) + "\n"
        (out / f"fold_{k}_data.txt").write_text(text)
    (out / MARKER).write_text(
        "Synthetic demo data written by `python -m agegender.data.demo`: a smoke and learning\n"
        "fixture in the Adience layout. Accuracy on it is not evidence about Adience.\n"
    )
    return out


def camera_clip(
    image: np.ndarray,
    frames: int,
    size: tuple[int, int],
    zoom: tuple[float, float] = (1.0, 1.5),
    pan: float = 0.0,
    centre_y: float = 1 / 2.3,
) -> list[np.ndarray]:
    """Frames of a virtual camera over a photo (the video tests' and
    ``benchmarks/bench_video_tracks.py``'s clips): zooming from ``zoom[0]`` to ``zoom[1]``
    and panning by ``pan`` of the width, centred at ``centre_y`` of the height, each frame
    ``size`` = (width, height), in ``image``'s channel order; edges reflect."""
    h, w = image.shape[:2]
    width, height = size
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        z = zoom[0] + (zoom[1] - zoom[0]) * t
        cw, ch = w / z, h / z
        cx, cy = w / 2 + pan * w * (t - 0.5), h * centre_y
        x0 = min(max(cx - cw / 2, 0), w - cw)
        y0 = min(max(cy - ch / 2, 0), h - ch)
        sx, sy = width / cw, height / ch
        matrix = np.float32([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]])
        out.append(cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT))
    return out


def portrait(image: np.ndarray, size: tuple[int, int] = (160, 200)) -> np.ndarray:
    """The top centre of a photo (a head-and-shoulders portrait) at ``size`` = (width,
    height): what :class:`Walk` pastes into a clip."""
    h, w = image.shape[:2]
    side = min(w, int(h * size[0] / size[1]))
    left = (w - side) // 2
    crop = image[: int(side * size[1] / size[0]), left : left + side]
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Walk:
    """A picture in view of a :func:`stage_clip` from frame ``start`` to ``end``
    (exclusive), its top-left corner moving linearly from ``at`` to ``to`` (pixels; None:
    it stays at ``at``). ``who`` names the person, for the truth of a generated audience."""

    picture: np.ndarray
    start: int
    end: int
    at: tuple[float, float]
    to: tuple[float, float] | None = None
    who: str = ""

    def place(self, frame: int) -> tuple[int, int]:
        """The picture's top-left corner on ``frame`` (rounded to whole pixels)."""
        to = self.to or self.at
        t = (frame - self.start) / max(self.end - 1 - self.start, 1)
        x = self.at[0] + (to[0] - self.at[0]) * t
        y = self.at[1] + (to[1] - self.at[1]) * t
        return int(round(x)), int(round(y))

    def rect(self, frame: int) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) of the picture on ``frame``."""
        x, y = self.place(frame)
        return x, y, x + self.picture.shape[1], y + self.picture.shape[0]


def stage_clip(
    walks: Sequence[Walk], frames: int, size: tuple[int, int], background: int = 90
) -> list[np.ndarray]:
    """Frames of pictures pasted on a plain background (``size`` = (width, height)) where
    and when ``walks`` say, later walks in front: clips with a known audience (people who
    follow each other at one spot, leave and come back, cross) for the tracker's tests and
    ``benchmarks/bench_tracking.py``."""
    width, height = size
    out = []
    for i in range(frames):
        canvas = np.full((height, width, 3), background, np.uint8)
        for walk in walks:
            if not walk.start <= i < walk.end:
                continue
            x1, y1, x2, y2 = walk.rect(i)
            cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
            if cx2 > cx1 and cy2 > cy1:
                canvas[cy1:cy2, cx1:cx2] = walk.picture[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
        out.append(canvas)
    return out


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 10) -> Path:
    """``frames`` (BGR, one size) as an MPEG-4 video at ``fps`` (the clips of
    :func:`camera_clip` as files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@handled("agegender.data.demo")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.data.demo",
        description="Write a small synthetic Adience-format tree (a fixture, not real data).",
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--images-per-user", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    with translated(ValueError, FileExistsError):  # bad counts, a folder not to overwrite
        out = generate_demo(
            args.out, args.users, args.images_per_user, args.seed, overwrite=args.overwrite
        )
    print(f"wrote {args.users * args.images_per_user} demo faces to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
