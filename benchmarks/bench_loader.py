"""Is the loader fast enough? Images/s the DataModule delivers vs images/s training consumes.

A: ``AdienceDataModule.train_dataloader()`` on a generated demo tree (cache already built),
``--num-workers`` workers, batch 50, the paper's training transforms (random 227 crop + mirror
of the cached 256 faces), timed over ``--batches`` batches after the first one (worker start-up
excluded: persistent workers pay it once per run).
B: one Levi-Hassner training step (shared trunk, both heads, batch 50, SGD momentum) on a
batch already in memory.
Arms alternate for ``--rounds`` rounds; the ratio of medians is printed (target >= 3: the
model, not the loader, is the bottleneck). The machine is shared, so only the ratio matters.

    python benchmarks/bench_loader.py [--rounds 3] [--batches 12] [--num-workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from agegender.data import AdienceDataModule
from agegender.data.demo import generate_demo
from agegender.models import build_model


def loader_rate(dm: AdienceDataModule, batches: int) -> float:
    it = iter(dm.train_dataloader())
    images, t0 = 0, None
    for n in range(batches + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            batch = next(it)
        if n == 0:
            t0 = time.perf_counter()  # after the first batch: workers are up
        else:
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - t0)


def train_rate(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> float:
    x = torch.rand(50, 3, 227, 227) * 255
    x = x.contiguous(memory_format=torch.channels_last)
    age, gender = torch.randint(0, 8, (50,)), torch.randint(0, 2, (50,))
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(x)
        loss = F.cross_entropy(out["age"], age) + F.cross_entropy(out["gender"], gender)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 50 * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_demo(Path(tmp) / "demo", users=30, images_per_user=20)
        dm = AdienceDataModule(
            root, source="aligned", label_policy="remap", batch_size=50,
            num_workers=args.num_workers, persistent_workers=True, auto_preprocess=True,
            preprocess={"progress": False},
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        model = build_model("levi_hassner", mode="shared").to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        train_rate(model, opt, 1)  # warm-up (allocator, kernels)
        loader_rate(dm, 2)
        a, b = [], []
        for r in range(args.rounds):
            a.append(loader_rate(dm, args.batches))
            b.append(train_rate(model, opt, args.steps))
            print(f"round {r}: loader {a[-1]:.1f} img/s, training step {b[-1]:.1f} img/s")
    la, lb = statistics.median(a), statistics.median(b)
    print(f"loader ({args.num_workers} workers, train transforms): {la:.1f} img/s (median)")
    print(f"Levi-Hassner training step (batch 50, SGD): {lb:.1f} img/s (median)")
    print(f"ratio loader / training step: {la / lb:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
