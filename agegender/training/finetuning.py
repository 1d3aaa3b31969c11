"""Staged fine-tuning: train the heads on a frozen pretrained backbone for the first epochs.

Built on Lightning's :class:`BaseFinetuning`, with one deliberate difference: the optimiser
already holds the backbone parameters (in their own group, at
``model.param_groups.backbone_lr_mult`` of the base rate, see :mod:`agegender.training.optim`),
so unfreezing only flips ``requires_grad`` and never adds a parameter group. The scheduler,
the optimiser state of a resumed run and the groups then always agree, and resuming after the
unfreeze epoch unfreezes again.
Frozen parameters get no gradient, so the optimiser skips them (no decay, no momentum).

Under DDP the process group registers only parameters that require gradients when the model
is wrapped; so with more than one process the backbone stays registered and is frozen by
dropping its gradients after each backward instead (same optimiser behaviour, no compute saved).
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.optim import Optimizer


class FreezeBackbone(BaseFinetuning):
    """Freeze ``pl_module.model.backbone`` until epoch ``unfreeze_at_epoch``.

    ``train_bn``: keep BatchNorm layers of the frozen backbone learning their statistics.
    """

    def __init__(self, unfreeze_at_epoch: int = 1, train_bn: bool = False) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise ValueError("unfreeze_at_epoch must be >= 0")
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.train_bn = bool(train_bn)
        self._drop_grads = False
        self._frozen = False

    @staticmethod
    def _backbone(pl_module: pl.LightningModule):  # noqa: ANN205
        backbone = getattr(getattr(pl_module, "model", None), "backbone", None)
        if backbone is None:
            raise ValueError(
                "FreezeBackbone needs a model with a pretrained `backbone` (resnet18, "
                "resnet50, inception_resnet_v1, timm); remove the callback for this model"
            )
        return backbone

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._drop_grads = trainer.world_size > 1
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        backbone = self._backbone(pl_module)
        if self.unfreeze_at_epoch == 0:
            return
        self._frozen = True
        if not self._drop_grads:
            self.freeze(backbone, train_bn=self.train_bn)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not BaseFinetuning's version: it records param groups to re-add on resume, and this
        # callback never adds any (restoring its stale copy would undo the resumed lr).
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if self._frozen and epoch >= self.unfreeze_at_epoch:
            self.make_trainable(self._backbone(pl_module))
            self._frozen = False

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._frozen and self._drop_grads:
            for param in self._backbone(pl_module).parameters():
                param.grad = None

    @property
    def frozen(self) -> bool:
        return self._frozen
