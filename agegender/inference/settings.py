"""What a run's rows depend on, recorded beside its output, so that ``resume=true`` can only
continue a file with the settings that made it.

``predictions.settings.json`` (``<name>.settings.json`` beside a shard's file) holds every
setting that changes a row: the input (as written in the rows, and where it resolves), the
network (checkpoint, label set, resolved backend, precision and device, over-sampling), the
detector's full config, the decoding limits, the video settings and the columns. Settings
that only change speed (batch size, threads, workers) or other files (annotate, progress)
are not recorded: the rows do not depend on them (beyond float noise of batching).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agegender.faces import Detector
from agegender.fileio import atomic_write, display_path
from agegender.inference.options import PredictOptions
from agegender.inference.streams import is_stream, redact_url
from agegender.inference.writer import ResumeError
from agegender.runtime.base import Classifier
from agegender.spec import LEGACY_FRAMING, Framing

SETTINGS_FORMAT = "agegender.predict_settings.v1"


def settings_path(csv_path: str | os.PathLike[str]) -> Path:
    """``predictions.settings.json`` beside ``predictions.csv`` (a shard: its own); another
    format's file has its own record (``predictions.jsonl.settings.json``), so a CSV and a
    JSON Lines run into one folder never overwrite each other's."""
    path = Path(csv_path)
    if path.suffix in ("", ".csv"):
        return path.with_name(path.stem + ".settings.json")
    return path.with_name(path.name + ".settings.json")


def run_settings(
    input: str | os.PathLike[str],
    options: PredictOptions,
    classifier: Classifier,
    detector: Detector,
) -> dict[str, Any]:
    """The settings the rows of this run depend on (JSON-ready). The detector is described
    by its config when it was built from it, else by its class and ``repr``."""
    video = options.video
    kind = f"{type(detector).__module__}.{type(detector).__qualname__}"
    if options.detector.get("_target_") == kind:
        described: Any = dict(options.detector)
    else:
        described = {"_target_": kind, "repr": repr(detector)}
    settings = {
        "input": redact_url(str(input)) if is_stream(input) else display_path(input),
        "input_resolved": None if is_stream(input) else display_path(Path(input).resolve()),
        "checkpoint": options.checkpoint,
        "labels": classifier.labels.to_config(),
        "backend": classifier.backend,
        "precision": classifier.precision,
        "device": str(classifier.device),
        "oversample": bool(options.oversample),
        "calibration": classifier.calibration if classifier.calibrated else None,
        "min_prob": dict(options.min_prob),
        "detector": described,
        "framing": framing_record(classifier.face_spec.framing, detector),
        "decode_min_side": options.decode_min_side,
        "max_pixels": options.max_pixels,
        "save_probs": bool(options.save_probs),
        "expected_age": bool(options.expected_age),
        "format": options.format,
        "video": {
            "stride": int(video.stride),
            "lost_seconds": float(video.lost_seconds),
            "min_similarity": None if video.min_similarity is None else float(video.min_similarity),
            "max_frames": video.max_frames,
            "max_seconds": video.max_seconds,
        },
        "shard": int(options.shard),
        "num_shards": int(options.num_shards),
    }
    return json.loads(json.dumps(settings))  # as it reads back (tuples become lists)


def framing_record(framing: Framing, detector: Detector) -> dict[str, Any]:
    """How faces were framed: the network's framing, and for one that frames box-only faces
    by measured box geometry, the detector's (:data:`~agegender.faces.types.BoxPoints`)."""
    record: dict[str, Any] = framing.to_config()
    if framing.box_scale is None:
        record["box_points"] = [list(p) for p in detector.box_points]
    return record


def check_resume(csv_path: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``csv_path`` with other settings than the run that wrote it
    (:class:`ResumeError` naming each difference); an output without a settings record
    (an older version's) is accepted as it is."""
    recorded = read_settings(csv_path)
    if recorded is None or not csv_path.exists():
        return
    # records written before framings were recorded: every run then framed faces this way
    recorded.setdefault("framing", LEGACY_FRAMING.to_config())
    # records written before the tracker's appearance check: tracks by box overlap alone
    if isinstance(recorded.get("video"), dict):
        recorded["video"].setdefault("min_similarity", None)
    fixed = ("input", "input_resolved")
    differ = [key for key in settings if key not in fixed and recorded.get(key) != settings[key]]
    if recorded.get("input") != settings["input"]:
        resolved = settings["input_resolved"]
        if resolved is not None and recorded.get("input_resolved") == resolved:
            raise ResumeError(
                f"cannot resume {csv_path}: its rows name the input as "
                f"input={recorded['input']}; resume with exactly that spelling (this run "
                f"says input={settings['input']}, the same folder), or every file would be "
                "predicted again"
            )
        differ.insert(0, "input")
    if differ:
        lines = "\n".join(
            f"  {key}: {json.dumps(recorded.get(key))} then, {json.dumps(settings[key])} now"
            for key in differ
        )
        raise ResumeError(
            f"cannot resume {csv_path} with other settings than the run that wrote it:\n"
            f"{lines}\nResume with the first run's settings ({settings_path(csv_path)}), "
            "write to another output, or run without resume=true to start afresh."
        )


def read_settings(csv_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(settings_path(csv_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or data.pop("record", None) != SETTINGS_FORMAT:
        return None
    return data


def write_settings(csv_path: str | os.PathLike[str], settings: dict[str, Any]) -> Path:
    text = json.dumps({"record": SETTINGS_FORMAT, **settings}, indent=2, sort_keys=True)
    data = (text + "\n").encode("utf-8")
    return atomic_write(settings_path(csv_path), lambda fh: fh.write(data))
