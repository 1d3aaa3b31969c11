"""Measure the runtimes on this machine and record ``precision=auto``'s choice.

Run by the install step (``python -m agegender.weights original``) and on demand
(``python -m agegender.weights measure``). Each exact-enough path available here (onnxruntime
fp32, torch fp32, and torch bf16 where the CPU has bf16 instructions) classifies real aligned
faces (:mod:`agegender.runtime.sample_faces`) for a few seconds, in alternating rounds so a
busy moment hurts every path alike; bf16 must give fp32's labels (argmax agreement at least
:data:`MIN_LABEL_AGREEMENT`) to be eligible. Start-up (a fresh process importing the runtime,
loading the model and classifying one face) is measured too: one photo may be faster on a
path that is slower for a folder. The record (:mod:`agegender.runtime.measured`) keeps every
figure and the two choices.
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agegender.fileio import atomic_write
from agegender.hardware import cpu_flags
from agegender.runtime.build import build_classifier, configure_torch_threads
from agegender.runtime.measured import RECORD_FORMAT, machine
from agegender.runtime.sample_faces import face_views, real_faces
from agegender.store import auto_record_path, original_onnx_path

#: Share of faces on which bf16 must give fp32's label (age and gender) to be eligible.
MIN_LABEL_AGREEMENT: float = 0.95
#: Faces classified per batch (predict.py's default batch size).
BATCH: int = 32
#: CPU flags with bf16 instructions: where measuring torch bf16 is worth the seconds
#: (elsewhere it is emulated, ~5x slower than fp32).
BF16_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})

_START_CODE = """
import sys, time
t = time.perf_counter()
import numpy as np
from agegender.runtime.build import build_classifier
c, _ = build_classifier(backend=sys.argv[1], precision=sys.argv[2], download=False)
c.predict(c.stack([c.preprocess(np.zeros((c.face_spec.face_size,) * 2 + (3,), np.uint8))]))
print(time.perf_counter() - t)
"""


def paths(include_bf16: bool | None = None) -> list[tuple[str, str]]:
    """The (backend, precision) paths to measure here."""
    out = [("onnxruntime", "fp32")] if original_onnx_path().is_file() else []
    out.append(("torch", "fp32"))
    if include_bf16 or (include_bf16 is None and BF16_FLAGS & cpu_flags()):
        out.append(("torch", "bf16"))
    return out


def start_seconds(backend: str, precision: str) -> float:
    """Seconds a fresh process takes to import ``backend``, load the original weights and
    classify one face (the interpreter's own start not counted: it is the same for all)."""
    done = subprocess.run(
        [sys.executable, "-c", _START_CODE, backend, precision],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{backend} {precision} failed to start: {done.stderr.strip()[-300:]}")
    return float(done.stdout.strip().splitlines()[-1])


def measure(
    seconds: float = 6.0,
    rounds: int = 3,
    faces: str | Path | None = None,
    workers: int = 2,
    include_bf16: bool | None = None,
) -> dict[str, Any]:
    """Time each path for ``seconds`` in all (``rounds`` alternating rounds) and return the
    record; :func:`write_record` stores it. ``workers``: predict.py's loader threads (torch
    gets cores // workers threads, as in a run)."""
    real = real_faces(faces)
    views = (real + face_views(real, BATCH * 2, seed=2))[: BATCH * 2]
    configure_torch_threads(None, workers)
    classifiers = {
        path: build_classifier(backend=path[0], precision=path[1], download=False)[0]
        for path in paths(include_bf16)
    }
    batches = {
        path: [
            c.stack([c.preprocess(face) for face in views[i : i + BATCH]])
            for i in range(0, len(views), BATCH)
        ]
        for path, c in classifiers.items()
    }
    labels = {
        path: {task: np.concatenate([c.predict(b)[task] for b in batches[path]]).argmax(1)
               for task in c.tasks}
        for path, c in classifiers.items()
    }  # fmt: skip
    reference = labels[("torch", "fp32")]
    rates: dict[tuple[str, str], list[float]] = {path: [] for path in classifiers}
    for _ in range(rounds):
        for path, classifier in classifiers.items():
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / rounds / len(classifiers):
                for batch in batches[path]:
                    classifier.predict(batch)
                    n += len(batch)
            rates[path].append(n / (time.perf_counter() - start))
    candidates = []
    for path in classifiers:
        agree = min(float(np.mean(labels[path][t] == reference[t])) for t in reference)
        candidates.append({
            "backend": path[0],
            "precision": path[1],
            "faces_per_s": statistics.median(rates[path]),
            "rounds_faces_per_s": [round(r, 2) for r in rates[path]],
            "start_s": start_seconds(*path),
            "label_agreement": agree,
            "eligible": agree >= MIN_LABEL_AGREEMENT,
        })  # fmt: skip
    eligible = [c for c in candidates if c["eligible"]]
    folder, margin = choose_folder(eligible)
    single = min(eligible, key=lambda c: c["start_s"] + 1.0 / c["faces_per_s"])
    return {
        "format": RECORD_FORMAT,
        "measured": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "faces": len(views),
        "seconds": seconds,
        "rounds": rounds,
        "workers": workers,
        "candidates": candidates,
        "choices": {
            name: {"backend": c["backend"], "precision": c["precision"]}
            for name, c in (("folder", folder), ("single", single))
        },
        "folder_margin": margin,
    }


#: How much faster, in its SLOWEST round against onnxruntime's FASTEST, another path must be
#: for ``auto`` to leave onnxruntime fp32 for a folder: that path is exact, starts without
#: torch and peaks ~0.5 GB lower (torch bf16 held 1.1 GB vs 0.6 GB on 216 photos), so a gain
#: within the noise of a few seconds of timing on a busy machine is not worth it.
MIN_FOLDER_GAIN = 1.15
BASELINE = ("onnxruntime", "fp32")


def choose_folder(eligible: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The folder path ``auto`` takes, and why in one line: onnxruntime fp32 unless another
    eligible path beats it by :data:`MIN_FOLDER_GAIN` in every round (the spread of the
    rounds counts); without onnxruntime, the fastest."""
    base = next((c for c in eligible if (c["backend"], c["precision"]) == BASELINE), None)
    if base is None:
        best = max(eligible, key=lambda c: c["faces_per_s"])
        return best, "no onnxruntime path measured: the fastest"
    base_best = max(base.get("rounds_faces_per_s") or [base["faces_per_s"]])
    chosen, lines = base, []
    for c in eligible:
        if c is base:
            continue
        worst = min(c.get("rounds_faces_per_s") or [c["faces_per_s"]])
        gain = worst / base_best if base_best > 0 else float("inf")
        lines.append(f"{c['backend']} {c['precision']} {gain:.2f}x in its slowest round")
        if gain >= MIN_FOLDER_GAIN and c["faces_per_s"] > chosen["faces_per_s"]:
            chosen = c
    need = f"needs >= {MIN_FOLDER_GAIN:.2f}x onnxruntime fp32's fastest round"
    return chosen, f"{'; '.join(lines) or 'nothing else eligible'} ({need})"


def write_record(record: dict[str, Any], path: str | Path | None = None) -> Path:
    """Store ``record`` where ``precision=auto`` reads it (atomically)."""
    target = Path(path) if path is not None else auto_record_path()
    text = json.dumps(record, indent=2) + "\n"
    return atomic_write(target, lambda fh: fh.write(text.encode()))


def candidate_lines(record: dict[str, Any]) -> list[str]:
    """One console line per measured path: its figures and whether ``auto`` may take it."""
    return [
        f"  {c['backend']:<11} {c['precision']:<4} {c['faces_per_s']:7.1f} faces/s, "
        f"start {c['start_s']:.2f} s, labels as fp32 {c['label_agreement']:.1%}"
        + ("" if c["eligible"] else " (not eligible)")
        for c in record["candidates"]
    ]


def summary(record: dict[str, Any]) -> list[str]:
    """Lines for the console: each path's figures and the choices."""
    lines = candidate_lines(record)
    for name, choice in record["choices"].items():
        what = "one photo" if name == "single" else "a folder"
        why = (
            f" ({record['folder_margin']})"
            if name == "folder" and "folder_margin" in record
            else ""
        )
        lines.append(f"  auto for {what}: {choice['backend']} {choice['precision']}{why}")
    return lines
