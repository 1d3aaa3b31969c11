"""The prediction engine: results, writers, tracks, annotation, video I/O and the one job
loop (inputs -> faces -> age/gender -> predictions.csv + pictures).

Layer: above the runtime (:mod:`agegender.runtime`), below the API (:mod:`agegender.api`);
training code never imports it. The names below are imported on first use: with
``backend=onnxruntime`` a whole prediction run never imports torch, and this package must
not import it on its own.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "COLUMNS": "agegender.inference.csv_writer",
    "PROB_COLUMNS": "agegender.inference.csv_writer",
    "CsvWriter": "agegender.inference.csv_writer",
    "JsonlWriter": "agegender.inference.jsonl_writer",
    "PredictionWriter": "agegender.inference.writer",
    "ResumeError": "agegender.inference.writer",
    "result_rows": "agegender.inference.csv_writer",
    "IMAGE_EXTENSIONS": "agegender.inference.inputs",
    "VIDEO_EXTENSIONS": "agegender.inference.inputs",
    "InputItem": "agegender.inference.inputs",
    "InputNotFoundError": "agegender.inference.inputs",
    "iter_inputs": "agegender.inference.inputs",
    "list_files": "agegender.inference.inputs",
    "scan_inputs": "agegender.inference.inputs",
    "FaceResult": "agegender.inference.results",
    "ImageResult": "agegender.inference.results",
    "Pipeline": "agegender.inference.pipeline",
    "PredictOptions": "agegender.inference.options",
    "VideoOptions": "agegender.inference.options",
    "predict": "agegender.inference.job",
    "run_job": "agegender.inference.job",
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
