"""How steady are per-track labels compared with per-frame labels? (README, Videos)

Generates short clips from the sample portraits (slow zoom in, zoom out, zoom + pan; the
camera moves, the person does not, so every label change is the model's flicker), runs
predict() on them as predict.py does (MTCNN, the original Levi-Hassner nets, every
``--stride``-th frame) and counts, within each track, how often the label changes between
consecutive analysed frames:

- per frame: each frame's own argmax (what predictions.csv's ``age``/``gender`` say);
- running average: the argmax of the track's mean probabilities so far (what a live stream's
  annotated recording shows);
- per track: the argmax of the whole track's mean (tracks.csv, the annotated video's label),
  constant by construction; reported as how many frames' own label disagrees with it.

It also reports what the tracker did: tracks per face (1.0 = no fragmentation) and the share
of face rows that carry a track id.

    python benchmarks/bench_video_tracks.py [--frames 90] [--stride 3] [--size 320x400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from agegender.data.demo import camera_clip, write_video
from agegender.faces import build_detector
from agegender.images import load_image
from agegender.inference import predict
from agegender.inference.tracking import label_changes
from agegender.labels import AGE_BUCKETS, GENDERS
from agegender.runtime.build import build_classifier, configure_torch_threads

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
PORTRAITS = ("astronaut.jpg", "biden.jpg", "obama.jpg")
#: (name, zoom at start, zoom at end, horizontal pan as a fraction of the width)
MOTIONS = (("zoom-in", 1.0, 1.6, 0.0), ("zoom-out", 1.6, 1.0, 0.0), ("zoom-pan", 1.2, 1.5, 0.15))


def clip(photo: Path, frames: int, size: tuple[int, int], motion: tuple) -> list[np.ndarray]:
    """BGR frames of a virtual camera moving over ``photo`` (the face stays in view)."""
    _, z0, z1, pan = motion
    image = cv2.cvtColor(load_image(photo), cv2.COLOR_RGB2BGR)
    return camera_clip(image, frames, size, zoom=(z0, z1), pan=pan, centre_y=1 / 2.5)


def track_figures(rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per task: label changes per frame / running average, disagreements with the track
    label, and the number of frame-to-frame transitions, summed over tracks."""
    age_cols = [f"p_age_{i}" for i in range(len(AGE_BUCKETS))]
    gender_cols = [f"p_gender_{i}" for i in range(len(GENDERS))]
    out: dict[str, dict[str, int]] = {}
    for task, cols, names in (("age", age_cols, AGE_BUCKETS), ("gender", gender_cols, GENDERS)):
        figures = dict.fromkeys(("transitions", "frame", "running", "disagree", "frames"), 0)
        for _, track in rows.groupby(["video", "track"]):
            probs = track[cols].to_numpy(dtype=float)
            own = [names[i] for i in probs.argmax(1)]
            running_mean = np.cumsum(probs, 0) / np.arange(1, len(probs) + 1)[:, None]
            running = [names[i] for i in running_mean.argmax(1)]
            final = names[int(probs.mean(0).argmax())]
            figures["transitions"] += len(own) - 1
            figures["frame"] += label_changes(own)
            figures["running"] += label_changes(running)
            figures["disagree"] += sum(label != final for label in own)
            figures["frames"] += len(own)
        out[task] = figures
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=90, help="frames per clip (30 fps)")
    parser.add_argument("--stride", type=int, default=3, help="video.stride")
    parser.add_argument("--size", default="320x400", help="clip width x height")
    parser.add_argument("--offline", action="store_true", help="never download weights")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    configure_torch_threads(None, 2)
    detector = build_detector("mtcnn")
    classifier, _ = build_classifier(download=not args.offline)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        for photo in PORTRAITS:
            for motion in MOTIONS:
                name = f"{Path(photo).stem}_{motion[0]}.mp4"
                write_video(
                    folder / name, clip(SAMPLES / photo, args.frames, (width, height), motion), 30
                )
        began = time.perf_counter()
        summary = predict(
            folder, Path(tmp) / "out", detector, classifier, video_stride=args.stride,
            save_probs=True, annotate=False, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - began
        df = pd.read_csv(Path(tmp) / "out" / "predictions.csv", keep_default_na=False)
    faces = df[df["status"] == "ok"].copy()
    faces["video"] = faces["path"].str.rpartition("#frame=")[0]
    tracked = faces[faces["track"] != ""]
    clips = len(PORTRAITS) * len(MOTIONS)
    print(
        f"{clips} clips ({', '.join(m[0] for m in MOTIONS)} over {', '.join(PORTRAITS)}), "
        f"{args.frames} frames at 30 fps, {width}x{height}, video.stride={args.stride}: "
        f"{summary.inputs} analysed frames, {len(faces)} face rows in {seconds:.1f} s"
    )
    print(
        f"tracker: {summary.tracks} tracks for {clips} faces "
        f"({summary.tracks / clips:.2f} per face), {len(tracked) / max(len(faces), 1):.1%} "
        "of face rows carry a track id"
    )
    figures = track_figures(tracked)
    print("label changes between consecutive analysed frames of a track:")
    print(f"{'task':<8}{'per frame':>18}{'running average':>20}{'per track':>12}"
          f"{'frames off the track label':>30}")  # fmt: skip
    for task, f in figures.items():
        n = max(f["transitions"], 1)
        print(
            f"{task:<8}{f['frame']:>5} / {f['transitions']} ({f['frame'] / n:5.1%})"
            f"{f['running']:>7} / {f['transitions']} ({f['running'] / n:5.1%})"
            f"{0:>12}"
            f"{f['disagree']:>14} / {f['frames']} ({f['disagree'] / max(f['frames'], 1):5.1%})"
        )


if __name__ == "__main__":
    main()
