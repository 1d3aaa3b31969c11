"""Run a model on a labelled set through predict.py's engine and write the report.

Every face goes through the engine predict.py and the API use (the detector of
``conf/detector/<name>.yaml``, :func:`agegender.runtime.build.build_classifier`,
:class:`agegender.inference.pipeline.Pipeline`), so a face gets here the probabilities it
gets in predictions.csv. Per row: the CSV's box when it has one, else the detected face with
the largest box, else (nothing detected) the whole image as the face, as a crop dataset is
read; such rows are counted (``faces_without_detection``). An image that cannot be read is
listed with its reason (``errors``) and left out; it never stops the run.

The classifier is built with ``calibration=False`` (raw probabilities) and the model's own
label set; temperatures and the mapping to the evaluation's label set are applied in
:mod:`agegender.evaluation.report`, so one run gives the model before and after scaling.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agegender.api import AgeGender
from agegender.evaluation.outputs import write_outputs
from agegender.evaluation.report import (
    TASKS,
    EvalSettings,
    Evaluation,
    EvaluationError,
    FaceTable,
    build_report,
)
from agegender.evaluation.sets import BOX, SET_KINDS, EvalSet, EvalSetError, load_set
from agegender.faces import Face
from agegender.faces.whole import WholeImageDetector
from agegender.inference.inputs import InputItem
from agegender.inference.options import PredictOptions
from agegender.inference.results import FaceResult
from agegender.labels import LabelSet, load_label_set, reporting_matrix
from agegender.runtime.build import torch_threads
from agegender.store import original_checkpoint_path

#: ``detection`` column of faces.csv: how the face of a row was found.
GIVEN_BOX, DETECTED, WHOLE_IMAGE = "given_box", "detected", "no_face_whole_image"
#: Every key ``conf/evaluate.yaml`` must hold (a missing one is an error, not a default).
CONFIG_KEYS: tuple[str, ...] = (
    "set", "root", "csv", "fold", "label_policy", "output", "checkpoint", "groups",
    "calibrate", "calibrate_fraction", "resamples", "level", "seed", "bins", "gap_min_faces",
    "batch_size", "workers", "threads", "device", "precision", "backend", "oversample",
    "decode_min_side", "max_pixels", "detector",
)  # fmt: skip
#: The engine's settings (conf/predict.yaml's keys) an evaluation sets itself.
ENGINE_KEYS: tuple[str, ...] = (
    "batch_size", "workers", "threads", "device", "precision", "backend", "oversample",
    "decode_min_side", "max_pixels",
)  # fmt: skip


def _largest(faces: list[FaceResult]) -> FaceResult:
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def _item(row: Any, index: int) -> InputItem:
    faces = None
    if not np.isnan(row.x1):
        faces = [Face(box=(row.x1, row.y1, row.x2, row.y2), score=1.0)]
    return InputItem(path=str(row.path), relpath=str(index), file=Path(row.file), faces=faces)


def predict_set(evalset: EvalSet, agegender: AgeGender) -> tuple[FaceTable, list[dict[str, str]]]:
    """(one :class:`FaceTable` row per evaluated face, ``[{"path", "where", "error"}]`` for
    the rows whose image could not be used, ``where`` the row's ``file:line``), through
    ``agegender``'s pipeline. It must report
    the network's own label set (raw probabilities in the network's classes)."""
    classifier = agegender.classifier
    if classifier.labels != classifier.model_labels:
        raise EvaluationError("the classifier must report the network's own label set")
    rows = list(evalset.table.itertuples(index=False))
    found: dict[int, tuple[FaceResult, str]] = {}
    errors: dict[int, str] = {}
    retry: list[int] = []
    pipeline = agegender.pipeline()
    for index, result in enumerate(pipeline.run(_item(r, i) for i, r in enumerate(rows))):
        if result.error is not None:
            errors[index] = result.error
        elif result.faces:
            status = GIVEN_BOX if result.item.faces is not None else DETECTED
            found[index] = (_largest(result.faces), status)
        else:
            retry.append(index)
    if retry:  # nothing detected: the whole image is the face (detector=none's crop)
        whole = agegender.pipeline(detector=WholeImageDetector())
        items = (InputItem(str(rows[i].path), str(i), file=Path(rows[i].file)) for i in retry)
        for index, result in zip(retry, whole.run(items), strict=True):
            if result.error is not None or not result.faces:
                errors[index] = result.error or "no face"
            else:
                found[index] = (result.faces[0], WHOLE_IMAGE)
    kept = sorted(found)
    frame = evalset.table.iloc[kept].reset_index(drop=True)
    files = [str(f) for f in frame["file"]]  # for report.md's thumbnails of the worst errors
    frame = frame.drop(columns=["file", "age_raw", "gender_raw", *BOX, "where"])
    faces = [found[i][0] for i in kept]
    boxes = np.array([f.box for f in faces], dtype=np.float64).reshape(-1, 4)
    for j, column in enumerate(BOX):
        frame[column] = boxes[:, j]
    frame["detection"] = [found[i][1] for i in kept]
    probs = {}
    for task in TASKS:
        width = classifier.model_labels.num_classes[task]
        values = [f.probs(task) for f in faces]
        if any(v is None for v in values):
            raise EvaluationError(f"the model has no {task} head: nothing to evaluate")
        probs[task] = np.array(values, dtype=np.float64).reshape(-1, width)
    model_labels = classifier.model_labels
    age_model = None if model_labels == evalset.labels else evalset.age_in(model_labels)[kept]
    table = FaceTable(
        frame=frame,
        probs=probs,
        model_labels=model_labels,
        labels=evalset.labels,
        has_subjects=evalset.has_subjects,
        age_model=age_model,
        files=files,
    )
    listed = [
        {"path": str(rows[i].path), "where": str(rows[i].where), "error": errors[i]}
        for i in sorted(errors)
    ]
    return table, listed


def describe_model(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "the original Levi-Hassner nets (Caffe weights, converted)"
    if str(checkpoint).lower().endswith(".onnx"):
        return f"ONNX export {checkpoint}"
    return f"checkpoint {checkpoint}"


def describe_set(evalset: EvalSet) -> str:
    what = "Adience-format tree" if evalset.kind == "adience" else "CSV"
    fold = "all folds" if evalset.fold is None else f"fold {evalset.fold}"
    if evalset.kind == "csv" and evalset.fold is None:
        fold = "all rows"
    return f"{what} {evalset.source} ({fold}, label set {evalset.labels.name})"


def _check_config(cfg: Mapping[str, Any]) -> None:
    missing = [key for key in CONFIG_KEYS if key not in cfg]
    if missing:
        raise EvaluationError(f"evaluation config lacks {', '.join(missing)} (conf/evaluate.yaml)")
    if cfg["output"] in (None, "", "???"):
        raise EvaluationError("output=DIR is required (where report.md and report.json go)")


def _settings(cfg: Mapping[str, Any]) -> EvalSettings:
    groups = cfg["groups"] or ()
    if isinstance(groups, str):
        groups = tuple(g.strip() for g in groups.split(",") if g.strip())
    return EvalSettings(
        resamples=int(cfg["resamples"]),
        level=float(cfg["level"]),
        seed=int(cfg["seed"]),
        bins=int(cfg["bins"]),
        groups=tuple(str(g).strip().lower() for g in groups),
        calibrate=bool(cfg["calibrate"]),
        calibrate_fraction=float(cfg["calibrate_fraction"]),
        gap_min_faces=int(cfg["gap_min_faces"]),
    )


def _check_source(cfg: Mapping[str, Any]) -> None:
    """The set's kind and its file or folder: checked before any model loads."""
    kind = cfg["set"]
    if kind in (None, "", "???"):
        raise EvalSetError("set=adience (with root=DIR) or set=csv (with csv=FILE) is required")
    if kind not in SET_KINDS:
        raise EvalSetError(f"set must be one of {', '.join(SET_KINDS)}, got {kind!r}")
    key = "root" if kind == "adience" else "csv"
    if cfg[key] in (None, ""):
        what = "the folder of fold_K_data.txt" if kind == "adience" else "columns path, age, gender"
        raise EvalSetError(
            f"set={kind} needs {key}={'DIR' if kind == 'adience' else 'FILE'} ({what})"
        )
    path = Path(str(cfg[key])).expanduser()
    if kind == "csv" and not path.is_file():
        raise EvalSetError(f"set=csv: CSV not found: {cfg[key]}")
    if kind == "adience" and not path.is_dir():
        raise EvalSetError(f"set=adience: root {str(cfg[key])!r} is not a folder")


