"""Preprocessing throughput vs a naive per-image facenet-pytorch MTCNN loop, as a ratio.

Files: ``--copies`` copies of each real photo in data/samples (faces of several sizes).
A: :func:`agegender.data.preprocess.run_preprocess` exactly as
``python -m agegender.data.preprocess`` runs it (``--workers`` processes, one torch thread
each, detection on a downscaled copy, 5-point alignment, atomic shard writes), into a fresh
cache each round, worker start-up included. Each arm runs in a fresh interpreter every round
(nothing warm carries over) and is timed there after its imports.
B: the seed-project way: one ``facenet_pytorch.MTCNN(keep_all=True)`` in one process, PIL
load, ``detect`` on the full image, crop the best box and resize it to 256.
Arms alternate for ``--rounds`` rounds; medians are compared (target >= 1.5x).

    python benchmarks/bench_preprocess.py [--rounds 3] [--copies 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


# Each arm runs in a fresh interpreter, as the command does: nothing warm (worker pools,
# forkservers, detectors) carries over between rounds. The rate is timed inside the child,
# after its module imports, so both arms pay only for the work (and our worker start-up).
NAIVE = """
import sys, time, numpy as np
from PIL import Image
from facenet_pytorch import MTCNN
files = sys.argv[1:]
t0 = time.perf_counter()
mtcnn = MTCNN(keep_all=True)
for path in files:
    img = Image.open(path).convert("RGB")
    boxes, _ = mtcnn.detect(img)
    if boxes is not None:
        img = img.crop(tuple(np.asarray(boxes[0], dtype=float)))
    np.asarray(img.resize((256, 256)))
print(len(files) / (time.perf_counter() - t0))
"""

OURS = """
import sys, time, pandas as pd
from agegender.data.preprocess import FaceOptions, run_preprocess
cache, workers, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
jobs = pd.DataFrame({"key": [f.rsplit("/", 1)[-1] for f in files], "path": files})
t0 = time.perf_counter()
report = run_preprocess(jobs, cache, FaceOptions("mtcnn"), workers=workers, progress=False)
rate = len(files) / (time.perf_counter() - t0)
assert report.processed == len(files) and report.errors == 0, report.summary()
print(rate)
"""


def _rate(script: str, *args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def naive(files: list[Path]) -> float:
    return _rate(NAIVE, *map(str, files))


def ours(files: list[Path], cache: Path, workers: int) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    return _rate(OURS, str(cache), str(workers), *map(str, files))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    photos = [p for p in sorted(SAMPLES.iterdir()) if p.suffix in (".jpg", ".png")]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.copies):
            for p in photos:
                files.append(Path(tmp) / f"{p.stem}_{i}{p.suffix}")
                shutil.copy(p, files[-1])
        a, b = [], []
        for r in range(args.rounds):
            a.append(ours(files, Path(tmp) / "cache", args.workers))
            b.append(naive(files))
            print(f"round {r}: preprocess {a[-1]:.2f} img/s, naive MTCNN loop {b[-1]:.2f} img/s")
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{len(files)} files ({', '.join(p.name for p in photos)} x {args.copies})")
    print(f"preprocessing ({args.workers} workers): {ma:.2f} img/s (median)")
    print(f"naive per-image facenet-pytorch MTCNN loop: {mb:.2f} img/s (median)")
    print(f"ratio preprocess / naive: {ma / mb:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
