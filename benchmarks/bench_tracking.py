"""How well does the tracker count people? Generated clips with cuts, gaps and crossings.

Each scenario pastes the portraits of data/samples/ (four people: astronaut, biden, obama,
the cameraman) onto a plain background at known places and times (10 fps), so every face
the detector finds belongs to a known APPEARANCE: one person's continuous stay, which one
track should cover. A person who leaves for longer than ``video.lost_seconds`` and comes
back is a new appearance (a tracker cannot know it is the same person, and is not asked to):

- ``cuts``: the four people shown 2 s each at one spot, hard cuts (4 appearances);
- ``cuts+gaps``: the same with 1.5 s of empty picture between them (4);
- ``come-back``: one person, three stays of 2 s at one spot with 0.5 s gaps (1);
- ``away``: one person, 2 s, away 1.5 s, back 2 s (2);
- ``crossing``: two people walk across each other, the second one in front (2);
- ``meet``: two people walk up to each other until their faces touch, turn and walk back (2);
- ``crowd``: 20 s at three spots, 18 appearances (seeded): cuts, gaps and returns;
- ``... stream``: the clip as a camera stream at ``video.stride=1`` whose model keeps up
  with one frame in ``--stream-every`` (stamped frames: the wall clock of a live source).

Each clip is analysed ONCE as predict() analyses it (MTCNN, the classifier, each face's
look), then its analysed frames go through the tracker and the audience counter (gates off:
``min_frames=1``, no face gate, so the count is the tracker's own) under three rules:

- ``before``: the tracker as it was (``lost_rule="frames"``): ByteTrack's own ids, a lost
  buffer of round(lost_seconds x fps / stride) analysed frames (at least 1), no look;
- ``seconds``: ByteTrack alone, ``video.lost_seconds`` in seconds of the video;
- ``after``: the appearance check (``video.min_similarity``, conf/predict.yaml) + seconds.

Printed per scenario and rule: the appearances in the clip, those the detector found at
least once (truth: a tracker cannot count a face never detected), the tracks and the people
counted, merges (tracks holding faces of more than one appearance) and splits (appearances
whose faces carry more than one track id). ``--check`` also runs predict() on every file
clip with the default settings and checks that the real job loop counts as the ``after``
replay does.

    python benchmarks/bench_tracking.py [--stride 2] [--lost-seconds 1] [--check]
    python benchmarks/bench_tracking.py --only cuts,crossing --stride 5
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agegender.data.demo import Walk, camera_clip, portrait, stage_clip, write_video
from agegender.faces import build_detector
from agegender.hardware import cpu_summary
from agegender.images import load_image
from agegender.inference import predict
from agegender.inference.audience import AudienceCounter
from agegender.inference.inputs import InputItem
from agegender.inference.options import PredictOptions
from agegender.inference.pipeline import Pipeline
from agegender.inference.results import ImageResult
from agegender.inference.tracking import TrackBook, covered
from agegender.inference.video import VideoTracks

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
PEOPLE = ("astronaut.jpg", "biden.jpg", "obama.jpg", "camera.png")
FPS = 10
SIZE = (640, 260)  # width, height
FACE = (160, 200)  # pasted portrait: width, height (faces ~35-60 px)
SPOTS = (20.0, 240.0, 460.0)  # left edges of the crowd's three places
TOP = 30.0
GATES_OFF = {
    "audience_min_frames": 1,
    "audience_min_face": 0,
    "audience_min_score": 0.0,
    "audience_max_yaw": 90,
}
#: rule -> (video.min_similarity: None = off, "default" = conf/predict.yaml's; lost rule)
RULES: dict[str, tuple[str | None, str]] = {
    "before": (None, "frames"),
    "seconds": (None, "seconds"),
    "after": ("default", "seconds"),
}


@dataclass
class Scenario:
    walks: list[Walk]
    frames: int
    #: Analysed as a camera stream (stamped frames, the model keeping up with one in
    #: ``--stream-every``), not as a video file.
    live: bool = False


@dataclass
class Figures:
    appearances: int
    truth: int
    tracks: int
    people: int
    merges: int
    splits: int


def stays(
    pictures: dict[str, np.ndarray], plan: list[tuple[str, str, float, float, float]]
) -> list[Walk]:
    """Walks from (photo, appearance, start s, end s, left edge) at the scenarios' height."""
    return [
        Walk(pictures[photo], round(a * FPS), round(b * FPS), (x, TOP), who=who)
        for photo, who, a, b, x in plan
    ]


