"""The classifier on onnxruntime: an exported model (``python -m agegender.export``) with
:class:`~agegender.runtime.torch_classifier.FaceClassifier`'s interface, and no torch import.

Why a second runtime: on the CPU it classifies ~1.4x faster than our PyTorch path with the
same probabilities (to ~1e-6; ``benchmarks/bench_classifier.py --onnx``), and prediction
that never imports torch starts in well under a second instead of ~2.5 s
(``benchmarks/bench_predict.py``). The input is prepared exactly as the shared preset does:
for networks whose face is already the resize size (Levi-Hassner: 256) the preset is a pure
centre crop, done here on the array (tested bit-equal to
:class:`agegender.transforms.EvalPreset`); any other network uses the preset itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from agegender.calibration import apply_temperature, check_calibration, temperatures_of
from agegender.errors import CheckpointError
from agegender.labels import label_set_of_model, load_label_set, reporting_matrix
from agegender.onnx_session import ort_session
from agegender.spec import FaceSpec, centre_offset, framing_from_stored


class OnnxFaceClassifier:
    """``preprocess`` (aligned H x W x 3 uint8 face -> 3 x S x S float32 RGB 0-255),
    ``stack``, and ``predict`` (N x 3 x S x S -> {task: N x C probabilities}), like
    :class:`~agegender.runtime.torch_classifier.FaceClassifier`; single-crop only (over-sampling
    runs on the PyTorch classifier)."""

    oversample = False
    backend = "onnxruntime"
    backend_reason = "backend=onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        labels: Any = None,
        calibration: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {str(self.path)!r} does not exist")
        # no prepacking: as fast here, and a session that starts sooner (onnx_session)
        self.session = ort_session(self.path, threads, prepack=False)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != "agegender.export.v1":
            raise ValueError(
                f"{self.path} has no agegender export metadata (made by `python -m "
                "agegender.export`?): its labels and input size are unknown"
            )
        self.metadata = dict(meta)
        #: ``fp32``, or ``int8`` for a quantized export (``agegender.export precision=int8``).
        self.precision = meta.get("precision", "fp32")
        if self.precision not in ("fp32", "int8"):
            raise CheckpointError(f"{self.path}: unknown graph precision {self.precision!r}")
        try:
            self._read_metadata(meta)
        except (KeyError, TypeError, ValueError) as exc:  # LabelSetError is a ValueError
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CheckpointError(f"{self.path}: malformed agegender metadata ({what})") from None
        #: An export of a calibrated checkpoint holds its temperatures in the graph (the
        #: metadata's ``calibration`` record); ``calibration=False`` undoes them here, so
        #: :meth:`predict` gives the network's raw probabilities (softmax(T log p) = p_raw).
        self.calibrated = self.calibration is not None and bool(calibration)
        self._undo = {} if self.calibrated else temperatures_of(self.calibration)
        #: Adience bucket -> reported class summing matrix (as FaceClassifier's).
        self.labels = self.model_labels if labels is None else load_label_set(labels)
        matrix = reporting_matrix(self.model_labels, self.labels)
        self.age_matrix = None if matrix is None else np.asarray(matrix, dtype=np.float32)
        self.device = "cpu"
        spec = self.face_spec
        self._offset = centre_offset(spec.resize_size, spec.crop_size)
        self._preset: Any = None
        if spec.resize_size != spec.face_size:
            # torch: deferred, only networks whose face is not the resize size need it
            from agegender.transforms import EvalPreset

            self._preset = EvalPreset(spec)

    def _read_metadata(self, meta: dict[str, str]) -> None:
        """Tasks, label set and face geometry from the export's metadata, checked against
        the graph's own outputs (a label set that does not fit the heads is refused here,
        not half way through a run)."""
        tasks = json.loads(meta["outputs"])
        if not isinstance(tasks, list) or not all(t in ("age", "gender") for t in tasks):
            raise ValueError(f"outputs must name age and/or gender, got {tasks!r}")
        self.tasks: tuple[str, ...] = tuple(tasks)
        # the network's label set (exports before label sets: the names say adience8)
        self.model_labels = label_set_of_model(json.loads(meta.get("label_set", "null")))
        outputs = self.session.get_outputs()
        if len(outputs) != len(self.tasks):
            raise ValueError(f"{len(outputs)} graph outputs for tasks {list(self.tasks)}")
        sizes = self.model_labels.num_classes
        for task, output in zip(self.tasks, outputs, strict=True):
            width = output.shape[-1] if output.shape else None
            if isinstance(width, int) and width != sizes[task]:
                raise ValueError(
                    f"the {task} output has {width} classes, label set "
                    f"{self.model_labels.name} has {sizes[task]}"
                )
        record = json.loads(meta.get("calibration", "null"))
        #: The temperature-scaling record the graph applies (None: uncalibrated export).
        self.calibration = None if record is None else check_calibration(record)
        self.face_spec = FaceSpec(
            face_size=int(meta["face_size"]),
            resize_size=int(meta["resize_size"]),
            crop_size=int(meta["crop_size"]),
            mean=tuple(json.loads(meta["mean"])),
            std=tuple(json.loads(meta["std"])),
            channel_order=meta["network_channel_order"],
            mean_image=meta.get("mean_image") == "true",
            # exports written before framings were stored: the framing they were trained with
            framing=framing_from_stored(json.loads(meta.get("framing", "null"))),
        )

    def preprocess(self, face: np.ndarray) -> np.ndarray:
        """Aligned face -> 3 x S x S float32 (the centre crop of the shared preset)."""
        if self._preset is not None:
            return self._preset(face).numpy()
        spec = self.face_spec
        if face.shape[:2] != (spec.resize_size, spec.resize_size):
            raise ValueError(f"expected a {spec.face_size} px aligned face, got {face.shape}")
        o, s = self._offset, spec.crop_size
        return face[o : o + s, o : o + s].transpose(2, 0, 1).astype(np.float32)

    def stack(self, crops: list[Any]) -> np.ndarray:
        return np.stack(crops)

    def predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {"input": np.ascontiguousarray(batch, np.float32)})
        out = {task: p.astype(np.float32) for task, p in zip(self.tasks, outputs, strict=True)}
        for task, temperature in self._undo.items():
            if task in out:
                out[task] = apply_temperature(out[task], 1.0 / temperature)
        if "age" in out and self.age_matrix is not None:
            out["age"] = out["age"] @ self.age_matrix  # bucket probabilities summed per class
        return out

    def __repr__(self) -> str:
        return f"OnnxFaceClassifier({str(self.path)!r})"