def evaluate(cfg: Mapping[str, Any]) -> Evaluation:
    """Evaluate ``cfg["checkpoint"]`` on the set ``cfg`` names and write every output into
    ``cfg["output"]`` (``conf/evaluate.yaml`` lists the keys; ``detector`` may be a name or
    a composed detector config). Returns the :class:`Evaluation`."""
    _check_config(cfg)
    settings = _settings(cfg)
    _check_source(cfg)
    checkpoint = None if cfg["checkpoint"] in (None, "", "null") else str(cfg["checkpoint"])
    # predict.py's options with the evaluation's engine settings: raw probabilities in the
    # network's own label set (temperatures and label sets are applied by the report)
    options = PredictOptions.defaults(
        checkpoint=checkpoint,
        labels=None,
        calibration=False,
        **{key: cfg[key] for key in ENGINE_KEYS},
    )
    spec = cfg["detector"]
    if not isinstance(spec, str):  # a composed conf/detector config
        options, spec = options.replace(detector=dict(spec)), None
    agegender = AgeGender(spec, options=options)
    classifier = agegender.classifier
    with contextlib.ExitStack() as stack:
        if classifier.backend == "torch":  # onnxruntime's threads are set in the classifier
            # restored after: an evaluation run inside another program leaves its threads be
            stack.enter_context(torch_threads(options.threads, options.workers))
        return _evaluate(cfg, settings, checkpoint, agegender)


