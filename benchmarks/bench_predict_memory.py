"""Does prediction memory stay flat over a big folder? RSS after 1,000 and after 10,000 files.

Generates ``--files`` small JPEGs (default 10,000 noise images of 96 x 80 px) in a temporary
folder and runs :func:`agegender.inference.predict` over it in this process, CSV and
annotated copies included (``--no-annotate`` to leave them out). A detector wrapper reads
this process's resident memory (``VmRSS`` in /proc/self/status) every 1,000 files, as the
files enter detection; the figures to quote are RSS after 1,000 files, after all of them
(when predict() has returned) and their ratio: ~1.0 means nothing grows per file.

The default run is about the *pipeline's* memory (decode, loader window, batching, CSV
writer, annotation queue, summary), not about a detector: ``--detector none`` (each image is
taken as a face crop) and a shared-trunk Levi-Hassner network with random weights (half the
cost of the original two nets; the network's memory does not depend on its weights) keep it
to a few minutes on 2 cores. ``--detector mtcnn`` and ``--checkpoint original`` (or a path)
measure the real thing, slower (MTCNN finds no face in noise, so its cost is the detection).

    python benchmarks/bench_predict_memory.py [--files 10000] [--detector none|mtcnn|haar]
        [--checkpoint shared-random|original|PATH] [--no-annotate] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from agegender.faces import Detector, Face, build_detector
from agegender.hardware import cpu_summary
from agegender.inference import predict
from agegender.runtime.build import build_classifier, configure_torch_threads
from agegender.runtime.torch_classifier import FaceClassifier


def rss_mb() -> float:
    """Resident set size now, in MiB (VmRSS; the peak VmHWM is printed separately)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the peak


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MeteredDetector(Detector):
    """Delegates to a real detector and notes RSS every ``every`` images (thread-safe)."""

    def __init__(self, inner: Detector, every: int = 1000) -> None:
        self.inner = inner
        self.name = inner.name
        self.thread_safe = inner.thread_safe
        self.every = every
        self.count = 0
        self.samples: list[tuple[int, float]] = []
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[Face]:
        faces = self.inner.detect(image)
        with self._lock:
            self.count += 1
            if self.count % self.every == 0:
                self.samples.append((self.count, rss_mb()))
        return faces


def make_folder(root: Path, n_files: int, width: int = 96, height: int = 80) -> Path:
    """``n_files`` distinct noise JPEGs in sub-folders of 1,000 (as photo dumps are)."""
    rng = np.random.default_rng(0)
    folder = root / "photos"
    for i in range(n_files):
        sub = folder / f"batch_{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        image = rng.integers(0, 256, (height, width, 3), np.uint8)
        cv2.imwrite(str(sub / f"img_{i:06d}.jpg"), image)
    return folder


def load_classifier(spec: str) -> FaceClassifier:
    if spec == "shared-random":
        import torch

        from agegender.models import LeviHassnerNet

        torch.manual_seed(0)
        return FaceClassifier(LeviHassnerNet(mode="shared"))
    return build_classifier(None if spec == "original" else spec, download=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--detector", default="none")
    parser.add_argument("--checkpoint", default="shared-random")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-annotate", dest="annotate", action="store_false")
    args = parser.parse_args()
    if args.files < 1000:
        parser.error("--files must be >= 1000 (the first figure is taken at 1,000 files)")

    print(cpu_summary())
    threads = configure_torch_threads(None, args.workers)
    classifier = load_classifier(args.checkpoint)
    detector = MeteredDetector(build_detector(args.detector))
    with tempfile.TemporaryDirectory(prefix="bench_predict_memory_") as tmp:
        start = time.perf_counter()
        folder = make_folder(Path(tmp), args.files)
        print(f"{args.files} JPEGs written in {time.perf_counter() - start:.1f} s")
        before = rss_mb()
        summary = predict(
            folder,
            Path(tmp) / "out",
            detector,
            classifier,
            batch_size=args.batch_size,
            workers=args.workers,
            annotate=args.annotate,
            progress=False,
        )
        after = rss_mb()
    print(
        f"detector={args.detector} checkpoint={args.checkpoint} batch_size={args.batch_size} "
        f"workers={args.workers} torch threads={threads} annotate={args.annotate}"
    )
    print(f"predict: {summary.line()}")
    print("RSS every 1,000 files (MiB): " + ", ".join(f"{n}: {m:.0f}" for n, m in detector.samples))
    at_1000 = detector.samples[0][1]
    print(f"RSS before predict: {before:.0f} MiB; peak of the process (VmHWM): {peak_mb():.0f} MiB")
    print(
        f"RSS after 1,000 files: {at_1000:.0f} MiB; after {args.files:,} files: {after:.0f} MiB; "
        f"ratio {after / at_1000:.3f}"
    )


if __name__ == "__main__":
    main()
