"""LightningDataModules over the face cache: Adience folds (and, in ``csv.py``, any CSV).

Everything dataset-specific is a row table (``key, user_id, fold, age, gender``) plus the
preprocessing jobs (``key, path[, box]``); the rest is shared here: the subject-exclusive
split, the cache check, the presets of :mod:`agegender.transforms` (the only preprocessing
path), and DataLoaders with per-device batch sizes (DDP-safe: no global state, every rank
computes the same seeded split).
"""

from __future__ import annotations

import logging
import re
import shlex
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms.v2 import functional as TF

from agegender.data.cache import MANIFEST, CacheError, FaceCache, check_manifest, read_index
from agegender.data.datasets import CachedFaceDataset, RowSubset
from agegender.data.demo import generate_demo
from agegender.data.folds import image_relpath, load_folds
from agegender.data.mean import compute_image_mean
from agegender.data.preprocess import FaceOptions, PreprocessReport, print_report, run_preprocess
from agegender.data.sampling import SeededShuffleSampler
from agegender.data.splits import fold_splits
from agegender.labels import IGNORE_INDEX, TASK_NUM_CLASSES, LabelSet, load_label_set
from agegender.models.registry import DEFAULT_MODEL
from agegender.models.registry import face_spec as model_face_spec
from agegender.spec import FaceSpec, Framing
from agegender.transforms import EvalPreset, TrainPreset

log = logging.getLogger(__name__)

