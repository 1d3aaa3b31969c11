"""Checkpoints that make a resumed run end exactly where the uninterrupted run ends.

Lightning's ``ModelCheckpoint(save_last=True)`` (2.6) rewrites ``last.ckpt`` only when a top-k
checkpoint is saved in the same step, so after a run whose validation stopped improving it
holds an old epoch; and resuming into another directory drops the best-checkpoint record
(score, top-k), so the resumed run takes its first validation as the best. Hence:

- :class:`LatestCheckpoint`: ``last.ckpt`` is always the newest state: every N optimiser
  steps, at the end of every epoch (after its validation) and at the end of training.
- :class:`BestCheckpoint`: the best-by-validation checkpoint whose record survives a resume
  in a new directory (its files are copied there, so the new run directory is complete and
  the old one is never modified).
- :class:`ExactResume`: the global RNG states (dropout draws from them) travel in the
  checkpoint and are put back right before the first training step of the resumed run; and
  the saved position of the training data loader is really loaded (see its docstring).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.data import _set_sampler_epoch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)

LAST_NAME = "last"


class LatestCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt``: the latest training state, one file, always current."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 500) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=LAST_NAME,
            monitor=None,
            save_top_k=1,
            save_last=False,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's validation (Lightning 2 validates before this hook), so the state
        # saved includes the best-checkpoint record it updated. Saved even when the step
        # trigger already saved this step: the epoch-end state supersedes that one.
        if not (trainer.fast_dev_run or trainer.sanity_checking):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Its record is only where last.ckpt lives: nothing to carry into another directory.
        old = state_dict.get("dirpath")
        if old is not None and self.dirpath is not None and Path(old) == Path(self.dirpath):
            super().load_state_dict(state_dict)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="latest")


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best/top-k record carries over to a resume in a new directory."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old is None or self.dirpath is None or Path(old) == Path(self.dirpath):
            super().load_state_dict(state_dict)
            return
        moved = {**state_dict, "dirpath": self.dirpath}
        new_dir = Path(self.dirpath)
        new_dir.mkdir(parents=True, exist_ok=True)

        def bring(path: str) -> str:
            if not path or not Path(path).is_file():
                return path
            target = new_dir / Path(path).name
            if not target.exists():
                tmp = target.with_name(f".{target.name}.tmp")
                shutil.copy2(path, tmp)
                tmp.replace(target)
            return str(target)

        moved["best_model_path"] = bring(state_dict.get("best_model_path", ""))
        moved["kth_best_model_path"] = bring(state_dict.get("kth_best_model_path", ""))
        moved["best_k_models"] = {
            bring(p): score for p, score in (state_dict.get("best_k_models") or {}).items()
        }
        moved["last_model_path"] = ""
        log.info("best-checkpoint record carried over from %s to %s", old, self.dirpath)
        super().load_state_dict(moved)


class ExactResume(Callback):
    """Saves the global RNG states with every checkpoint; restores them at the first training
    batch of a resumed run (not at load time: whatever runs between loading and training
    must not shift the stream the next dropout mask is drawn from).

    Also works around a Lightning 2.6 ordering: ``trainer.estimated_stepping_batches`` (our
    schedulers read it in ``configure_optimizers``) builds the training loader before the
    checkpoint's loop state is restored, and the fit loop then keeps that loader without
    loading the saved data position into it, so a resumed epoch would start over. Dropping
    the early loader at ``on_fit_start`` (after the optimisers, before the restore) makes
    the fit loop build it again and load its state. And after a checkpoint written at the end
    of an epoch, Lightning goes on with that finished epoch's loader iterator (it calls
    ``iter`` again only when not resuming); :meth:`on_train_start` starts the next epoch's.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            # plain types and tensors only: checkpoints load with torch.load(weights_only=True)
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.fit_loop._combined_loader = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        if not (loop.restarted_on_epoch_end or loop.resumed_on_epoch_end):
            return
        if loop._combined_loader is None or loop._data_fetcher is None:
            return
        for loader in loop._combined_loader.flattened:
            _set_sampler_epoch(loader, loop.epoch_progress.current.processed)
        iter(loop._data_fetcher)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
