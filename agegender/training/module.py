"""The LightningModule: any network of :mod:`agegender.models` + masked per-task losses,
metrics and the optimiser/scheduler of the chosen protocol.

The network is held as ``self.model = build_model(model_name, **model_kwargs)`` and every
constructor argument is saved as plain data (str/number/list/dict) in the hyper-parameters,
so :func:`agegender.checkpoints.load_model` rebuilds the network from a Lightning checkpoint
and the checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from agegender.checkpoints import FRAMING_KEY
from agegender.labels import TASK_NUM_CLASSES, LabelSet, load_label_set
from agegender.models.registry import build_model
from agegender.spec import FaceSpec, Framing, face_spec_of, framing_from_stored
from agegender.training.metrics import StageMetrics, StagePredictions
from agegender.training.optim import GROUP_KEYS, build_optimizer, build_scheduler
from agegender.training.pretrained import load_pretrained
from agegender.transforms import ten_crop_origins

log = logging.getLogger(__name__)
#: Checkpoint key of the intra-op thread count the weights were trained with.
THREADS_KEY = "torch_threads"

#: Evaluation stages: validation (centre crop) and the two test protocols, in the order of
#: the test dataloaders (0 = centre crop, 1 = 10-crop over-sampling).
TEST_STAGES: tuple[str, ...] = ("test", "test_10crop")

#: ``class_weights`` choices: none, or ``balanced`` (each class weighted n / (C * n_c) in
#: the cross-entropy, from the training split's counts: coarse age groups are very unbalanced).
CLASS_WEIGHTS: tuple[str, ...] = ("balanced",)

#: Optimiser of a module built without one (conf/model/optimizer/ holds the real choices).
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-3}


def _plain(value: Any) -> Any:
    """OmegaConf containers -> dicts/lists, so hyper-parameters never pickle omegaconf."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def masked_targets(batch: Mapping[str, torch.Tensor], task: str) -> torch.Tensor:
    """Boolean N: samples whose ``task`` label is known (mask and label both say so)."""
    target = batch[task]
    known = target >= 0
    mask = batch.get(f"{task}_mask")
    return known if mask is None else known & mask.to(torch.bool)