def crowd(pictures: dict[str, np.ndarray], seed: int, lost_seconds: float) -> list[Walk]:
    """18 appearances over about 20 s at three spots: each spot shows someone for 1.5-3 s,
    then cuts to the next person or shows nobody for 1.5-2.5 s; a person never stands at two
    spots at once and comes back only after lost_seconds + 1 s (a new appearance)."""
    rng = np.random.default_rng(seed)
    free_at = dict.fromkeys(PEOPLE, -10.0)  # when each person may appear again
    clock = [float(rng.uniform(0, 1)) for _ in SPOTS]
    walks: list[Walk] = []
    while len(walks) < 18:
        spot = int(np.argmin(clock))
        start = clock[spot]
        ready = [p for p in PEOPLE if free_at[p] <= start]
        if not ready:
            clock[spot] = min(free_at.values())
            continue
        photo = ready[int(rng.integers(len(ready)))]
        end = start + float(rng.uniform(1.5, 3.0))
        who = f"{Path(photo).stem}#{len(walks) + 1}"
        frames = round(start * FPS), round(end * FPS)
        walks.append(Walk(pictures[photo], *frames, (SPOTS[spot], TOP), who=who))
        free_at[photo] = end + lost_seconds + 1.0
        clock[spot] = end if rng.uniform() < 0.5 else end + float(rng.uniform(1.5, 2.5))
    return walks


def scenarios(lost_seconds: float) -> dict[str, Scenario]:
    pictures = {
        p: portrait(cv2.cvtColor(load_image(SAMPLES / p), cv2.COLOR_RGB2BGR), FACE) for p in PEOPLE
    }
    spot = 240.0
    cuts = [(p, p, 2.0 * i, 2.0 * i + 2.0, spot) for i, p in enumerate(PEOPLE)]
    gaps = [(p, p, 3.5 * i, 3.5 * i + 2.0, spot) for i, p in enumerate(PEOPLE)]
    back = [("obama.jpg", "obama", 2.5 * i, 2.5 * i + 2.0, spot) for i in range(3)]
    away = [("biden.jpg", "biden#1", 0.0, 2.0, spot), ("biden.jpg", "biden#2", 3.5, 5.5, spot)]
    crossing = [
        Walk(pictures["obama.jpg"], 0, 60, (0.0, TOP), (480.0, TOP), who="obama"),
        Walk(pictures["astronaut.jpg"], 0, 60, (480.0, TOP), (0.0, TOP), who="astronaut"),
    ]
    meet = [  # walk up to each other (faces overlapping), turn and walk back
        Walk(pictures["obama.jpg"], 0, 25, (0.0, TOP), (200.0, TOP), who="obama"),
        Walk(pictures["obama.jpg"], 25, 50, (200.0, TOP), (0.0, TOP), who="obama"),
        Walk(pictures["biden.jpg"], 0, 25, (480.0, TOP), (280.0, TOP), who="biden"),
        Walk(pictures["biden.jpg"], 25, 50, (280.0, TOP), (480.0, TOP), who="biden"),
    ]
    walks = crowd(pictures, seed=0, lost_seconds=lost_seconds)
    out = {
        "cuts": Scenario(stays(pictures, cuts), 80),
        "cuts+gaps": Scenario(stays(pictures, gaps), 130),
        "come-back": Scenario(stays(pictures, back), 70),
        "away": Scenario(stays(pictures, away), 55),
        "crossing": Scenario(crossing, 60),
        "meet": Scenario(meet, 50),
        "crowd": Scenario(walks, max(w.end for w in walks)),
    }
    for name in ("cuts+gaps", "away", "crowd"):
        out[f"{name} stream"] = Scenario(out[name].walks, out[name].frames, live=True)
    return out