def _evaluate(
    cfg: Mapping[str, Any], settings: EvalSettings, checkpoint: str | None, agegender: AgeGender
) -> Evaluation:
    classifier = agegender.classifier
    labels: LabelSet = (
        classifier.model_labels if cfg.get("labels") is None else load_label_set(cfg["labels"])
    )
    reporting_matrix(classifier.model_labels, labels)  # refused here, before any face is read
    evalset = load_set(
        str(cfg["set"]),
        labels,
        root=cfg["root"],
        csv=cfg["csv"],
        fold=None if cfg["fold"] is None else int(cfg["fold"]),
        groups=settings.groups,
        policy=cfg["label_policy"],
    )
    if not len(evalset):
        skipped = evalset.skipped_rows
        why = f"; {len(skipped)} rows skipped, the first: {skipped[0]}" if skipped else ""
        raise EvalSetError(f"{describe_set(evalset)}: no labelled row to evaluate{why}")
    table, errors = predict_set(evalset, agegender)
    notes = list(evalset.notes)
    model = {
        "checkpoint": checkpoint,
        "description": describe_model(checkpoint),
        "backend": classifier.backend,
        "precision": classifier.precision,
        "detector": getattr(agegender.detector, "name", type(agegender.detector).__name__),
    }
    dataset = {
        "kind": evalset.kind,
        "source": evalset.source,
        "description": describe_set(evalset),
        "fold": evalset.fold,
        "rows": len(evalset),
        "faces_without_detection": int((table.frame["detection"] == WHOLE_IMAGE).sum())
        if len(table)
        else 0,
        "errors": len(errors),
        "error_list": errors,
        "skipped_rows": len(evalset.skipped_rows),
        "skipped_row_list": evalset.skipped_rows,
        "duplicate_rows": len(evalset.duplicate_rows),
        "duplicate_row_list": evalset.duplicate_rows,
        "notes": notes,
    }
    if not len(table):
        shown = "; ".join(f"{e['path']}: {e['error']}" for e in errors[:3])
        raise EvaluationError(f"no image of {describe_set(evalset)} could be read ({shown})")
    evaluation = build_report(table, settings, model, dataset, classifier.calibration)
    output = Path(str(cfg["output"])).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    evaluation.report["calibrated_checkpoint"] = _save_calibrated(
        evaluation, checkpoint, output, notes
    )
    write_outputs(evaluation, output)
    return evaluation


def _save_calibrated(
    evaluation: Evaluation, checkpoint: str | None, output: Path, notes: list[str]
) -> str | None:
    """``calibrated.ckpt`` (and ``calibration.json``) with the fitted temperatures, or None."""
    record = evaluation.fitted
    if record is None:
        return None
    (output / "calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    if checkpoint is not None and checkpoint.lower().endswith(".onnx"):
        notes.append(
            "calibrated.ckpt not written: calibrating an .onnx export needs the checkpoint it "
            "was exported from (evaluate that checkpoint with calibrate=true, then export "
            "calibrated.ckpt again); the fitted record is in calibration.json"
        )
        return None
    # deferred: agegender.checkpoints imports torch, which an onnxruntime run never needs
    from agegender.checkpoints import set_calibration

    source = Path(checkpoint) if checkpoint is not None else original_checkpoint_path()
    target = set_calibration(source, record, output / "calibrated.ckpt")
    return str(target)
