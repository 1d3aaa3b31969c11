"""int8 graphs: onnxruntime static quantization calibrated on real faces, and the check
that decides whether one is kept.

``precision=int8`` is an explicit option, never ``auto``'s choice: int8 changes
probabilities (unlike onnxruntime fp32, equal to torch to ~1e-6), so a graph is kept only
when its labels agree with the fp32 graph's on held-out faces. Static QDQ with per-channel
int8 weights and uint8 activations (MinMax ranges, 7-bit: ``reduce_range``) is onnxruntime's
recommended CPU format;
the ranges come from aligned real faces (:mod:`agegender.runtime.sample_faces`), since
synthetic inputs give activation ranges that real faces do not have.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agegender.onnx_session import ort_session

#: Smallest share of held-out faces whose label (argmax) the int8 graph must give as the fp32
#: graph does, per task; a graph below it is not written (``min_agreement=`` changes it).
MIN_AGREEMENT: float = 0.95
#: Views of the calibration faces that set the activation ranges, and views checked.
CALIBRATION_VIEWS: int = 96
CHECK_VIEWS: int = 96
#: Below this many real faces, calibration and check use different views of the same faces
#: (the sample photos hold four); from here on, different faces.
SPLIT_FACES: int = 8
METHOD = (
    "onnxruntime static QDQ: per-channel int8 weights, uint8 activations, MinMax ranges, "
    "reduce_range"
)


@dataclass(frozen=True)
class Agreement:
    """How an int8 graph's answers compare with the fp32 graph's on held-out faces."""

    faces: int
    #: Per task: share of faces with the same argmax.
    argmax: dict[str, float]
    #: Largest absolute probability difference over all faces, classes and tasks.
    max_abs_diff: float
    #: ``other faces`` or ``other views of the calibration faces``.
    held_out: str

    def passes(self, minimum: float) -> bool:
        return all(value >= minimum for value in self.argmax.values())

    def line(self) -> str:
        tasks = ", ".join(f"{task} {value:.1%}" for task, value in self.argmax.items())
        return (
            f"argmax agreement with fp32 on {self.faces} held-out faces ({self.held_out}): "
            f"{tasks}; max |dp| {self.max_abs_diff:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def int8_agreement(metadata: dict[str, str]) -> Agreement | None:
    """The agreement an int8 export was kept with (its ``quantization`` metadata, written by
    ``agegender.export``), for the summary line of a run on it; None for other graphs."""
    record = metadata.get("quantization")
    if metadata.get("precision") != "int8" or not record:
        return None
    try:
        return Agreement(**json.loads(record)["check"])
    except (KeyError, TypeError, ValueError):  # a record from another writer: not shown
        return None


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over batches of network inputs."""

    def __init__(self, inputs: np.ndarray, batch: int = 16) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"input": np.ascontiguousarray(batch, np.float32)}


def quantize(model_bytes: bytes, calibration_inputs: np.ndarray) -> bytes:
    """The int8 (QDQ) version of the fp32 graph ``model_bytes``, activation ranges from
    ``calibration_inputs`` (N x 3 x S x S, what the graph takes). Metadata is not copied."""
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, on every call
    try:
        return _quantize(model_bytes, calibration_inputs)
    finally:
        logging.getLogger().setLevel(quiet)


def _quantize(model_bytes: bytes, calibration_inputs: np.ndarray) -> bytes:
    # onnxruntime.quantization: deferred, ~2 s of imports only an int8 export needs
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model_bytes)
        quantize_static(
            str(source),
            str(target),
            _Reader(calibration_inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # 7-bit ranges: CPUs without VNNI (AVX2) saturate in u8 x s8 products otherwise;
            # measured on an AVX2 machine: age agreement 88% without, 100% with
            reduce_range=True,
        )
        return target.read_bytes()


def agreement(
    reference: bytes | str | Path,
    candidate: bytes | str | Path,
    inputs: np.ndarray,
    tasks: Sequence[str],
    held_out: str,
) -> Agreement:
    """Compare two graphs' probabilities on ``inputs`` (argmax per task, largest |dp|)."""
    x = np.ascontiguousarray(inputs, np.float32)
    ref = ort_session(reference).run(None, {"input": x})
    got = ort_session(candidate).run(None, {"input": x})
    argmax = {
        task: float(np.mean(r.argmax(1) == g.argmax(1)))
        for task, r, g in zip(tasks, ref, got, strict=True)
    }
    diff = max(float(np.abs(r - g).max()) for r, g in zip(ref, got, strict=True))
    return Agreement(faces=len(x), argmax=argmax, max_abs_diff=diff, held_out=held_out)
