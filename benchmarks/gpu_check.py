"""The GPU path in one command: training speed and loader waits, GPU-vs-CPU correctness,
and prediction on the GPU, printed as one table.

    PYTHONPATH=. python benchmarks/gpu_check.py [--steps 300] [--workers 4] [--work DIR]

Without CUDA it prints ``no CUDA device`` and what to run instead, and exits 0 (so it lives
in the repository and never breaks CI). ``--device cpu --quick`` runs every part on the CPU
with small budgets (the test suite does; the figures then say nothing about a GPU). Nothing
is downloaded: the demo tree is generated in ``--work``, the original weights come from the
cache the install command fills, timm models start from random weights.

Parts (each row says ``ok``, a verdict, or ``FAILED: <why>``; one failure never stops the
others):

- training: ``experiment=levi_hassner`` on a generated demo tree with ``trainer=gpu`` in
  fp32 and ``bf16-mixed``, and ``model=timm`` (a small timm backbone): steps/s, faces/s, the
  share of step time spent waiting for data (with the loader workers used), peak GPU memory;
- correctness: the original weights on the sample faces, GPU fp32 vs CPU fp32 probabilities
  (max |dp| <= 1e-4) and GPU bf16 label agreement; one training step's loss on GPU vs CPU
  from the same seed and batch;
- prediction: ``predict.py device=cuda`` on the sample photos gives the CPU run's faces and
  labels; the classifier's faces/s at batch 256.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
#: A small timm backbone (random weights: nothing to download).
TIMM_MODEL = "efficientnet_b0"


@dataclass
class Row:
    section: str
    check: str
    value: str
    verdict: str


def format_table(rows: list[Row]) -> str:
    """One aligned table: a header, a rule, a line per row (every line the same width)."""
    names = [f.name for f in fields(Row)]
    cells = [names, ["-" * len(n) for n in names]]
    cells += [[getattr(row, n) for n in names] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
    cells[1] = ["-" * w for w in widths]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells
    )


def guarded(section: str, check: str, part: Callable[[], list[Row]]) -> list[Row]:
    """The part's rows, or one FAILED row saying why (the other parts still run)."""
    try:
        return part()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        return [Row(section, check, f"FAILED: {why[:160]}", "FAILED")]


def make_demo(work: Path, users: int, images_per_user: int) -> Path:
    """A generated Adience-style tree, its faces cached (``data.source=aligned``)."""
    from agegender.data import AdienceDataModule

    root = work / "demo"
    datamodule = AdienceDataModule(
        root=root, demo=True, demo_users=users, demo_images_per_user=images_per_user,
        source="aligned", label_policy="remap", num_workers=0,
    )  # fmt: skip
    datamodule.prepare_data()
    return root


def _compose(overrides: list[str], output: Path):  # noqa: ANN202 - a DictConfig
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={output}", *overrides],
        )


def _train_overrides(demo: Path, device: str, workers: int, steps: int) -> list[str]:
    return [
        "data=demo",
        f"data.root={demo}",
        f"data.num_workers={workers}",
        f"data.persistent_workers={'true' if workers else 'false'}",
        f"trainer={'gpu' if device == 'cuda' else 'cpu'}",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks=none",
        "logger=none",
        "test=false",
    ]


