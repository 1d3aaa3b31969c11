"""Prediction: inputs (images, folders, videos) -> faces -> age/gender -> CSV + pictures.

Used by ``predict.py``; import nothing from training here (start-up time, DESIGN.md).
"""

from agegender.inference.classifier import FaceClassifier
from agegender.inference.csv_writer import (
    COLUMNS,
    PROB_COLUMNS,
    PredictionWriter,
    ResumeError,
    result_rows,
)
from agegender.inference.inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    InputItem,
    InputNotFoundError,
    iter_inputs,
    list_files,
    scan_inputs,
)
from agegender.inference.pipeline import ImageResult, Pipeline
from agegender.inference.run import (
    build_classifier,
    configure_torch_threads,
    predict,
    predict_from_config,
)
from agegender.inference.shards import ShardError, csv_name, shard_slice
from agegender.inference.summary import Summary

__all__ = [
    "COLUMNS",
    "IMAGE_EXTENSIONS",
    "PROB_COLUMNS",
    "VIDEO_EXTENSIONS",
    "FaceClassifier",
    "ImageResult",
    "InputItem",
    "InputNotFoundError",
    "Pipeline",
    "PredictionWriter",
    "ResumeError",
    "ShardError",
    "Summary",
    "build_classifier",
    "configure_torch_threads",
    "csv_name",
    "iter_inputs",
    "list_files",
    "predict",
    "predict_from_config",
    "result_rows",
    "scan_inputs",
    "shard_slice",
]
