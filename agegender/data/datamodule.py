"""LightningDataModules over the face cache: Adience folds (and, in ``csv.py``, any CSV).

Everything dataset-specific is a row table (``key, user_id, fold, age, gender``) plus the
preprocessing jobs (``key, path[, box]``); the rest is shared here: the subject-exclusive
split, the cache check, the presets of :mod:`agegender.transforms` (the only preprocessing
path), and DataLoaders with per-device batch sizes (DDP-safe: no global state, every rank
computes the same seeded split).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from agegender.data.cache import CacheError, FaceCache, read_index
from agegender.data.datasets import CachedFaceDataset
from agegender.data.folds import image_relpath, load_folds
from agegender.data.splits import fold_splits
from agegender.labels import IGNORE_INDEX, TASK_NUM_CLASSES
from agegender.models.levi_hassner import FACE_SIZE, INPUT_SIZE
from agegender.preprocess import FaceOptions, PreprocessReport, print_report, run_preprocess
from agegender.transforms import EvalPreset, TrainPreset

log = logging.getLogger(__name__)

#: Preprocessing settings a data config may override (``data.preprocess.workers=...``).
PREPROCESS_DEFAULTS: dict[str, Any] = {
    "workers": 2,
    "chunk_size": 64,
    "detector": "mtcnn",
    "detector_kwargs": {},
    "fallback_fraction": 0.5,
    "progress": True,
    "retry_failed": False,
}

#: ``train_batches``: ``joint`` (one loader over every training row, unknown labels masked)
#: or ``per_task`` (one loader per task over the rows labelled for it, as the paper's two
#: Caffe nets each read their own list).
TRAIN_BATCHES: tuple[str, ...] = ("joint", "per_task")


def adience_key(user_id: str, face_id: int, original_image: str) -> str:
    return f"{user_id}/{face_id}/{original_image}"


class FaceDataModule(pl.LightningDataModule):
    """Shared machinery; subclasses provide :meth:`load_table` and :meth:`jobs`.

    ``train_batches``: see :data:`TRAIN_BATCHES`; ``train_tasks``: the tasks that get a
    loader with ``per_task`` (None: every task; set it to the model's tasks).
    """

    def __init__(
        self,
        root: str | Path,
        fold: int = 0,
        source: str = "mtcnn",
        val_fraction: float = 0.1,
        batch_size: int = 50,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        crop_size: int = INPUT_SIZE,
        resize_size: int = FACE_SIZE,
        face_size: int = FACE_SIZE,
        test_ten_crop: bool = True,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        auto_preprocess: bool = False,
        preprocess: dict[str, Any] | None = None,
        train_batches: str = "joint",
        train_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if train_batches not in TRAIN_BATCHES:
            raise ValueError(f"train_batches must be one of {TRAIN_BATCHES}, got {train_batches!r}")
        self.train_batches = train_batches
        self.train_tasks = tuple(train_tasks) if train_tasks else tuple(TASK_NUM_CLASSES)
        unknown = set(self.train_tasks) - set(TASK_NUM_CLASSES)
        if unknown:
            raise ValueError(f"train_tasks: unknown tasks {sorted(unknown)}")
        self.root = Path(root).expanduser()
        self.fold = int(fold)
        self.source = source
        self.val_fraction = float(val_fraction)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.crop_size, self.resize_size, self.face_size = crop_size, resize_size, face_size
        self.test_ten_crop = bool(test_ten_crop)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / "cache" / source
        self.auto_preprocess = bool(auto_preprocess)
        unknown = set(preprocess or {}) - set(PREPROCESS_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown preprocess options {sorted(unknown)}")
        self.preprocess_options = {**PREPROCESS_DEFAULTS, **dict(preprocess or {})}
        self.splits: dict[str, pd.DataFrame] = {}
        self.datasets: dict[str, CachedFaceDataset] = {}

    # -- dataset-specific ------------------------------------------------------------------
    def load_table(self) -> pd.DataFrame:
        """Rows with at least ``key, user_id, fold, age, gender``."""
        raise NotImplementedError

    def jobs(self) -> pd.DataFrame:
        """One preprocessing job per distinct image: ``key, path`` (+ ``x1, y1, x2, y2``)."""
        raise NotImplementedError

    def preprocess_command(self) -> str:
        return f"python -m agegender.preprocess data.root={self.root} data.source={self.source}"

    # -- preprocessing ---------------------------------------------------------------------
    def face_options(self) -> FaceOptions:
        o = self.preprocess_options
        return FaceOptions(
            source=self.source,
            size=self.face_size,
            detector=o["detector"],
            detector_kwargs=tuple(sorted(dict(o["detector_kwargs"]).items())),
            fallback_fraction=float(o["fallback_fraction"]),
        )

    def preprocess(self) -> PreprocessReport:
        """Fill the cache for every job not in it yet (resumes an interrupted run)."""
        o = self.preprocess_options
        return run_preprocess(
            self.jobs(),
            self.cache_dir,
            self.face_options(),
            workers=int(o["workers"]),
            chunk_size=int(o["chunk_size"]),
            progress=bool(o["progress"]),
            retry_failed=bool(o["retry_failed"]),
        )

    def uncached(self) -> int:
        """How many jobs have no entry in the cache (0 = preprocessing is complete)."""
        done = set(read_index(self.cache_dir)["key"])
        return int((~self.jobs()["key"].isin(done)).sum())

    def prepare_lock_path(self) -> Path:
        """Lock file beside the cache: parallel jobs (joblib folds, several runs on one
        dataset) must not preprocess the same faces at once."""
        return self.cache_dir.parent / f".{self.cache_dir.name}.prepare.lock"

    def prepare_data(self) -> None:
        """Preprocess what is missing; one process at a time per dataset, the others wait
        for it and then find the cache complete."""
        from filelock import FileLock, Timeout

        lock_path = self.prepare_lock_path()
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process preparing %s (lock %s)", self.root, lock_path)
            lock.acquire()
        try:
            self._prepare()
        finally:
            lock.release()

    def _prepare(self) -> None:
        missing = self.uncached()
        if not missing:
            return
        if not self.auto_preprocess:
            raise CacheError(
                f"{missing} faces of {self.root} are not in the cache {self.cache_dir}; run:\n"
                f"  {self.preprocess_command()}\n(or set data.auto_preprocess=true)"
            )
        print_report(self.preprocess())

    # -- splits and loaders ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = self.load_table()
        cache = FaceCache(self.cache_dir)
        if cache.source != self.source or cache.size != self.face_size:
            raise CacheError(f"{self.cache_dir} holds {cache.source}/{cache.size} faces")
        known = table["key"].isin(cache.all_rows.index)
        if not known.all():
            raise CacheError(
                f"{int((~known).sum())} rows are not in the cache {self.cache_dir}; run:\n"
                f"  {self.preprocess_command()}"
            )
        ok = table["key"].isin(cache.index.index)
        # Missing files are recorded as such in the cache and a plain rerun resumes past them.
        retry = (
            f"after fixing the files, run: {self.preprocess_command()} "
            "data.preprocess.retry_failed=true"
        )
        if not ok.any():
            raise CacheError(
                f"none of the {len(table)} rows of {self.root} has a face in the cache: every "
                f"image was missing or unreadable (see status/error in {self.cache_dir}/"
                f"shard_*.csv; expected layout in data/README.md); {retry}"
            )
        if not ok.all():
            warnings.warn(
                f"{int((~ok).sum())} rows left out: their image was missing or unreadable "
                f"(see status/error in {self.cache_dir}/shard_*.csv); {retry}",
                stacklevel=2,
            )
        self.table = table[ok].reset_index(drop=True)
        self.splits = fold_splits(self.table, self.fold, self.val_fraction, self.seed)
        train_tf = TrainPreset(self.crop_size, self.resize_size)
        centre = EvalPreset(self.crop_size, self.resize_size, ten_crop=False)
        self.datasets = {
            "train": CachedFaceDataset(cache, self.splits["train"], train_tf),
            "val": CachedFaceDataset(cache, self.splits["val"], centre),
            "test": CachedFaceDataset(cache, self.splits["test"], centre),
        }
        if self.test_ten_crop:
            ten = EvalPreset(self.crop_size, self.resize_size, ten_crop=True)
            self.datasets["test_10crop"] = CachedFaceDataset(cache, self.splits["test"], ten)

    def _loader(
        self,
        name: str,
        batch_size: int,
        shuffle: bool,
        rows: Sequence[int] | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        """A loader over ``self.datasets[name]``, or over its ``rows`` positions only."""
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        dataset = self.datasets[name] if rows is None else Subset(self.datasets[name], rows)
        # The training loader is stateful (torchdata): Lightning stores its position in every
        # checkpoint, so a run killed mid-epoch resumes with the rest of that epoch's order
        # instead of starting the epoch's data over.
        loader_class = StatefulDataLoader if shuffle else DataLoader
        return loader_class(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=drop_last,
        )

    def labelled_rows(self, task: str, split: str = "train") -> list[int]:
        """Positions in ``split`` of the rows whose ``task`` label is known."""
        labels = self.splits[split][task].to_numpy()
        return np.flatnonzero(labels != IGNORE_INDEX).tolist()

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        if self.train_batches == "joint":
            return self._loader("train", self.batch_size, shuffle=True)
        # per_task: each task's own shuffled list, every batch exactly batch_size faces, all
        # labelled for the task (Caffe's batches are always full: the tail of a pass that
        # would make a short batch is dropped, and the next reshuffled pass starts).
        # ``max_size_cycle``: every step draws one batch from each list; a list that runs out
        # restarts (reshuffled) at once, as Caffe's data layer cycles its own list, so one
        # "epoch" is one pass over the LONGEST task list, floor(rows / batch_size) steps. Each
        # loader stays a StatefulDataLoader: Lightning saves both positions in the checkpoint
        # (loops.fit_loop.state_dict.combined_loader) and a resume continues both lists.
        loaders = {}
        for task in self.train_tasks:
            rows = self.labelled_rows(task)
            if len(rows) < self.batch_size:
                raise ValueError(
                    f"train_batches=per_task: {len(rows)} training rows have a {task} label, "
                    f"fewer than one batch (data.batch_size={self.batch_size})"
                )
            loaders[task] = self._loader(
                "train", self.batch_size, shuffle=True, rows=rows, drop_last=True
            )
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        centre = self._loader("test", self.eval_batch_size, shuffle=False)
        if not self.test_ten_crop:
            return centre
        return [centre, self._loader("test_10crop", self.eval_batch_size, shuffle=False)]

    def class_counts(self, split: str = "train") -> dict[str, list[int]]:
        """Label counts of a split per task (unknown labels not counted), e.g. for weighting."""
        rows = self.splits[split]
        return {
            task: [int((rows[task] == i).sum()) for i in range(n)]
            for task, n in TASK_NUM_CLASSES.items()
        }


class AdienceDataModule(FaceDataModule):
    """Adience, subject-exclusive 5-fold CV: test on ``fold``, validate on users carved from
    the other four folds.

    ``label_policy``: ``strict`` (Levi-Hassner) or ``remap``. ``source``: ``mtcnn`` (our
    alignment of ``faces/``) or ``aligned`` (Adience's ``aligned/``, exact paper input).
    ``demo=True``: when ``root`` holds no fold files, :meth:`prepare_data` writes the synthetic
    demo tree there first (and preprocesses it).
    """

    def __init__(
        self,
        root: str | Path,
        fold: int = 0,
        label_policy: str = "strict",
        source: str = "mtcnn",
        strict_rows: bool = False,
        demo: bool = False,
        demo_users: int = 20,
        demo_images_per_user: int = 10,
        **kwargs: Any,
    ) -> None:
        if demo:
            kwargs.setdefault("auto_preprocess", True)
        super().__init__(root, fold=fold, source=source, **kwargs)
        self.label_policy = label_policy
        self.strict_rows = bool(strict_rows)
        self.demo = bool(demo)
        self.demo_users, self.demo_images_per_user = demo_users, demo_images_per_user

    def _folds(self, policy: str, drop_unlabelled: bool) -> pd.DataFrame:
        table, report = load_folds(self.root, policy, self.strict_rows, drop_unlabelled)
        if report.malformed:
            warnings.warn(f"{self.root}: {report.summary()}", stacklevel=2)
        table["key"] = [
            adience_key(u, f, i)
            for u, f, i in zip(
                table["user_id"], table["face_id"], table["original_image"], strict=True
            )
        ]
        return table

    def load_table(self) -> pd.DataFrame:
        return self._folds(self.label_policy, drop_unlabelled=True)

    def jobs(self) -> pd.DataFrame:
        # Every well-formed row is cached, whatever the label policy, so switching policy
        # never needs a second preprocessing run.
        table = self._folds("remap", drop_unlabelled=False).drop_duplicates("key")
        kind = "aligned" if self.source == "aligned" else "faces"
        paths = [
            str(self.root / image_relpath(u, f, i, kind))
            for u, f, i in zip(
                table["user_id"], table["face_id"], table["original_image"], strict=True
            )
        ]
        return pd.DataFrame({"key": table["key"].to_numpy(), "path": paths})

    def _ensure_demo(self) -> None:
        if self.demo and not (self.root / "fold_0_data.txt").exists():
            from agegender.data.demo import generate_demo

            generate_demo(self.root, self.demo_users, self.demo_images_per_user, seed=self.seed)

    def preprocess(self) -> PreprocessReport:
        self._ensure_demo()
        return super().preprocess()

    def prepare_lock_path(self) -> Path:
        # beside the root, not in it: the demo generator writes only into an empty root
        return self.root.parent / f".{self.root.name}.prepare.lock"

    def _prepare(self) -> None:
        self._ensure_demo()
        super()._prepare()

    def preprocess_command(self) -> str:
        data = "data=demo " if self.demo else ""
        return (
            f"python -m agegender.preprocess {data}data.root={self.root} data.source={self.source}"
        )