def training_rows(
    label: str, demo: Path, work: Path, device: str, precision: str, workers: int, steps: int,
    model: list[str],
) -> list[Row]:  # fmt: skip
    """Fit ``steps`` steps and time them (:class:`agegender.training.throughput.StepClock`)."""
    import torch

    from agegender.training.fit import build
    from agegender.training.throughput import StepClock

    overrides = [*model, *_train_overrides(demo, device, workers, steps)]
    cfg = _compose([*overrides, f"trainer.precision={precision}"], work / f"train_{label}")
    datamodule, module, trainer = build(cfg, [clock := StepClock(warmup=min(10, steps // 3))])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=datamodule)
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else "n/a"
    share = clock.waiting_share
    value = (
        f"{clock.steps_per_second:.1f} steps/s, {clock.faces_per_second:.0f} faces/s, "
        f"waiting for data {share:.0%} ({workers} loader workers), peak {peak}"
    )
    verdict = "loader-bound" if share > 0.3 else "ok"
    return [Row("training", f"{label} ({clock.steps} steps)", value, verdict)]


def _sample_faces():  # noqa: ANN202 - aligned faces of the sample photos
    from agegender.faces import align_face, build_detector
    from agegender.images import load_image
    from agegender.spec import ADIENCE_FRAMING

    detector = build_detector("mtcnn")
    faces = []
    for photo in sorted(SAMPLES.glob("*.jpg")) + sorted(SAMPLES.glob("*.png")):
        image = load_image(photo)
        faces += [align_face(image, face, 256, ADIENCE_FRAMING) for face in detector.detect(image)]
    if not faces:
        raise RuntimeError(f"no face found in {SAMPLES}")
    return faces


def correctness_rows(device: str, demo: Path, work: Path) -> list[Row]:
    import numpy as np
    import torch

    from agegender.runtime.build import build_classifier

    faces = _sample_faces()
    probs = {}
    for where, precision in (("cpu", "fp32"), (device, "fp32"), (device, "bf16")):
        classifier, _ = build_classifier(device=where, precision=precision, backend="torch")
        batch = classifier.stack([classifier.preprocess(face) for face in faces])
        probs[(where, precision)] = classifier.predict(batch)
    cpu, gpu, bf16 = probs[("cpu", "fp32")], probs[(device, "fp32")], probs[(device, "bf16")]
    diff = max(float(np.abs(cpu[t] - gpu[t]).max()) for t in cpu)
    agree = min(float((cpu[t].argmax(1) == bf16[t].argmax(1)).mean()) for t in cpu)
    rows = [
        Row("correctness", f"original weights, {len(faces)} faces: {device} vs cpu fp32",
            f"max |dp| {diff:.1e}", "ok (<= 1e-4)" if diff <= 1e-4 else "DIFFERS"),
        Row("correctness", f"{device} bf16 vs cpu fp32 labels", f"{agree:.0%} equal",
            "ok" if agree == 1.0 else "labels differ"),
    ]  # fmt: skip
    # one training step's loss from the same seed and batch
    cfg = _compose(["experiment=levi_hassner", *_train_overrides(demo, "cpu", 0, 1)], work / "step")
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, shuffle_seed=cfg.seed)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch  # CombinedLoader: (batch, i, j)
    losses = {}
    for where in ("cpu", device):
        torch.manual_seed(cfg.seed)
        module = instantiate(cfg.model, _recursive_=False).to(where)  # the same initial weights
        moved = _to(batch, where)
        with torch.no_grad():
            module.eval()  # dropout off: the two devices' random streams differ
            if "image" in moved:  # a joint batch; else one batch per task (the paper's nets)
                per_task = module.task_losses(module(moved["image"], moved.get("origin")), moved)
            else:
                per_task = module.per_task_losses(moved)
            loss = module.total_loss(per_task)
        losses[where] = float(loss)
    delta = abs(losses["cpu"] - losses[device])
    check = f"first training batch's loss (same seed, no dropout), {device} vs cpu"
    rows.append(Row("correctness", check,
                    f"{losses[device]:.5f} vs {losses['cpu']:.5f} (|d| {delta:.1e})",
                    "ok (<= 1e-4)" if delta <= 1e-4 else "DIFFERS"))  # fmt: skip
    return rows


def _to(batch, where: str):  # noqa: ANN001, ANN202 - nested dicts of tensors
    import torch

    if isinstance(batch, dict):
        return {k: _to(v, where) for k, v in batch.items()}
    return batch.to(where) if torch.is_tensor(batch) else batch


def _predict_csv(out: Path, device: str) -> list[tuple[str, str, str, str]]:
    run = subprocess.run(
        [sys.executable, "predict.py", f"input={SAMPLES}", f"output={out}", f"device={device}",
         "progress=false", "annotate=false", "precision=fp32"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1] if run.stderr else "failed")
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        return [(r["path"], r["face"], r["age"], r["gender"]) for r in csv.DictReader(fh)]


def prediction_rows(device: str, work: Path, quick: bool) -> list[Row]:
    import torch

    from agegender.runtime.build import build_classifier

    cpu = _predict_csv(work / "predict_cpu", "cpu")
    gpu = _predict_csv(work / f"predict_{device}", device)
    same = cpu == gpu
    rows = [Row("prediction", f"predict.py device={device} vs device=cpu (samples)",
                f"{len(gpu)} rows, faces and labels {'equal' if same else 'DIFFER'}",
                "ok" if same else "DIFFERS")]  # fmt: skip
    classifier, _ = build_classifier(device=device, precision="fp32", backend="torch")
    size = 8 if quick else 256
    batch = torch.rand(size, 3, 227, 227) * 255
    classifier.predict(batch)  # warm-up (cuDNN picks its kernels)
    rounds = 1 if quick else 10
    start = time.perf_counter()
    for _ in range(rounds):
        classifier.predict(batch)  # returns numpy: synchronised
    rate = size * rounds / (time.perf_counter() - start)
    rows.append(Row("prediction", f"classifier (both nets) fp32, batch {size}",
                    f"{rate:.0f} faces/s", "ok"))  # fmt: skip
    return rows


#: What a machine without CUDA is told (the first line is what scripts and tests match).
NO_CUDA = (
    "no CUDA device\n"
    "  nothing to measure on a GPU here; to exercise every part on the CPU (small budgets, "
    "a few minutes; the figures say nothing about a GPU):\n"
    "  PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --quick"
)


def description() -> str:
    """--help's description: the module docstring's first paragraphs, whole sentences (its
    first line alone stopped mid-sentence)."""
    paragraphs = (__doc__ or "").strip().split("\n\n")
    return "\n\n".join(paragraphs[:3])


def quiet_lightning() -> None:
    """Lightning's start-up notes and tips ("GPU available", "💡 Tip: ...", "Seed set to
    0") and two deprecation warnings of its dependencies, repeated for every training run,
    would bury this script's table: only Lightning's warnings and errors are printed.
    Lightning sets its loggers to INFO when imported, so it is imported first."""
    import importlib
    import logging
    import warnings

    for module in ("pytorch_lightning", "lightning_fabric", "lightning"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    for name in [*logging.root.manager.loggerDict, "pytorch_lightning", "lightning"]:
        if name.startswith(("pytorch_lightning", "lightning")):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*set_vital.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=description(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda", choices=("cuda", "cpu"), help="where to run (default cuda)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="data loader workers"
    )
    parser.add_argument(
        "--work", type=Path, help="folder for the demo tree and runs (default: a new temporary one)"
    )
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    quiet_lightning()
    from agegender.hardware import cpu_summary

    device = args.device
    steps, workers = (6, 0) if args.quick else (args.steps, args.workers)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--device cpu)"
    print(f"device: {name}; torch {torch.__version__}; {cpu_summary()}")
    work = args.work or Path(tempfile.mkdtemp(prefix="agegender-gpu-check-"))
    users, per_user = (20, 10) if args.quick else (60, 25)
    demo = make_demo(work, users, per_user)
    lh = ["experiment=levi_hassner"]
    timm = ["experiment=modern", "model=timm", f"model.name={TIMM_MODEL}"]
    precisions = ["32-true", "bf16-mixed"]
    rows: list[Row] = []
    runs = [(f"levi_hassner {p}", lh, p) for p in precisions]
    runs.append((f"timm {TIMM_MODEL} bf16-mixed", timm, "bf16-mixed"))
    if args.quick:  # a smoke run: small batches (timm's 64 x 224 px steps took ~15 min on 2 cores)
        runs = [(label, [*model, "data.batch_size=8"], p) for label, model, p in runs]
    for label, model, precision in runs:

        def part(label=label, model=model, precision=precision) -> list[Row]:  # noqa: ANN001
            return training_rows(label, demo, work, device, precision, workers, steps, model)

        rows += guarded("training", label, part)
    rows += guarded("correctness", "GPU vs CPU", lambda: correctness_rows(device, demo, work))
    rows += guarded("prediction", "predict.py", lambda: prediction_rows(device, work, args.quick))
    print(f"\ngpu_check results ({name}):", flush=True)
    print(format_table(rows))
    return 1 if any(row.verdict == "FAILED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
