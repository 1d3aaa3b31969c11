"""Age and gender probabilities for batches of aligned faces, from any agegender model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from agegender.calibration import temperatures_of
from agegender.errors import CheckpointError, SettingError
from agegender.hardware import cpu_has_fast_bf16
from agegender.labels import ADIENCE8, LabelSet, reporting_matrix
from agegender.runtime.base import check_precision
from agegender.spec import face_spec_of
from agegender.transforms import EvalPreset, ten_crop_origins


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device``.

    ``auto`` picks bf16 only where the hardware multiplies it natively and fast: a CPU with
    AMX bf16 tiles (there bf16 classified 2.6x faster than fp32 with the same labels) or a
    CUDA GPU with bf16 support (Ampere and newer); everywhere else (AVX2 or AVX-512 CPUs,
    which emulate or only partly accelerate bf16) the exact fp32 path. (A CPU run with the
    original weights and ``precision=auto`` uses the install step's measurement instead:
    :func:`agegender.runtime.build.choose_backend`.)
    """
    if check_precision(precision) == "int8":
        raise SettingError("precision=int8 runs an int8 ONNX graph on onnxruntime, not torch")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


class FaceClassifier:
    """Wraps a network (see :mod:`agegender.models` for its input/output convention).

    Preprocessing is the shared :class:`agegender.transforms.EvalPreset` with the network's
    ``face_spec`` (Levi-Hassner: resize 256, centre 227, or 10-crop with ``oversample``), so
    prediction sees exactly what evaluation saw. ``face_spec.face_size`` is the side faces
    are aligned to before that (:class:`agegender.inference.pipeline.Pipeline`).
    ``preprocess`` is separate from ``predict`` so it can run in the loader threads.
    A network with a per-pixel mean image (its checkpoint's) gets the crops' origins: none
    for the centre crop, TenCrop's 10 origins with ``oversample``.
    ``precision`` (:func:`resolve_precision`): ``fp32`` is the exact path (the parity tests'
    1e-4); ``bf16`` runs the network under bf16 autocast and returns float32 probabilities.
    ``model_labels``: the label set the network's age head predicts (its checkpoint's;
    default adience8); ``labels``: the set to report (default the same). A coarser set than
    the network's adience8 buckets is reported by summing the buckets' probabilities into
    their classes (:meth:`agegender.labels.LabelSet.adience_matrix`): the same network,
    read at a coarser grain, not a model trained on that set.
    ``calibration``: the checkpoint's temperature-scaling record (:mod:`agegender.calibration`)
    or None; with ``calibrated`` (the default) each task's logits are divided by its
    temperature before the softmax (before over-sampling's average and the label-set sum).
    """

    def __init__(
        self,
        model: nn.Module,
        oversample: bool = False,
        device: str | torch.device = "cpu",
        channels_last: bool = True,
        precision: str = "fp32",
        model_labels: LabelSet | None = None,
        labels: LabelSet | None = None,
        calibration: Mapping[str, Any] | None = None,
        calibrated: bool = True,
    ) -> None:
        #: The stored temperature-scaling record (None: uncalibrated model) and whether
        #: :meth:`predict` applies it.
        self.calibration = None if calibration is None else dict(calibration)
        self.calibrated = bool(calibrated and calibration is not None)
        self.temperatures = temperatures_of(calibration) if self.calibrated else {}
        self.model_labels = model_labels or ADIENCE8
        self.labels = labels or self.model_labels
        heads = getattr(model, "heads", None)
        for task, size in self.model_labels.num_classes.items():
            head = None if heads is None or task not in heads else heads[task]
            if head is not None and getattr(head, "out_features", size) != size:
                raise CheckpointError(
                    f"the network's {task} head has {head.out_features} classes, its label "
                    f"set {self.model_labels.name} has {size}"
                )
        #: Adience-bucket -> reported-class summing matrix, None when reporting as trained.
        matrix = reporting_matrix(self.model_labels, self.labels)
        self.age_matrix = None if matrix is None else torch.tensor(matrix, dtype=torch.float32)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            # NHWC convolutions are ~30% faster on CPU for this net (bench_classifier.py).
            self.model = self.model.to(memory_format=torch.channels_last)
        self.oversample = oversample
        self.face_spec = spec = face_spec_of(model)
        self.preset = EvalPreset(spec, ten_crop=oversample)
        self.takes_origin = bool(getattr(model, "takes_origin", False))
        self.ten_origins = ten_crop_origins(spec.resize_size, spec.crop_size).to(self.device)
        self.tasks = tuple(getattr(model, "tasks", ("age", "gender")))

    backend = "torch"
    backend_reason = "backend=torch"

    def stack(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Preprocessed faces -> one batch for :meth:`predict`."""
        return torch.stack(crops)

    def preprocess(self, face: np.ndarray) -> torch.Tensor:
        """Aligned H x W x 3 uint8 RGB face -> 3 x S x S (or 10 x 3 x S x S) float tensor."""
        return self.preset(face)

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """N x 3 x S x S (or N x 10 x 3 x S x S) -> {task: N x C probabilities (float32)}."""
        origin = None
        if batch.ndim == 5:
            n, crops = batch.shape[:2]
            flat = batch.reshape(n * crops, *batch.shape[2:])
            if self.takes_origin:
                if crops != len(self.ten_origins):
                    raise ValueError(f"{crops} crops per face; over-sampling makes 10")
                origin = self.ten_origins.repeat(n, 1)
        else:
            n, crops, flat = batch.shape[0], 1, batch
        flat = flat.to(self.device).contiguous(memory_format=self.memory_format)
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            logits = self.model(flat, origin=origin) if self.takes_origin else self.model(flat)
        out = {}
        for task, value in logits.items():
            value = value.float() / self.temperatures.get(task, 1.0)
            probs = torch.softmax(value, dim=1).reshape(n, crops, -1).mean(dim=1)
            if task == "age" and self.age_matrix is not None:
                probs = probs.cpu() @ self.age_matrix  # bucket probabilities summed per class
            out[task] = probs.cpu().numpy()
        return out
