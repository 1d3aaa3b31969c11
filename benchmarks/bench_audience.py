"""How well does ``audience.window`` count people? Generated clips with a known audience.

Each scenario pastes face photos from data/samples/ onto a plain background at known places
and times (10 fps), runs predict() with ``audience.window`` exactly as predict.py does
(MTCNN; the original nets when cached, else a fixed random net: counting depends only on the
detector and the tracker), and compares with the truth:

- ``stay``: one person in view the whole clip;
- ``enter-leave``: A for the first half, B walks in as A leaves;
- ``pass``: two people walk across the frame in opposite directions, crossing mid-way;
- ``come-back``: A leaves for 3 s (longer than ``video.lost_seconds``) and comes back
  (one person: the tracker cannot know, so it is expected to count two);
- ``glimpse``: one person stays, another is in view for 0.4 s, two analysed frames at
  stride 2 (truth: one person; a glimpse is not an audience).

Printed per scenario, with the gates on (conf/predict.yaml's defaults) and off
(``min_frames=1 min_face=0 min_score=0 max_yaw=90``): people counted vs the truth (count
error), double counts (counted beyond the truth), misses, and the per-window error (sum over
windows of |people counted - people present|).

    python benchmarks/bench_audience.py [--stride 2] [--window 2]
    python benchmarks/bench_audience.py --write-clips clips   # only write the clips (README)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agegender.data.demo import write_video
from agegender.faces import build_detector
from agegender.hardware import cpu_summary
from agegender.images import load_image
from agegender.inference import predict

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
FPS = 10
SIZE = (640, 300)  # width, height
FACE = (160, 200)  # pasted portrait: width, height (faces ~45-60 px)
GATES_OFF = {
    "audience_min_frames": 1,
    "audience_min_face": 0,
    "audience_min_score": 0.0,
    "audience_max_yaw": 90,
}


@dataclass
class Actor:
    """A portrait in view from frame ``start`` to ``end`` (exclusive); ``x(frame)`` its left
    edge; ``person`` who it is (the same person may come back as a second actor)."""

    photo: str
    person: str
    start: int
    end: int
    x: Callable[[int], float]


def portrait(photo: str) -> np.ndarray:
    image = cv2.cvtColor(load_image(SAMPLES / photo), cv2.COLOR_RGB2BGR)
    h, w = image.shape[:2]
    side = min(w, int(h * FACE[0] / FACE[1]))
    left = (w - side) // 2
    top = 0
    crop = image[top : top + int(side * FACE[1] / FACE[0]), left : left + side]
    return cv2.resize(crop, FACE, interpolation=cv2.INTER_AREA)


def render(actors: list[Actor], frames: int) -> list[np.ndarray]:
    pictures = {a.photo: portrait(a.photo) for a in actors}
    out = []
    for i in range(frames):
        canvas = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
        for actor in actors:
            if actor.start <= i < actor.end:
                x = int(round(actor.x(i)))
                x0, x1 = max(0, x), min(SIZE[0], x + FACE[0])
                if x1 > x0:
                    y = (SIZE[1] - FACE[1]) // 2
                    canvas[y : y + FACE[1], x0:x1] = pictures[actor.photo][:, x0 - x : x1 - x]
        out.append(canvas)
    return out


def scenarios() -> dict[str, tuple[list[Actor], int]]:
    """name -> (actors, frames)."""

    def still(x: float) -> Callable[[int], float]:
        return lambda i: x

    def walk(x0: float, x1: float, frames: int) -> Callable[[int], float]:
        return lambda i: x0 + (x1 - x0) * i / (frames - 1)

    return {
        "stay": ([Actor("obama.jpg", "A", 0, 60, still(240))], 60),
        "enter-leave": (
            [
                Actor("obama.jpg", "A", 0, 40, still(60)),
                Actor("biden.jpg", "B", 35, 80, still(420)),
            ],
            80,
        ),
        "pass": (
            [
                Actor("obama.jpg", "A", 0, 60, walk(0, 480, 60)),
                Actor("astronaut.jpg", "B", 0, 60, walk(480, 0, 60)),
            ],
            60,
        ),
        "come-back": (
            [
                Actor("biden.jpg", "A", 0, 25, still(240)),
                Actor("biden.jpg", "A", 55, 80, still(240)),
            ],
            80,
        ),
        "glimpse": (
            [
                Actor("obama.jpg", "A", 0, 60, still(60)),
                Actor("biden.jpg", "B", 30, 34, still(420)),
            ],
            60,
        ),
    }


def truth(actors: list[Actor], frames: int, stride: int, window: float) -> tuple[int, list[int]]:
    """(people, people present per window): a person present for less than 1 s is a glimpse."""
    present = {a.person for a in actors if a.end - a.start >= FPS}
    windows = int(np.ceil(frames / FPS / window))
    per_window = []
    for k in range(windows):
        seen = set()
        for a in actors:
            if a.person not in present:
                continue
            shown = [i for i in range(a.start, a.end) if i % stride == 0]
            if any(k * window <= i / FPS < (k + 1) * window for i in shown):
                seen.add(a.person)
        per_window.append(len(seen))
    return len(present), per_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument(
        "--write-clips", type=Path, metavar="DIR",
        help="write each scenario's clip as DIR/<scenario>.mp4 and stop (no runs)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.write_clips is not None:  # the README's chart is a predict.py run on one of them
        for name, (actors, frames) in scenarios().items():
            path = write_video(args.write_clips / f"{name}.mp4", render(actors, frames), FPS)
            print(path)
        return
    from agegender.runtime.build import build_classifier
    from agegender.store import WeightsNotFoundError

    try:
        classifier, _ = build_classifier(download=False)
        net = "original weights"
    except WeightsNotFoundError:
        import torch

        from agegender.models import LeviHassnerNet
        from agegender.runtime.torch_classifier import FaceClassifier

        torch.manual_seed(0)
        classifier, net = FaceClassifier(LeviHassnerNet()), "random net (weights not cached)"
    detector = build_detector("mtcnn")
    print(cpu_summary())
    print(
        f"{len(scenarios())} scenarios, {SIZE[0]}x{SIZE[1]} at {FPS} fps, video.stride="
        f"{args.stride}, audience.window={args.window:g} s, MTCNN, {net}"
    )
    header = f"{'scenario':<12} {'gates':<4} {'truth':>5} {'counted':>7} {'error':>5} "
    header += f"{'double':>6} {'missed':>6} {'window error':>12}"
    print(header)
    totals = {"on": [0, 0, 0], "off": [0, 0, 0]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (actors, frames) in scenarios().items():
            video = write_video(Path(tmp) / f"{name}.mp4", render(actors, frames), fps=FPS)
            people, per_window = truth(actors, frames, args.stride, args.window)
            for gates, settings in (("on", {}), ("off", GATES_OFF)):
                with contextlib.redirect_stdout(io.StringIO()):  # the run's own lines
                    summary = predict(
                        video, Path(tmp) / f"{name}-{gates}", detector, classifier,
                        video_stride=args.stride, annotate=False, progress=False,
                        audience_window=args.window, **settings,
                    )  # fmt: skip
                data = summary.audience
                counted = data["totals"]["people"]
                rows = [r["people"] for r in data["windows"]]
                rows += [0] * (len(per_window) - len(rows))
                window_error = sum(abs(a - b) for a, b in zip(rows, per_window, strict=False))
                double, missed = max(0, counted - people), max(0, people - counted)
                totals[gates][0] += abs(counted - people)
                totals[gates][1] += double
                totals[gates][2] += missed
                print(
                    f"{name:<12} {gates:<4} {people:>5} {counted:>7} {counted - people:>+5} "
                    f"{double:>6} {missed:>6} {window_error:>12}"
                )
    for gates, (error, double, missed) in totals.items():
        print(f"gates {gates}: |count error| {error}, double counts {double}, misses {missed}")


if __name__ == "__main__":
    main()