def face_boxes(scenarios: dict[str, Scenario], detector: Any) -> dict[int, tuple[float, ...]]:
    """Where the face lies in each pasted picture (x1, y1, x2, y2 relative to its corner,
    the detector's box on the picture alone), by ``id`` of the picture."""
    out: dict[int, tuple[float, ...]] = {}
    for scenario in scenarios.values():
        for walk in scenario.walks:
            if id(walk.picture) not in out:
                alone = stage_clip([Walk(walk.picture, 0, 1, (20.0, 20.0))], 1, SIZE)[0]
                faces = detector.detect(cv2.cvtColor(alone, cv2.COLOR_BGR2RGB))
                x1, y1, x2, y2 = faces[0].box if faces else (0.0, 0.0, 0.0, 0.0)
                out[id(walk.picture)] = (x1 - 20, y1 - 20, x2 - 20, y2 - 20)
    return out


def truth_of(
    walks: list[Walk], frame: int, box: tuple[float, ...], faces: dict[int, tuple[float, ...]]
) -> str:
    """The appearance a detected face belongs to: the walk whose face (where it lies in its
    picture, moved with it) overlaps the box best, IoU >= 0.3 ("" for a face of nobody)."""
    best, who = 0.3, ""
    for walk in walks:
        if walk.start <= frame < walk.end:
            x, y = walk.place(frame)
            fx1, fy1, fx2, fy2 = faces[id(walk.picture)]
            iou = box_iou((fx1 + x, fy1 + y, fx2 + x, fy2 + y), box)
            if iou >= best:
                best, who = iou, walk.who
    return who


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def analyse(
    video: str, frames: list[np.ndarray], every: int, pipeline: Pipeline, live: bool
) -> list[ImageResult]:
    """Every ``every``-th frame through the prediction pipeline (detection, each face's
    look, classification) as predict() runs a video's frames through it; ``live``: stamped
    with its time, as a stream's frames are."""
    items = [
        InputItem(
            f"{video}#frame={i}",
            video,
            image=cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),
            video=video,
            frame=i,
            stamp=i / FPS if live else None,
        )  # fmt: skip
        for i, frame in enumerate(frames)
        if i % every == 0
    ]
    return list(pipeline.run(items, live=live))


def replay(
    results: list[ImageResult],
    scenario: Scenario,
    options: PredictOptions,
    labels: Any,
    stride: int,
    min_similarity: float | None,
    lost_rule: str,
    out: Path,
    faces: dict[int, tuple[float, ...]],
) -> Figures:
    """The analysed frames through a tracker and an audience counter as the job loop runs
    them (tracked, held until their ids are final, then counted)."""
    video = str(results[0].item.video)
    lost = options.video.lost_seconds
    tracks = VideoTracks(
        video, TrackBook(labels), FPS, stride, lost, keep_marks=False,
        min_similarity=min_similarity, lost_rule=lost_rule,
    )  # fmt: skip
    counter = AudienceCounter(
        options.audience, labels, out, fps=lambda _: float(FPS), stride=stride,
        lost_seconds=lost, live=scenario.live, report=lambda line: None, lost_rule=lost_rule,
    )  # fmt: skip
    by_track: dict[int, set[str]] = defaultdict(set)
    by_who: dict[str, set[int]] = defaultdict(set)
    found: set[str] = set()  # appearances the detector found at least once

    def count(ready: list[ImageResult]) -> None:
        for result in ready:
            counter.observe(result)
            for face, track in zip(result.faces, result.tracks or [], strict=False):
                who = truth_of(scenario.walks, result.item.frame or 0, face.box, faces)
                if who:
                    found.add(who)
                if who and track is not None:
                    by_track[track].add(who)
                    by_who[who].add(track)

    for result in results:
        count(tracks.observe(copy.copy(result)))  # the tracker writes ids into its result
    count(tracks.flush())
    data = counter.close()
    return Figures(
        appearances=len({w.who for w in scenario.walks}),
        truth=len(found),
        tracks=len(tracks.book.tracks),
        people=int(data["totals"]["people"]),
        merges=sum(1 for whos in by_track.values() if len(whos) > 1),
        splits=sum(1 for ids in by_who.values() if len(ids) > 1),
    )