class AgeGenderModule(pl.LightningModule):
    """Train/evaluate a network registered in :data:`agegender.models.MODEL_BUILDERS`.

    Args:
        model_name, model_kwargs: the network (tasks are ``model_kwargs["tasks"]``).
        pretrained: backbone weights (file path or library weight name; ``true`` = the
            library's default weights from its local cache; ``false``/None = random init),
            loaded once at construction; not needed to rebuild from a checkpoint.
        pretrained_path: a weights file; takes precedence over ``pretrained``.
        labels: the label set (:func:`agegender.labels.load_label_set`; None = adience8):
            it sizes the age head (``model_kwargs["num_classes"]``), names the confusion
            matrices and per-class metrics, and is stored in the checkpoint.
        class_weights: None, or ``balanced``: cross-entropy weights n / (C * n_c) per
            task from the training split's label counts (the datamodule's
            ``class_counts``), computed when fitting starts.
        input_size, resize_size: legacy (checkpoints written before the network's
            ``face_spec`` held the sizes pass them back): checked against the spec's
            ``crop_size``/``resize_size`` and otherwise unused; new checkpoints omit them.
        loss_weights: per-task weight of the cross-entropy (missing tasks: 1.0).
        label_smoothing: cross-entropy label smoothing (0 in the paper).
        optimizer: a Hydra ``_partial_`` optimiser config (``_target_: torch.optim.SGD``, lr,
            ...), called with the parameter groups; see
            :func:`agegender.training.optim.build_optimizer`.
        param_groups: the group multipliers (bias_lr_mult, bias_weight_decay, head_lr_mult,
            backbone_lr_mult) of :func:`agegender.training.optim.param_groups`.
        scheduler: a ``_partial_`` scheduler config, called with the optimiser (and the step
            budget); None: constant lr. See :func:`~agegender.training.optim.build_scheduler`.
        channels_last: NHWC memory format for the convolutions (measure: it helps ResNets
            and inference, and slowed Levi-Hassner training on CPU here).

    A network built with a per-pixel mean image (Levi-Hassner ``mean="image"``) gets the
    training split's mean from the datamodule's ``train_mean_image()`` when a fresh fit
    starts; resumed fits and evaluations use the mean stored in the checkpoint. Networks
    with ``takes_origin`` get each crop's origin (batch key ``origin``) with the images.
    """

    def __init__(
        self,
        model_name: str = "levi_hassner",
        model_kwargs: Mapping[str, Any] | None = None,
        pretrained: str | None = None,
        input_size: int | None = None,
        resize_size: int | None = None,
        loss_weights: Mapping[str, float] | None = None,
        label_smoothing: float = 0.0,
        optimizer: Mapping[str, Any] | None = None,
        param_groups: Mapping[str, float] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        labels: LabelSet | str | Mapping[str, Any] | None = None,
        class_weights: str | None = None,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        unknown = set(param_groups or {}) - set(GROUP_KEYS)
        if unknown:
            raise ValueError(f"param_groups: unknown keys {sorted(unknown)}; use {GROUP_KEYS}")
        if class_weights not in (None, *CLASS_WEIGHTS):
            raise ValueError(f"class_weights must be null or one of {CLASS_WEIGHTS}")
        self.labels: LabelSet = load_label_set(_plain(labels))
        model_kwargs = _plain(dict(model_kwargs or {}))
        if not self.labels.is_adience8:
            # the head sizes are network arguments, so a checkpoint rebuilds the right heads
            given = model_kwargs.get("num_classes") or {}
            sizes = {**given, "age": len(self.labels.age)}
            if given and given != sizes:
                raise ValueError(
                    f"model_kwargs.num_classes={given} contradicts label set "
                    f"{self.labels.describe()}; leave num_classes out"
                )
            model_kwargs["num_classes"] = sizes
        self.model = build_model(model_name, **model_kwargs)
        spec = getattr(self.model, "face_spec", None)
        for key, value, field in (
            ("input_size", input_size, "crop_size"),
            ("resize_size", resize_size, "resize_size"),
        ):
            expected = getattr(spec, field, None)
            if value is not None and expected is not None and int(value) != expected:
                raise ValueError(f"{model_name} takes {key}={expected}, config says {value}")
        weights = pretrained_path or pretrained
        if weights:
            load_pretrained(self.model, model_name, weights)
        self.tasks: tuple[str, ...] = tuple(self.model.tasks)
        #: LeviHassnerNet computes a subset of its tasks on request; other networks (one
        #: shared backbone) compute every head and :meth:`forward` picks the asked ones.
        self._forward_takes_tasks = "tasks" in inspect.signature(self.model.forward).parameters
        task_weights = _plain(dict(loss_weights or {}))
        unknown = set(task_weights) - set(TASK_NUM_CLASSES)
        if unknown:
            raise ValueError(f"loss_weights for unknown tasks: {sorted(unknown)}")
        self.loss_weights = {t: float(task_weights.get(t, 1.0)) for t in self.tasks}
        #: Per-task cross-entropy class weights (``class_weights=balanced``; set at fit start).
        self.ce_weights: dict[str, torch.Tensor] = {}
        self.save_hyperparameters(
            {
                "model_name": model_name,
                "model_kwargs": model_kwargs,
                "pretrained": pretrained,
                "loss_weights": self.loss_weights,
                "label_smoothing": float(label_smoothing),
                "optimizer": _plain(dict(optimizer or DEFAULT_OPTIMIZER)),
                "param_groups": _plain(dict(param_groups or {})),
                "scheduler": _plain(dict(scheduler or {})),
                "channels_last": bool(channels_last),
                "labels": self.labels.to_config(),
                "class_weights": class_weights,
                "pretrained_path": pretrained_path,
            }
        )
        self.metrics = nn.ModuleDict(
            {s: StageMetrics(self.tasks, self.labels) for s in ("val", *TEST_STAGES)}
        )
        #: Results of the last evaluation epoch per stage: scalars and confusion matrices.
        self.results: dict[str, dict[str, float]] = {}
        self.confusion: dict[str, dict[str, torch.Tensor]] = {}
        #: Per-face probabilities of evaluation stages, kept only while ``keep_predictions``
        #: is set (train.py sets it for the evaluated checkpoint's validation and test, not
        #: for the validations during fitting): gathered from every DDP rank and sorted by
        #: row, see :class:`~agegender.training.metrics.StagePredictions`.
        self.keep_predictions = False
        self.collected = nn.ModuleDict(
            {s: StagePredictions(self.tasks) for s in ("val", *TEST_STAGES)}
        )
        self.predictions: dict[str, dict[str, np.ndarray]] = {}
        if channels_last:
            # Convolution weights only: converting every 4-D tensor would also restride the
            # 1x3x1x1 normalisation buffers, which DDP's buffer broadcast then rejects.
            for layer in self.model.modules():
                if isinstance(layer, nn.Conv2d):
                    layer.to(memory_format=torch.channels_last)

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Class names per task, in logit order (the label set's)."""
        return self.labels.class_names

    @property
    def face_spec(self) -> FaceSpec:
        """The network's :class:`~agegender.spec.FaceSpec` (sizes and normalisation)."""
        return face_spec_of(self.model)

    # -- the framing ----------------------------------------------------------------------------
    @property
    def framing(self) -> Framing:
        """Where the network expects faces in its crop (its ``face_spec.framing``)."""
        return self.face_spec.framing

    def set_framing(self, framing: Framing) -> None:
        """Give the network the framing of the faces it is trained on (train.py: the
        DataModule's), so its checkpoints carry it and prediction frames faces the same way."""
        self.model.face_spec = dataclasses.replace(self.face_spec, framing=framing)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FRAMING_KEY] = self.framing.to_config()
        checkpoint[THREADS_KEY] = torch.get_num_threads()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint's faces must be framed as the data frames them now: resuming or
        evaluating it on faces framed otherwise is refused, naming both. A resume with
        another intra-op thread count than the one that wrote the checkpoint says so: float
        sums then differ and so do the results, in their last digits."""
        stored_threads = checkpoint.get(THREADS_KEY)
        if stored_threads is not None and int(stored_threads) != torch.get_num_threads():
            message = (
                f"the checkpoint was written with {int(stored_threads)} PyTorch threads, this "
                f"run uses {torch.get_num_threads()} (threads=...): results will differ in the "
                "last digits from an uninterrupted run"
            )
            log.warning(message)
            warnings.warn(message, stacklevel=2)
        stored = framing_from_stored(checkpoint.get(FRAMING_KEY))
        if stored.key() != self.framing.key():
            raise ValueError(
                f"the checkpoint was trained on faces framed {stored.describe()}; the data "
                f"frames them {self.framing.describe()}: set data.preprocess.framing="
                f"{stored.name if stored.name != 'custom' else '<its mapping>'} to use it"
            )

    # -- the mean image -------------------------------------------------------------------------
    @property
    def uses_mean_image(self) -> bool:
        return getattr(self.model, "mean", None) == "image"

    def on_fit_start(self) -> None:
        """Class weights from the training split (``class_weights``), and the network's
        mean image on a fresh fit (:meth:`_fill_mean_image`)."""
        if self.hparams.get("class_weights"):
            self._set_class_weights()
        self._fill_mean_image()

    def _set_class_weights(self) -> None:
        """``balanced``: weight n / (C * n_c) for each class with n_c training labels
        (scikit-learn's ``balanced`` formula); a class absent from the split gets 0 (it has
        no sample to weight). Recomputed on every fit, so a resumed fit gets the same."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not callable(getattr(datamodule, "class_counts", None)):
            raise RuntimeError("class_weights needs a datamodule with class_counts()")
        counts = datamodule.class_counts("train")
        for task in self.tasks:
            n = torch.tensor(counts[task], dtype=torch.float32)
            total, present = float(n.sum()), int((n > 0).sum())
            weight = torch.zeros_like(n)
            if present:
                weight[n > 0] = total / (present * n[n > 0])
            self.ce_weights[task] = weight.to(self.device)
            log.info("class weights %s: %s", task, [round(float(w), 3) for w in weight])

    def _fill_mean_image(self) -> None:
        """Fill the network's mean image from the training split on a fresh fit. Runs after
        Lightning restored a checkpoint: a resumed fit keeps the checkpoint's mean (the one
        its weights were trained with), whatever the data says now."""
        if not self.uses_mean_image:
            return
        if self.trainer.ckpt_path:
            log.info("mean image: kept from the checkpoint %s", self.trainer.ckpt_path)
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not callable(getattr(datamodule, "train_mean_image", None)):
            raise RuntimeError(
                "the network subtracts a per-pixel mean image (model_kwargs.mean=image), "
                "which comes from the datamodule's train_mean_image(); fit with a "
                "FaceDataModule (train.py does), or use model_kwargs.mean=channel"
            )
        mean = datamodule.train_mean_image()
        self.model.set_mean_image(mean.to(self.device))
        red, green, blue = mean.double().mean(dim=(1, 2)).tolist()
        log.info(
            "mean image of the training split: per-channel average R %.2f G %.2f B %.2f",
            red,
            green,
            blue,
        )

    # -- forward and losses --------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        origin: torch.Tensor | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits per task (``tasks``: only those; default every task of the network).
        ``origin``: N x 3 (top, left, mirrored) of each crop, for networks that take it
        (None = centre crops); other networks never see it."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        kwargs: dict[str, Any] = {}
        if getattr(self.model, "takes_origin", False):
            kwargs["origin"] = origin
        if tasks is not None and self._forward_takes_tasks:
            kwargs["tasks"] = tasks
        logits = self.model(x, **kwargs)
        return logits if tasks is None else {t: logits[t] for t in tasks}

    def task_losses(
        self, logits: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the samples labelled for each task; a batch without any
        label for a task contributes an exact zero (still attached to the graph, for DDP)."""
        losses = {}
        for task in self.tasks:
            known = masked_targets(batch, task)
            if known.any():
                losses[task] = F.cross_entropy(
                    logits[task][known],
                    batch[task][known],
                    weight=self.ce_weights.get(task),
                    label_smoothing=self.hparams.label_smoothing,
                )
            else:
                losses[task] = logits[task].sum() * 0.0
        return losses

    def per_task_losses(
        self, batches: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Per-task batches: every task of the network needs its own batch (a missing one
        would leave that network untrained, and unused parameters break DDP), and each
        batch passes through its own task only (with a shared trunk: the trunk and that
        task's head)."""
        if set(batches) != set(self.tasks):
            raise ValueError(
                f"per-task training batches for {sorted(batches)}, but the network's tasks "
                f"are {sorted(self.tasks)}: set data.train_tasks to the model's tasks"
            )
        losses = {}
        for task in self.tasks:
            batch = batches[task]
            # Every face is labelled for the task (the loader holds only those rows); no mask,
            # so an unlabelled face (-1) would fail loudly in cross_entropy, not be skipped.
            losses[task] = F.cross_entropy(
                self(batch["image"], batch.get("origin"), tasks=[task])[task],
                batch[task],
                weight=self.ce_weights.get(task),
                label_smoothing=self.hparams.label_smoothing,
            )
        return losses

    def total_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.loss_weights[t] * losses[t] for t in self.tasks)

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """A joint batch (``image``, masked labels) or per-task batches (``{task: batch}``,
        ``data.train_batches=per_task``): each task's faces go through that task's network
        only, and its loss is the mean cross-entropy over them; the step sums the tasks."""
        if "image" in batch:
            losses = self.task_losses(self(batch["image"], batch.get("origin")), batch)
            n = batch["image"].shape[0]
        else:
            losses = self.per_task_losses(batch)
            n = sum(b["image"].shape[0] for b in batch.values())
        loss = self.total_loss(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for task, value in losses.items():
            self.log(f"train/{task}_loss", value, batch_size=n)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"], batch.get("origin"))
        losses = self.task_losses(logits, batch)
        self.log("val/loss", self.total_loss(losses), batch_size=batch["image"].shape[0])
        self._update("val", logits, batch)

    def test_step(
        self, batch: Mapping[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, origin = batch["image"], batch.get("origin")
        if images.ndim == 5:
            # Over-sampling: N x K x 3 x S x S -> average the K crops' probabilities.
            n, k = images.shape[:2]
            if origin is None and getattr(self.model, "takes_origin", False):
                # batches without origins hold EvalPreset's 10 crops, in TenCrop's order
                spec = self.face_spec
                origin = ten_crop_origins(spec.resize_size, spec.crop_size).to(images.device)
                if k != len(origin):
                    raise ValueError(f"{k} crops per face without origins; expected 10-crop")
                origin = origin.expand(n, k, 3)
            flat_origin = None if origin is None else origin.flatten(0, 1)
            logits = self(images.flatten(0, 1), flat_origin)
            crops = {t: v.softmax(dim=1).view(n, k, -1) for t, v in logits.items()}
            scores = {t: c.mean(dim=1) for t, c in crops.items()}
            self._update("test_10crop", scores, batch, crops)
        else:
            scores = {t: v.softmax(dim=1) for t, v in self(images, origin).items()}
            self._update("test", scores, batch)

    def _update(
        self,
        stage: str,
        scores: Mapping[str, torch.Tensor],
        batch: Mapping[str, torch.Tensor],
        crops: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Metrics of the labelled faces; with ``keep_predictions`` also every face's
        probabilities (validation: logits, softmaxed here) and targets (-1 = unlabelled)."""
        for task in self.tasks:
            known = masked_targets(batch, task)
            self.metrics[stage].update(task, scores[task][known], batch[task][known])
        if not self.keep_predictions:
            return
        rows = batch.get("index")
        if rows is None:
            raise ValueError("keeping per-face predictions needs the batch key 'index' (row)")
        # every task the batch labels, also one the network does not predict (its true class)
        targets = {
            task: torch.where(masked_targets(batch, task), batch[task], -1)
            for task in TASK_NUM_CLASSES
            if task in batch
        }
        # validation passes logits, the test stages probabilities
        probs = {t: scores[t].softmax(dim=1) if stage == "val" else scores[t] for t in self.tasks}
        self.collected[stage].update(rows, targets, probs, crops)

    def _finish(self, stages: Sequence[str]) -> None:
        for stage in stages:
            if self.keep_predictions:
                # a collective under DDP: every rank reaches it, whatever its labels
                self.predictions[stage] = self.collected[stage].collect()
            scalars, confusion = self.metrics[stage].compute_and_reset(stage)
            if not scalars:
                continue
            self.results[stage] = scalars
            self.confusion[stage] = confusion
            # Already reduced across processes by torchmetrics: no sync_dist needed. Loggers
            # get the headline figures; per-class values go to metrics.json (self.results).
            headline = {
                k: v for k, v in scalars.items() if "_class/" not in k and "_count" not in k
            }
            self.log_dict(headline, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._finish(["val"])

    def on_test_epoch_end(self) -> None:
        self._finish(TEST_STAGES)

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(self.model, hp.optimizer, hp.get("param_groups"))
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        scheduler = build_scheduler(optimizer, hp.scheduler, float(total))
        if scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


def timm_module(name: str, model_kwargs: Mapping[str, Any] | None = None, **kwargs: Any):  # noqa: ANN201
    """``model=timm``'s target: an :class:`AgeGenderModule` on ``TimmAgeGender(name, ...)``.

    Lets the config say ``model.name=convnext_tiny`` (the timm model) beside the module's
    own settings; ``name`` goes into ``model_kwargs`` (what checkpoints store)."""
    kwargs.setdefault("model_name", "timm")
    if kwargs["model_name"] != "timm":
        raise ValueError(f"timm_module builds model_name=timm, not {kwargs['model_name']!r}")
    return AgeGenderModule(
        model_kwargs={**_plain(dict(model_kwargs or {})), "name": name}, **kwargs
    )
