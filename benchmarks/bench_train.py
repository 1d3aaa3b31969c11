"""Training throughput of the train.py pipeline vs a bare PyTorch loop, as a ratio.

A: the train.py pipeline exactly as composed from conf/ (``experiment=levi_hassner data=demo``:
Lightning Trainer + callbacks + CSV logger + the DataModule's loader with decoding and
augmentation in worker processes), timed by a callback from the end of the warm-up steps to
the end of the last step (every image processed in between counts, epoch ends included).
B: a bare loop on the same network, optimiser groups, losses and memory format
(``model.channels_last`` of the config), batches already in memory.
Arms alternate A/B for ``--rounds`` rounds; medians are compared (the machine is shared).
Optionally C (``--other-format``): the bare loop in the other memory format, to check the
config's choice (on 2 CPU cores contiguous trained 1.07-1.25x faster than channels_last).

    python benchmarks/bench_train.py [--rounds 3] [--steps 8] [--num-workers 2] [--other-format]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from agegender.training.fit import build
from agegender.training.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[1]


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t0: float | None = None
        self.t1: float | None = None
        self.images = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.t0 = now
        elif trainer.global_step > self.warmup:
            self.images += batch["image"].shape[0]
            self.t1 = now

    def rate(self) -> float:
        return self.images / (self.t1 - self.t0)


def compose_cfg(root: Path, out: Path, args: argparse.Namespace, steps: int):  # noqa: ANN201
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"paths.root_dir={REPO}",
                f"paths.output_dir={out}",
                "experiment=levi_hassner",
                "data=demo",
                f"data.root={root}",
                f"data.demo_users={args.demo_users}",
                f"data.demo_images_per_user={args.demo_images}",
                f"data.batch_size={args.batch_size}",
                "data.preprocess.workers=1",
                f"data.num_workers={args.num_workers}",
                f"data.persistent_workers={args.num_workers > 0}",
                f"trainer.max_steps={steps}",
                "trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "test=false",
            ],
        )


def lightning_arm(root: Path, tmp: Path, args: argparse.Namespace, round_: int) -> float:
    cfg = compose_cfg(root, tmp / f"run{round_}", args, args.warmup + args.steps)
    timer = StepTimer(args.warmup)
    datamodule, module, trainer = build(cfg, extra_callbacks=[timer])
    trainer.fit(module, datamodule=datamodule)
    return timer.rate()


def bare_arm(
    cfg, batches: list[dict[str, torch.Tensor]], args: argparse.Namespace, channels_last: bool
) -> float:  # noqa: ANN001
    module = instantiate(cfg.model, _recursive_=False, channels_last=channels_last)
    model = module.model.train()
    optimizer = build_optimizer(model, cfg.model.optimizer, cfg.model.param_groups)
    scheduler = build_scheduler(optimizer, cfg.model.scheduler, args.warmup + args.steps)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = 0
    t0 = 0.0
    for step, batch in enumerate(
        itertools.islice(itertools.cycle(batches), args.warmup + args.steps)
    ):
        if step == args.warmup:
            t0 = time.perf_counter()
        logits = model(batch["image"].contiguous(memory_format=fmt))
        loss = module.total_loss(module.task_losses(logits, batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if step >= args.warmup:
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arm and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--demo-users", type=int, default=40)
    parser.add_argument("--demo-images", type=int, default=20)
    parser.add_argument(
        "--other-format", action="store_true", help="also time C (the other memory format)"
    )
    parser.add_argument("--root", type=Path, default=None, help="demo root to (re)use")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.root or tmp / "demo"
        cfg = compose_cfg(root, tmp / "prep", args, args.warmup + args.steps)
        pl.seed_everything(0)
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batches = [b for b, _ in zip(datamodule.train_dataloader(), range(4), strict=False)]
        batches = [b for b in batches if b["image"].shape[0] == args.batch_size] or batches
        print(
            f"Levi-Hassner (separate trunks) training, batch {args.batch_size}, "
            f"{torch.get_num_threads()} threads, loader workers {args.num_workers}, "
            f"{len(datamodule.datasets['train'])} demo training faces"
        )
        fmt = bool(cfg.model.channels_last)
        names = {True: "channels_last", False: "contiguous"}
        rates: dict[str, list[float]] = {"lightning": [], "bare": [], "other": []}
        for r in range(args.rounds):
            rates["lightning"].append(lightning_arm(root, tmp, args, r))
            rates["bare"].append(bare_arm(cfg, batches, args, channels_last=fmt))
            if args.other_format:
                rates["other"].append(bare_arm(cfg, batches, args, channels_last=not fmt))
            print(
                f"round {r}: train.py {rates['lightning'][-1]:.1f} img/s, "
                f"bare ({names[fmt]}) {rates['bare'][-1]:.1f} img/s"
                + (f", bare {names[not fmt]} {rates['other'][-1]:.1f}" if args.other_format else "")
            )
    lightning, bare = statistics.median(rates["lightning"]), statistics.median(rates["bare"])
    print(f"median train.py pipeline: {lightning:.1f} img/s; bare loop: {bare:.1f} img/s")
    print(f"ratio train.py / bare loop: {lightning / bare:.3f}x (target >= 0.9x)")
    if args.other_format:
        other = statistics.median(rates["other"])
        print(f"ratio bare {names[fmt]} (config) / bare {names[not fmt]}: {bare / other:.3f}x")


if __name__ == "__main__":
    main()