def read_frames(video: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(video)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def classifier_or_random() -> tuple[Any, str]:
    """The original nets when cached, else a fixed random net: counting depends only on
    the detector, the faces' looks and the tracker."""
    from agegender.runtime.build import build_classifier
    from agegender.store import WeightsNotFoundError

    try:
        return build_classifier(download=False)[0], "original weights"
    except WeightsNotFoundError:
        import torch

        from agegender.models import LeviHassnerNet
        from agegender.runtime.torch_classifier import FaceClassifier

        torch.manual_seed(0)
        return FaceClassifier(LeviHassnerNet()), "random net (weights not cached)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=2, help="video.stride of the files")
    parser.add_argument(
        "--stream-every", type=int, default=4, help="streams: frames per analysed one"
    )
    parser.add_argument("--lost-seconds", type=float, default=1.0, help="video.lost_seconds")
    parser.add_argument("--check", action="store_true", help="also run predict() per file clip")
    parser.add_argument("--only", default="", help="comma-separated scenario names (all)")
    args = parser.parse_args()
    options = PredictOptions.defaults().replace(
        video_stride=args.stride, video_lost_seconds=args.lost_seconds, audience_window=60.0,
        **GATES_OFF,
    )  # fmt: skip
    classifier, net = classifier_or_random()
    detector = build_detector("mtcnn")
    pipeline = Pipeline(detector, classifier, workers=2)
    rules = {
        name: (options.video.min_similarity if sim == "default" else None, rule)
        for name, (sim, rule) in RULES.items()
    }
    plays = scenarios(args.lost_seconds)
    if args.only:
        plays = {name: plays[name] for name in args.only.split(",")}
    faces = face_boxes(plays, detector)
    looks: dict[str, list[tuple[str, int, np.ndarray]]] = {}
    print(cpu_summary())
    print(
        f"{len(plays)} scenarios, {SIZE[0]}x{SIZE[1]} at {FPS} fps; files video.stride="
        f"{args.stride}, streams video.stride=1 with one frame in {args.stream_every} "
        f"analysed; video.lost_seconds={args.lost_seconds:g}; after: video.min_similarity="
        f"{options.video.min_similarity}; MTCNN, {net}; audience gates off"
    )
    print(
        f"{'scenario':<17} {'rule':<8} {'in clip':>7} {'truth':>5} {'tracks':>6} "
        f"{'people':>6} {'merges':>6} {'splits':>6}"
    )
    totals = {name: dict.fromkeys(("truth", "tracks", "people", "merges", "splits", "exact"), 0)
              for name in rules}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, scenario in plays.items():
            video = str(Path(tmp) / f"{name.replace(' ', '-')}.mp4")
            # through an MPEG-4 file and back, as predict() reads a video
            write_video(Path(video), stage_clip(scenario.walks, scenario.frames, SIZE), FPS)
            every, stride = (args.stream_every, 1) if scenario.live else (args.stride,) * 2
            results = analyse(video, read_frames(video), every, pipeline, scenario.live)
            for rule, (similarity, lost_rule) in rules.items():
                with contextlib.redirect_stdout(io.StringIO()):
                    f = replay(
                        results, scenario, options, classifier.labels, stride, similarity,
                        lost_rule, Path(tmp) / f"{name}-{rule}", faces,
                    )  # fmt: skip
                t = totals[rule]
                for key in ("truth", "merges", "splits"):
                    t[key] += getattr(f, key)
                t["tracks"] += abs(f.tracks - f.truth)
                t["people"] += abs(f.people - f.truth)
                t["exact"] += int(f.people == f.truth == f.tracks)
                print(
                    f"{name:<17} {rule:<8} {f.appearances:>7} {f.truth:>5} {f.tracks:>6} "
                    f"{f.people:>6} {f.merges:>6} {f.splits:>6}"
                )
            if args.check and not scenario.live:
                out = Path(tmp) / f"{name}-predict"
                check(video, out, detector, classifier, options, results, scenario, faces)
            if not scenario.live:
                collect_looks(looks, name, results, scenario, faces)
    print("totals over the scenarios (errors: |counted - truth|):")
    for rule, t in totals.items():
        print(
            f"  {rule:<8} appearances {t['truth']}, track error {t['tracks']}, people error "
            f"{t['people']}, merges {t['merges']}, splits {t['splits']}, scenarios counted "
            f"exactly {t['exact']}/{len(plays)}"
        )
    print(look_line(looks, options.video.min_similarity))
    print(zoom_line(pipeline, args.stride))


def collect_looks(
    looks: dict[str, list[tuple[str, int, np.ndarray]]],
    name: str,
    results: list[ImageResult],
    scenario: Scenario,
    faces: dict[int, tuple[float, ...]],
) -> None:
    """Each judged face's look (not near another face: :func:`covered`), by person, with
    its appearance and frame: what ``min_similarity`` has to separate."""
    for result in results:
        boxes = np.array([f.box for f in result.faces], dtype=np.float32).reshape(-1, 4)
        for face, look, judged in zip(result.faces, result.looks, ~covered(boxes), strict=True):
            who = truth_of(scenario.walks, result.item.frame or 0, face.box, faces)
            if who and judged:
                person = Path(who.split("#")[0]).stem
                looks.setdefault(person, []).append((f"{name}/{who}", result.item.frame or 0, look))


def zoom_line(pipeline: Pipeline, stride: int) -> str:
    """One person's looks under a moving camera: a 3 s zoom (1.0 to 1.6) with a pan over
    each sample photo (30 fps, 320x400, the face partly leaving the picture at the end)."""
    sims = []
    for photo in PEOPLE:
        image = cv2.cvtColor(load_image(SAMPLES / photo), cv2.COLOR_RGB2BGR)
        frames = camera_clip(image, 90, (320, 400), zoom=(1.0, 1.6), pan=0.15)
        results = analyse(photo, frames, 3 * stride, pipeline, live=False)
        faces = [r.looks[0] for r in results if len(r.looks) == 1]
        sims += [float(np.dot(a, b)) for a, b in zip(faces, faces[1:], strict=False)]
    return (
        f"looks under a zooming, panning camera (4 photos, every {3 * stride}th frame at 30 "
        f"fps): one person, consecutive analysed frames: min {min(sims):.2f}, 1st percentile "
        f"{np.percentile(sims, 1):.2f} ({len(sims)} pairs)"
    )


def look_line(looks: dict[str, list[tuple[str, int, np.ndarray]]], threshold: float | None) -> str:
    """Similarity of one appearance's looks on consecutive analysed frames vs of two
    different people's looks (every pair, every 2nd look): the margin around the threshold."""
    same = [
        float(np.dot(a[2], b[2]))
        for person in looks.values()
        for a, b in zip(person, person[1:], strict=False)
        if a[0] == b[0]
    ]
    people = list(looks)
    other = [
        float(np.dot(a[2], b[2]))
        for i, p in enumerate(people)
        for q in people[i + 1 :]
        for a in looks[p][::2]
        for b in looks[q][::2]
    ]
    return (
        f"looks (file clips, faces not near another): one appearance, consecutive analysed "
        f"frames: min {min(same):.2f}, 1st percentile {np.percentile(same, 1):.2f} "
        f"({len(same)} pairs); different people: max {max(other):.2f}, 99th percentile "
        f"{np.percentile(other, 99):.2f} ({len(other)} pairs); video.min_similarity={threshold}"
    )


def check(
    video: str,
    out: Path,
    detector: Any,
    classifier: Any,
    options: PredictOptions,
    results: list[ImageResult],
    scenario: Scenario,
    faces: dict[int, tuple[float, ...]],
) -> None:
    """predict() on the clip (the real job loop) counts as the ``after`` replay does."""
    with contextlib.redirect_stdout(io.StringIO()):
        summary = predict(video, out, detector, classifier, options, annotate=False, progress=False)
        after = replay(
            results, scenario, options, classifier.labels, options.video.stride,
            options.video.min_similarity, "seconds", out.with_name(out.name + "-again"), faces,
        )  # fmt: skip
    got = (summary.tracks, summary.audience["totals"]["people"])
    same = "same as" if got == (after.tracks, after.people) else "DIFFERENT from"
    print(f"  predict(): {got[0]} tracks, {got[1]} people ({same} the replay)")


if __name__ == "__main__":
    main()
