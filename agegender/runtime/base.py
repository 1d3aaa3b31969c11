"""The one interface of a face classifier, whatever runs it (PyTorch or onnxruntime).

The pipeline calls ``preprocess`` in its loader threads (aligned face -> network input),
``stack`` and ``predict`` in the main thread, and reads the rest as plain attributes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from agegender.errors import SettingError
from agegender.labels import LabelSet
from agegender.spec import FaceSpec

#: ``precision=`` choices. ``auto``: the exact-enough path measured fastest on this machine
#: (:mod:`agegender.runtime.measure`), else the flag rule; ``fp32``: exact; ``bf16``: torch
#: under bf16 autocast; ``int8``: a quantized ONNX graph, only when asked for.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise SettingError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


class Classifier(Protocol):
    """Age and gender probabilities for batches of aligned faces."""

    #: ``torch`` or ``onnxruntime``.
    backend: str
    #: Why that backend (:func:`agegender.runtime.build.choose_backend`).
    backend_reason: str
    #: ``fp32``, ``bf16`` or ``int8`` (resolved, never ``auto``).
    precision: str
    oversample: bool
    device: Any
    #: The heads the network has (``age``, ``gender``), in output order.
    tasks: tuple[str, ...]
    #: The label set reported (class names of the probabilities ``predict`` returns).
    labels: LabelSet
    #: The face size the network was trained on, its resize/crop and normalisation.
    face_spec: FaceSpec
    #: The network's own label set (what its age head predicts).
    model_labels: LabelSet
    #: The model's temperature-scaling record (:mod:`agegender.calibration`), None if it has
    #: none; ``calibrated``: whether ``predict`` applies it.
    calibration: dict[str, Any] | None
    calibrated: bool

    def preprocess(self, face: np.ndarray) -> Any:
        """Aligned H x W x 3 uint8 RGB face -> one network input."""
        ...

    def stack(self, crops: list[Any]) -> Any:
        """Preprocessed faces -> one batch."""
        ...

    def predict(self, batch: Any) -> dict[str, np.ndarray]:
        """A batch -> {task: N x C float32 probabilities in ``labels``' class order}."""
        ...
