"""Prediction: inputs (images, folders, videos) -> faces -> age/gender -> CSV + pictures.

Used by ``predict.py``; import nothing from training here (start-up time, DESIGN.md). The
names below are imported on first use: with ``backend=onnxruntime`` a whole prediction run
never imports torch, and this package must not import it on its own.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "FaceClassifier": "agegender.inference.classifier",
    "OnnxFaceClassifier": "agegender.inference.onnx_classifier",
    "COLUMNS": "agegender.inference.csv_writer",
    "PROB_COLUMNS": "agegender.inference.csv_writer",
    "PredictionWriter": "agegender.inference.csv_writer",
    "JsonlWriter": "agegender.inference.csv_writer",
    "ResumeError": "agegender.inference.csv_writer",
    "result_rows": "agegender.inference.csv_writer",
    "IMAGE_EXTENSIONS": "agegender.inference.inputs",
    "VIDEO_EXTENSIONS": "agegender.inference.inputs",
    "InputItem": "agegender.inference.inputs",
    "InputNotFoundError": "agegender.inference.inputs",
    "iter_inputs": "agegender.inference.inputs",
    "list_files": "agegender.inference.inputs",
    "scan_inputs": "agegender.inference.inputs",
    "ImageResult": "agegender.inference.pipeline",
    "Pipeline": "agegender.inference.pipeline",
    "BACKENDS": "agegender.inference.run",
    "build_classifier": "agegender.inference.run",
    "configure_torch_threads": "agegender.inference.run",
    "predict": "agegender.inference.run",
    "predict_from_config": "agegender.inference.run",
    "resolve_backend": "agegender.inference.run",
    "ShardError": "agegender.inference.shards",
    "csv_name": "agegender.inference.shards",
    "shard_slice": "agegender.inference.shards",
    "Summary": "agegender.inference.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agegender.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
