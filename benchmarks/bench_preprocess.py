"""Preprocessing throughput vs a naive per-image facenet-pytorch MTCNN loop, as a ratio.

Files: ``--copies`` copies of each real photo in data/samples (faces of several sizes).
A: :func:`agegender.preprocess.run_preprocess` exactly as ``python -m agegender.preprocess``
runs it (``--workers`` processes, one torch thread each, detection on a downscaled copy,
5-point alignment, atomic shard writes), into a fresh cache each round, start-up included.
B: the seed-project way: one ``facenet_pytorch.MTCNN(keep_all=True)`` in this process, PIL
load, ``detect`` on the full image, crop the best box and resize it to 256.
Arms alternate for ``--rounds`` rounds; medians are compared (target >= 1.5x).

    python benchmarks/bench_preprocess.py [--rounds 3] [--copies 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from agegender.preprocess import FaceOptions, run_preprocess

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def naive(files: list[Path]) -> float:
    from facenet_pytorch import MTCNN

    t0 = time.perf_counter()
    mtcnn = MTCNN(keep_all=True)
    for path in files:
        img = Image.open(path).convert("RGB")
        boxes, _ = mtcnn.detect(img)
        if boxes is not None:
            box = np.asarray(boxes[0], dtype=float)
            img = img.crop(tuple(box))
        np.asarray(img.resize((256, 256)))
    return len(files) / (time.perf_counter() - t0)


def ours(files: list[Path], cache: Path, workers: int) -> float:
    jobs = pd.DataFrame({"key": [p.name for p in files], "path": [str(p) for p in files]})
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    report = run_preprocess(
        jobs, cache, FaceOptions("mtcnn"), workers=workers, chunk_size=4, progress=False
    )
    rate = len(files) / (time.perf_counter() - t0)
    assert report.processed == len(files) and report.errors == 0, report.summary()
    return rate


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