#: Preprocessing settings a data config may override (``data.preprocess.workers=...``).
PREPROCESS_DEFAULTS: dict[str, Any] = {
    "workers": 2,
    "chunk_size": 64,
    "detector": "mtcnn",
    "detector_kwargs": {},
    "fallback_fraction": 0.5,
    # where faces sit in the crop: adience (Adience's aligned faces, the original nets'),
    # legacy (the framing before), or a mapping (agegender.spec.Framing); stored in the
    # checkpoints trained on it
    "framing": "adience",
    "template_shrink": None,  # the legacy framing's margin (None = 2/3)
    "box_crop_scale": None,  # None = the framing's own box crop
    # Given boxes (CSV x1..y2) cropped with this margin on every side, as a fraction of the
    # box's longer side (K-Face's seed: 0.2): the same as box_crop_scale = 1 + 2 * margin.
    "box_margin": None,
    "progress": True,
    "retry_failed": False,
}
#: The preprocess options that change pixels (the others only change how fast, or retries).
PIXEL_OPTIONS: tuple[str, ...] = (
    "detector",
    "detector_kwargs",
    "fallback_fraction",
    "framing",
    "template_shrink",
    "box_crop_scale",
)


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar, so an error message can print a command that
    reproduces a config (``{min_size:30}``, ``[0.6,0.7,0.7]``, ``'a b'``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][\w./-]*", text) and text not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _plain(value: Any) -> Any:
    """Plain Python containers of a config value (Hydra passes DictConfig / ListConfig)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


#: ``train_batches``: ``joint`` (one loader over every training row, unknown labels masked)
#: or ``per_task`` (one loader per task over the rows labelled for it, as the paper's two
#: Caffe nets each read their own list).
TRAIN_BATCHES: tuple[str, ...] = ("joint", "per_task")


def adience_key(user_id: str, face_id: int, original_image: str) -> str:
    return f"{user_id}/{face_id}/{original_image}"


class FaceDataModule(pl.LightningDataModule):
    """Shared machinery; subclasses provide :meth:`load_table` and :meth:`jobs`.

    Sizes come from the network's :class:`~agegender.spec.FaceSpec`: ``face_spec`` if given,
    else the class attribute of the network registered as ``model_name`` (the configs pass
    ``${model.model_name}``; read, never built). ``face_size`` (None = the spec's) caches
    faces at another side; the presets still resize them to the spec's ``resize_size``.

    ``train_batches``: see :data:`TRAIN_BATCHES`; ``train_tasks``: the tasks that get a
    loader with ``per_task`` (None: every task; set it to the model's tasks).

    ``labels``: the label set the ``age`` labels index (:func:`agegender.labels.
    load_label_set`; None = adience8); the configs pass the run's ``labels`` node, the same
    one the model gets. ``stratify``: draw the validation groups with the label proportions
    kept (:func:`agegender.data.splits.split_users_stratified`) instead of a plain shuffle.
    ``model_kwargs``: the network's keyword arguments, for networks whose face spec depends
    on them (``model=timm``: the timm model's input size and normalisation).
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
        model_name: str = DEFAULT_MODEL,
        face_spec: FaceSpec | Mapping[str, Any] | None = None,
        face_size: int | None = None,
        test_ten_crop: bool = True,
        seed: int = 0,
        shuffle_seed: int | None = None,
        cache_dir: str | Path | None = None,
        auto_preprocess: bool = False,
        preprocess: dict[str, Any] | None = None,
        train_batches: str = "joint",
        train_tasks: Sequence[str] | None = None,
        labels: LabelSet | str | Mapping[str, Any] | None = None,
        stratify: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.labels = load_label_set(_plain(labels))
        self.stratify = bool(stratify)
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
        if face_spec is None:
            face_spec = model_face_spec(model_name, _plain(model_kwargs) or {})
        elif not isinstance(face_spec, FaceSpec):  # a mapping from a config
            face_spec = FaceSpec(**_plain(face_spec))
        self.face_spec: FaceSpec = face_spec
        self.face_size = int(face_size) if face_size is not None else self.face_spec.face_size
        self.test_ten_crop = bool(test_ten_crop)
        self.seed = int(seed)
        # The training order and crops/mirrors follow the run's seed (train.py passes its
        # ``seed``); the validation carve follows ``seed`` (the split seed) alone.
        self.shuffle_seed = self.seed if shuffle_seed is None else int(shuffle_seed)
        self.auto_preprocess = bool(auto_preprocess)
        unknown = set(preprocess or {}) - set(PREPROCESS_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown preprocess options {sorted(unknown)}")
        self.preprocess_options = {**PREPROCESS_DEFAULTS, **dict(preprocess or {})}
        margin = self.preprocess_options.pop("box_margin")
        if margin is not None:
            # one pixel setting, not two: the cache key and the preprocess command see the scale
            if self.preprocess_options["box_crop_scale"] is not None:
                raise ValueError("set data.preprocess.box_margin or box_crop_scale, not both")
            if not 0 <= float(margin) < 5:
                raise ValueError(f"box_margin is a fraction of the box side, got {margin}")
            self.preprocess_options["box_crop_scale"] = 1.0 + 2.0 * float(margin)
        self.preprocess_options["box_margin"] = None
        # The folder follows from the settings, so the preprocessing command and every
        # training run with the same config meet in it without being told where it is.
        self.explicit_cache_dir = bool(cache_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.default_cache_dir()
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
        """A command that fills this DataModule's cache (same settings, same folder)."""
        return self._command(f"data.root={shlex.quote(str(self.root))}")

    def _command(self, *dataset: str) -> str:
        return " ".join(
            ["python -m agegender.data.preprocess", *dataset, *self.setting_overrides()]
        )

    def setting_overrides(self) -> list[str]:
        """Hydra overrides of every pixel-changing setting this DataModule was given beyond
        the config defaults (plus an explicit cache folder)."""
        overrides = [f"data.source={self.source}"]
        # the command composes without a model: it caches at the default network's size
        if self.face_size != model_face_spec(DEFAULT_MODEL).face_size:
            overrides.append(f"++data.face_size={self.face_size}")
        # aligned: no detector, no alignment
        for name in () if self.source == "aligned" else PIXEL_OPTIONS:
            value = self.preprocess_options[name]
            if _plain(value) != _plain(PREPROCESS_DEFAULTS[name]):
                # "++": the config's {} of detector_kwargs takes new keys only when forced
                force = "++" if isinstance(_plain(value), Mapping) else ""
                overrides.append(f"{force}data.preprocess.{name}={hydra_value(_plain(value))}")
        if self.explicit_cache_dir:
            overrides.append(f"data.cache_dir={self.cache_dir}")
        return [shlex.quote(o) for o in overrides]

    def default_cache_dir(self) -> Path:
        """``<root>/cache/<source>[-<detector>]-<key>``: one folder per combination of
        pixel-changing settings (:meth:`FaceOptions.cache_name`)."""
        return self.root / "cache" / self.face_options().cache_name()

    # -- preprocessing ---------------------------------------------------------------------
    def face_options(self) -> FaceOptions:
        o = self.preprocess_options
        shrink, crop = o["template_shrink"], o["box_crop_scale"]
        return FaceOptions(
            source=self.source,
            size=self.face_size,
            detector=o["detector"],
            detector_kwargs=_plain(o["detector_kwargs"]),
            fallback_fraction=float(o["fallback_fraction"]),
            framing=_plain(o["framing"]),
            template_shrink=None if shrink is None else float(shrink),
            box_crop_scale=None if crop is None else float(crop),
        )

    @property
    def framing(self) -> Framing:
        """Where the faces this DataModule serves sit in their crop: the network trained on
        them carries it (:meth:`agegender.training.module.AgeGenderModule.set_framing`)."""
        framing = self.face_options().framing
        assert isinstance(framing, Framing)  # resolved by FaceOptions
        return framing

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
        if (self.cache_dir / MANIFEST).exists():
            check_manifest(self.cache_dir, self.face_options().settings())
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
        check_manifest(self.cache_dir, self.face_options().settings())
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
        # Users are dealt to train/validation from the labels alone, before any image is
        # looked at: a missing image drops its row from its split, never moves a user.
        splits = fold_splits(table, self.fold, self.val_fraction, self.seed, stratify=self.stratify)
        cached = set(cache.index.index)
        self.splits = {
            name: rows[rows["key"].isin(cached)].reset_index(drop=True)
            for name, rows in splits.items()
        }
        self.table = table[ok].reset_index(drop=True)
        train_tf = TrainPreset(self.face_spec)
        centre = EvalPreset(self.face_spec, ten_crop=False)
        self.datasets = {
            "train": CachedFaceDataset(cache, self.splits["train"], train_tf),
            "val": CachedFaceDataset(cache, self.splits["val"], centre),
            "test": CachedFaceDataset(cache, self.splits["test"], centre),
        }
        if self.test_ten_crop:
            ten = EvalPreset(self.face_spec, ten_crop=True)
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
        dataset = self.datasets[name] if rows is None else RowSubset(self.datasets[name], rows)
        # Training: a stateful loader (torchdata) whose sampler deals (index, augmentation
        # seed) pairs; Lightning stores its position in every checkpoint, so a run killed
        # mid-epoch resumes with the rest of that epoch, crops included. Evaluation: every
        # sample once, also under DDP. Every loader draws its worker seeds from its own
        # generator, never from the global RNG that dropout uses.
        if shuffle:
            world, rank = self._world()
            sampler = SeededShuffleSampler(dataset, self.shuffle_seed, world, rank)
        else:
            sampler = self._eval_sampler(dataset)
        return (StatefulDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def _world(self) -> tuple[int, int]:
        """(processes, this rank) as the Lightning strategy reports them; (1, 0) alone."""
        trainer = self.trainer
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not kwargs:
            return 1, 0
        return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))

    def _eval_sampler(self, dataset: CachedFaceDataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP, each rank evaluates a disjoint share of the set, none padded.

        Lightning's own DistributedSampler pads an evaluation set to a multiple of the world
        size with repeated samples, which would count some faces twice in the test metrics.
        This one gives rank r the samples r, r + world, r + 2 world...: shares differ by at most
        one sample, every sample is counted exactly once, and Lightning keeps it (it replaces
        only samplers that are not DistributedSamplers). Uneven shares are safe here: no step
        logs with ``sync_dist`` and the torchmetrics states are reduced once, at epoch end.
        None (a plain sequential loader) outside distributed runs.
        """
        world, rank = self._world()
        if world <= 1:
            return None
        if 0 < len(dataset) < world:
            # every rank must run at least one batch (DDP's first-batch buffer sync)
            warnings.warn(
                f"an evaluation set of {len(dataset)} samples is smaller than the {world} "
                "processes: Lightning pads it, some samples are counted twice",
                stacklevel=2,
            )
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

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

    def train_mean_image(self) -> torch.Tensor:
        """Per-pixel mean of the training split's faces (Caffe's ``compute_image_mean`` over
        the fold's training images; never validation or test): 3 x R x R float32 RGB, R the
        resize size the crops are taken from. Faces cached at another size are averaged at
        their size and the mean resized (resizing is linear: the mean of the resized faces
        up to their uint8 rounding)."""
        if not self.datasets:
            raise RuntimeError("call setup() before asking for the training mean image")
        train = self.datasets["train"]
        mean = compute_image_mean(train.cache, train.rows["key"])
        resize = self.face_spec.resize_size
        if mean.shape[-1] != resize:
            size = [resize, resize]
            mean = TF.resize(mean, size, antialias=True)
        return mean

    def class_counts(self, split: str = "train") -> dict[str, list[int]]:
        """Label counts of a split per task (unknown labels not counted), e.g. for weighting."""
        rows = self.splits[split]
        return {
            task: [int((rows[task] == i).sum()) for i in range(n)]
            for task, n in self.labels.num_classes.items()
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
        duplicates: str = "drop",
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
        self.duplicates = duplicates  # drop | keep (exact duplicate fold rows; one cache key)
        self.demo = bool(demo)
        self.demo_users, self.demo_images_per_user = demo_users, demo_images_per_user

    def _folds(self, policy: str, drop_unlabelled: bool) -> pd.DataFrame:
        table, report = load_folds(
            self.root,
            policy,
            self.strict_rows,
            drop_unlabelled,
            duplicates=self.duplicates,
            labels=self.labels,
        )
        if report.malformed or report.conflicts:
            first = [*report.malformed, *report.conflicts][:3]
            examples = "".join(f"\n  {m}" for m in first)
            warnings.warn(f"{self.root}: {report.summary()}{examples}", stacklevel=2)
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
        data = ["data=demo"] if self.demo else []
        return self._command(*data, f"data.root={shlex.quote(str(self.root))}")
