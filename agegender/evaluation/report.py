"""Where a model fails, from a table of per-face probabilities and true labels.

Nothing here runs a network: :class:`FaceTable` holds the network's raw probabilities (in
its own label set) and the true classes (in the evaluation's label set), and
:func:`build_report` turns it into ``report.json``'s content (the keys are listed in
docs/evaluation.md). The runner fills a table by running the model; tests fill one by hand.

Why from raw probabilities: one run gives both the uncalibrated and the temperature-scaled
model (:func:`agegender.calibration.apply_temperature` on probabilities equals dividing the
logits), and the mapping to a coarser label set comes after the temperature, as in the
classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from agegender import stats
from agegender.calibration import (
    apply_temperature,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    temperatures_of,
)
from agegender.data.splits import split_users
from agegender.errors import AgeGenderError
from agegender.labels import IGNORE_INDEX, LabelSet, reporting_matrix

#: Value of ``report.json``'s ``"format"`` key.
FORMAT = "agegender.evaluation.v1"
TASKS: tuple[str, ...] = ("age", "gender")
#: Coverages at which the report states the accuracy of the most confident faces.
COVERAGES: tuple[float, ...] = (1.0, 0.9, 0.8, 0.5)
#: A wrong answer at or above this probability counts as a confident error.
CONFIDENT: float = 0.9


class EvaluationError(AgeGenderError, ValueError):
    """An evaluation that cannot be computed (no face, a bad setting); the message says why."""


@dataclass(frozen=True)
class EvalSettings:
    """The statistics' settings (``conf/evaluate.yaml``), stored in the report.

    ``gap_min_faces``: groups with fewer labelled faces take no part in the largest gap (a
    group of three faces has an accuracy of 0, 1/3, 2/3 or 1: its gap says nothing).
    ``small_n``: a figure resting on fewer units (subjects, or faces when the set names no
    one) gets the exact interval instead of the bootstrap and is flagged "too few faces to
    conclude" (one threshold for both: the bootstrap is unreliable exactly where the data
    are too few). ``top_errors``: how many of the most confident wrong faces the report
    lists per task."""

    resamples: int = stats.DEFAULT_RESAMPLES
    level: float = stats.LEVEL
    seed: int = 0
    bins: int = 15
    groups: tuple[str, ...] = ()
    calibrate: bool = False
    calibrate_fraction: float = 0.5
    gap_min_faces: int = 5
    small_n: int = stats.SMALL_N
    top_errors: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.calibrate_fraction < 1.0:
            raise EvaluationError(
                f"calibrate_fraction must be between 0 and 1 (the share of subjects the "
                f"temperature is fitted on), got {self.calibrate_fraction}"
            )
        if self.bins < 1:
            raise EvaluationError(f"bins must be >= 1, got {self.bins}")
        if self.small_n < 0 or self.top_errors < 0:
            raise EvaluationError(
                f"small_n and top_errors must be >= 0, got {self.small_n}, {self.top_errors}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["groups"] = list(self.groups)
        return out


@dataclass
class FaceTable:
    """One row per evaluated face.

    ``frame``: ``subject`` (the person; ignored unless ``has_subjects``), ``age`` and
    ``gender`` (true class indices in ``labels``; -1 unknown), one column per grouping
    column, and anything else to carry into faces.csv (path, box, detection status).
    ``probs``: the network's raw probabilities per task (N x classes of ``model_labels``).
    ``age_model``: the true ages in ``model_labels`` (what a temperature is fitted on);
    None when ``labels`` is the model's own set. ``files``: the image file of each face, so
    report.md can show thumbnails of the worst errors (None: file names only)."""

    frame: pd.DataFrame
    probs: Mapping[str, np.ndarray]
    model_labels: LabelSet
    labels: LabelSet
    has_subjects: bool = True
    age_model: np.ndarray | None = None
    files: Sequence[str] | None = None
    _matrix: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.frame)
        for task in TASKS:
            if task not in self.probs:
                raise EvaluationError(f"the model has no {task} head: nothing to evaluate")
            shape = np.shape(self.probs[task])
            width = self.model_labels.num_classes[task]
            if shape != (n, width):
                raise EvaluationError(
                    f"{task} probabilities {shape} do not match {n} faces x {width} classes"
                )
        if self.files is not None and len(self.files) != n:
            raise EvaluationError(f"{len(self.files)} image files for {n} faces")
        matrix = reporting_matrix(self.model_labels, self.labels)
        self._matrix = None if matrix is None else np.asarray(matrix, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.frame)

    def probabilities(self, task: str, temperature: float = 1.0) -> np.ndarray:
        """``task``'s probabilities in the evaluation's label set after ``temperature``
        (applied to the network's own classes, then summed into coarser ones)."""
        probs = apply_temperature(np.asarray(self.probs[task], dtype=np.float64), temperature)
        if task == "age" and self._matrix is not None:
            probs = probs @ self._matrix
        return probs

    def targets(self, task: str) -> np.ndarray:
        return self.frame[task].to_numpy(dtype=np.int64)

    def model_targets(self, task: str) -> np.ndarray:
        """True classes in the model's label set (-1 where that set cannot say)."""
        if task == "age" and self.age_model is not None:
            return np.asarray(self.age_model, dtype=np.int64)
        if task == "age" and self._matrix is not None:
            raise EvaluationError(
                "the true ages in the model's label set are needed to fit its age temperature"
            )
        return self.targets(task)

    @property
    def clusters(self) -> np.ndarray | None:
        """The bootstrap units: subjects, or None (faces) when the set names no one."""
        return self.frame["subject"].astype(str).to_numpy() if self.has_subjects else None

    @property
    def subjects(self) -> np.ndarray:
        """A person per face: the subject, or the row itself when none is known."""
        if self.has_subjects:
            return self.frame["subject"].astype(str).to_numpy()
        return np.array([f"face {i}" for i in range(len(self.frame))])


@dataclass
class Evaluation:
    """``report`` (report.json's content, JSON-ready up to NaN), ``faces`` (faces.csv),
    ``fitted`` (the temperatures fitted with ``calibrate=true``, a calibration record) and
    ``files`` (each face's image file, for the thumbnails of report.md; None: none)."""

    report: dict[str, Any]
    faces: pd.DataFrame
    fitted: dict[str, Any] | None = None
    files: list[str] | None = None


def _subset(values: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[mask]


def _flagged(block: dict[str, Any], s: EvalSettings) -> dict[str, Any]:
    """``block`` with ``small``: True when it rests on fewer than ``small_n`` units."""
    return {**block, "small": bool(block.get("units", 0) < s.small_n)}


def _interval(correct: np.ndarray, clusters: np.ndarray | None, s: EvalSettings) -> dict:
    block = stats.interval_dict(
        correct.astype(np.float64), clusters, s.resamples, s.level, s.seed, s.small_n
    )
    return _flagged(block, s)


def _group_block(
    task: str,
    metric: str,
    by: str,
    correct: np.ndarray,
    groups: pd.Series,
    clusters: np.ndarray | None,
    s: EvalSettings,
) -> dict[str, Any]:
    """One ``groups`` entry of the report: per-group accuracy and the largest gap."""
    table = stats.group_accuracy(correct, groups, clusters, s.resamples, s.level, s.seed, s.small_n)
    rows = [
        _flagged(
            {
                "group": str(r.group),
                "count": int(r.count),
                "subjects": None if r.subjects is None or pd.isna(r.subjects) else int(r.subjects),
                "value": float(r.value),
                "low": float(r.low),
                "high": float(r.high),
                "units": int(r.units),
                "method": str(r.method),
            },
            s,
        )
        for r in table.itertuples(index=False)
    ]
    gap = stats.largest_gap(
        correct,
        groups,
        clusters,
        s.resamples,
        s.level,
        s.seed,
        min_count=s.gap_min_faces,
        small_n=s.small_n,
    )
    if gap is not None:
        gap = {
            "high_group": str(gap["high_group"]),
            "low_group": str(gap["low_group"]),
            "value": float(gap["value"]),
            "low": float(gap["low"]),
            "high": float(gap["high"]),
            "method": str(gap["method"]),
        }
    return {"task": task, "metric": metric, "by": by, "rows": rows, "gap": gap}


def _categorical(codes: np.ndarray, names: Sequence[str]) -> pd.Series:
    return pd.Series(pd.Categorical.from_codes(codes, categories=list(names)))


def _text_groups(values: pd.Series) -> pd.Series:
    """A grouping column as text; empty and missing cells are None (left out of every
    group, as :func:`agegender.stats.group_accuracy` leaves out missing groups)."""

    def cell(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        text = str(value).strip()
        return text or None

    return pd.Series([cell(v) for v in values], dtype=object)


def split_subjects(subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the faces whose subject falls in the fitting share: training's own subject
    split (:func:`agegender.data.splits.split_users`: the sorted subjects shuffled by
    ``seed``) with ``round(fraction x subjects)`` of them, at least one, and at least one
    left to evaluate on."""
    names = sorted(set(subjects.tolist()))
    if len(names) < 2:
        raise EvaluationError(
            f"calibrate=true needs faces of at least two subjects (one share to fit the "
            f"temperature on, another to evaluate it), this set has {len(names)}"
        )
    count = min(max(1, round(fraction * len(names))), len(names) - 1)
    _, fitting = split_users(names, count / len(names), seed)
    return np.isin(subjects, sorted(fitting))


def _calibration(
    table: FaceTable, stored: Mapping[str, float], s: EvalSettings, describe: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The report's calibration block per task, and the fitted record (calibrate=true)."""
    out: dict[str, Any] = {}
    everyone = np.ones(len(table), dtype=bool)
    fit_rows = split_subjects(table.subjects, s.calibrate_fraction, s.seed) if s.calibrate else None
    fitted: dict[str, float] = {}
    fitted_faces: dict[str, int] = {}
    for task in TASKS:
        targets = table.targets(task)
        raw = table.probabilities(task)
        block: dict[str, Any] = {"temperature": None, "ece_calibrated": None}
        block["bins_calibrated"] = None
        if fit_rows is not None:
            evaluate_on = ~fit_rows
            model_targets = np.where(fit_rows, table.model_targets(task), IGNORE_INDEX)
            n_fit = int((model_targets >= 0).sum())
            n_eval = int((targets[evaluate_on] >= 0).sum())
            subjects_fit = len(set(table.subjects[fit_rows & (model_targets >= 0)].tolist()))
            held = evaluate_on & (targets >= 0)
            subjects_eval = len(set(table.subjects[held].tolist()))
            block["evaluated_on"] = (
                f"held-out subjects: {n_eval} faces of {subjects_eval} subjects (the "
                f"temperature was fitted on {n_fit} faces of {subjects_fit} other subjects, "
                f"{s.calibrate_fraction:.0%} of the subjects, seed {s.seed})"
            )
            if n_fit:
                temperature = fit_temperature(np.asarray(table.probs[task]), model_targets)
                fitted[task], fitted_faces[task] = temperature, n_fit
            else:
                temperature = None
                block["evaluated_on"] += (
                    f"; no {task} temperature: no face of the fitting share has a {task} "
                    f"label the model's label set {table.model_labels.name} reads"
                )
        else:
            evaluate_on = everyone
            temperature = stored.get(task)
            n_eval = int((targets >= 0).sum())
            block["evaluated_on"] = f"all {n_eval} labelled faces" + (
                f"; calibrated = the model's stored temperature ({describe})"
                if temperature is not None
                else ""
            )
        block["faces"] = n_eval
        block["ece"] = expected_calibration_error(raw[evaluate_on], targets[evaluate_on], s.bins)
        block["bins"] = reliability_bins(raw[evaluate_on], targets[evaluate_on], s.bins)
        if temperature is not None:
            scaled = table.probabilities(task, temperature)[evaluate_on]
            block["temperature"] = float(temperature)
            block["ece_calibrated"] = expected_calibration_error(
                scaled, targets[evaluate_on], s.bins
            )
            block["bins_calibrated"] = reliability_bins(scaled, targets[evaluate_on], s.bins)
        if task in stored:
            block["stored_temperature"] = float(stored[task])
        out[task] = block
    record = None
    if fitted:
        record = calibration_record(
            fitted,
            f"{describe}, {s.calibrate_fraction:g} of its subjects (seed {s.seed})",
            fitted_faces,
        )
    return out, record


def _abstention(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    curve = stats.accuracy_coverage(confidence, correct.astype(np.float64))
    at: dict[str, float | None] = {}
    for coverage in COVERAGES:
        reached = curve[curve["coverage"] >= coverage - 1e-12]
        at[f"{coverage:.1f}"] = float(reached["accuracy"].iloc[0]) if len(reached) else None
    return {
        "aurc": stats.selective_risk_area(curve),
        "at_coverage": at,
        "faces": int(len(correct)),
        "curve": [
            {
                "threshold": float(r.threshold),
                "coverage": float(r.coverage),
                "accuracy": float(r.accuracy),
            }
            for r in curve.itertuples(index=False)
        ],
    }


def predictions(table: FaceTable, temperatures: Mapping[str, float]) -> dict[str, np.ndarray]:
    """The evaluation's label-set probabilities per task as the model reports them (its
    stored temperatures applied, then the label-set mapping): what predict.py would print."""
    return {task: table.probabilities(task, temperatures.get(task, 1.0)) for task in TASKS}


def build_report(
    table: FaceTable,
    settings: EvalSettings | None = None,
    model: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Everything ``report.json`` holds, computed from ``table``.

    ``model`` / ``dataset``: the descriptions the runner knows (checkpoint, backend, source,
    fold, error counts ...), completed here with what the table says (label sets, faces,
    subjects, bootstrap unit). ``calibration``: the model's stored temperature record (its
    temperatures give the reported predictions, as predict.py applies them)."""
    s = settings or EvalSettings()
    if not len(table):
        raise EvaluationError("no face to evaluate (every row failed or the set is empty)")
    missing = [g for g in s.groups if g not in table.frame.columns]
    if missing:
        raise EvaluationError(f"groups: no column {missing} in the face table")
    stored = temperatures_of(calibration)
    probs = predictions(table, stored)
    labels = table.labels
    clusters = table.clusters
    true_age, true_gender = table.targets("age"), table.targets("gender")
    pred_age, pred_gender = (probs[t].argmax(axis=1) for t in TASKS)
    has_age, has_gender = true_age >= 0, true_gender >= 0
    age_exact = pred_age == true_age
    age_1off = np.abs(pred_age - true_age) <= 1
    gender_right = pred_gender == true_gender

    overall = {
        "age_exact": _interval(age_exact[has_age], _subset(clusters, has_age), s),
        "age_1off": _interval(age_1off[has_age], _subset(clusters, has_age), s),
        "gender": _interval(gender_right[has_gender], _subset(clusters, has_gender), s),
    }

    blocks = []
    both = has_age & has_gender
    age_groups = _categorical(np.where(both, true_age, -1), labels.age)
    gender_groups = _categorical(np.where(both, true_gender, -1), labels.genders)
    blocks.append(
        _group_block(
            "gender", "accuracy", "age", gender_right[both],
            age_groups[both].reset_index(drop=True), _subset(clusters, both), s,
        )
    )  # fmt: skip
    for metric, correct in (("exact", age_exact), ("1off", age_1off)):
        blocks.append(
            _group_block(
                "age", metric, "gender", correct[both],
                gender_groups[both].reset_index(drop=True), _subset(clusters, both), s,
            )
        )  # fmt: skip
    for column in s.groups:
        values = _text_groups(table.frame[column])
        for task, metric, correct, mask in (
            ("age", "exact", age_exact, has_age),
            ("age", "1off", age_1off, has_age),
            ("gender", "accuracy", gender_right, has_gender),
        ):
            blocks.append(
                _group_block(
                    task, metric, column, correct[mask],
                    values[mask].reset_index(drop=True), _subset(clusters, mask), s,
                )
            )  # fmt: skip

    minors = stats.minors_rates(
        np.where(has_age, true_age, IGNORE_INDEX).astype(np.int64),
        pred_age.astype(np.int64),
        labels,
        clusters,
        s.resamples,
        s.level,
        s.seed,
        small_n=s.small_n,
    )
    minors = {k: v if "undefined" in v else _flagged(v, s) for k, v in minors.items()}
    describe = str((dataset or {}).get("description") or (dataset or {}).get("source") or "")
    calibration_block, fitted = _calibration(table, stored, s, describe)
    abstention = {
        "age": _abstention(probs["age"].max(axis=1)[has_age], age_exact[has_age]),
        "gender": _abstention(probs["gender"].max(axis=1)[has_gender], gender_right[has_gender]),
    }

    subjects = int(table.frame["subject"].nunique()) if table.has_subjects else None
    report = {
        "format": FORMAT,
        "model": {
            "checkpoint": None,
            "description": "",
            "backend": "",
            "detector": "",
            **dict(model or {}),
            "model_label_set": table.model_labels.to_config(),
            "calibration": None if calibration is None else dict(calibration),
        },
        "dataset": {
            "kind": "",
            "source": "",
            "fold": None,
            "faces_without_detection": 0,
            "errors": 0,
            **dict(dataset or {}),
            "faces": len(table),
            "subjects": subjects,
            "bootstrap_unit": "subject" if table.has_subjects else "image",
            "label_set": labels.to_config(),
            "label_set_name": labels.name,
            "age_labelled": int(has_age.sum()),
            "gender_labelled": int(has_gender.sum()),
        },
        "settings": s.to_dict(),
        "overall": overall,
        "groups": blocks,
        "minors": minors,
        "calibration": calibration_block,
        "abstention": abstention,
        "confident_errors": {
            task: confident_errors(table, probs[task], task, s.top_errors) for task in TASKS
        },
    }
    report["warnings"] = small_set_warnings(report, s)
    faces = faces_frame(table, probs)
    files = None if table.files is None else [str(f) for f in table.files]
    return Evaluation(report=report, faces=faces, fitted=fitted, files=files)


def confident_errors(table: FaceTable, probs: np.ndarray, task: str, top: int) -> dict[str, Any]:
    """The wrong answers the model was surest of, for ``task``: ``{"faces"`` (labelled),
    ``"wrong"``, ``"confident_at"`` (:data:`CONFIDENT`), ``"wrong_confident"`` (wrong at or
    above it), ``"top"``: the ``top`` wrong faces by the probability of the (wrong) class
    predicted, most confident first, each ``{"face"`` (its row of faces.csv, from 0),
    ``"path"``, ``"subject"``, ``"true"``, ``"predicted"``, ``"probability"`` (of the
    predicted class), ``"true_probability"`` (of the true class)``}``.

    An accuracy says how often a model fails, not on what: a list of files to open shows
    the failures themselves (a mislabelled row, a profile face, a child called an adult
    at 97 %); these are also the errors a confidence threshold cannot catch."""
    targets = table.targets(task)
    names = table.labels.class_names[task]
    labelled = targets >= 0
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = labelled & (predicted != targets)
    order = np.flatnonzero(wrong)
    order = order[np.argsort(-confidence[order], kind="stable")][:top]
    paths = table.frame["path"] if "path" in table.frame.columns else None
    subjects = table.subjects if table.has_subjects else None
    listed = [
        {
            "face": int(i),
            "path": "" if paths is None else str(paths.iloc[i]),
            "subject": None if subjects is None else str(subjects[i]),
            "true": names[targets[i]],
            "predicted": names[predicted[i]],
            "probability": float(confidence[i]),
            "true_probability": float(probs[i, targets[i]]),
        }
        for i in order
    ]
    return {
        "faces": int(labelled.sum()),
        "wrong": int(wrong.sum()),
        "confident_at": CONFIDENT,
        "wrong_confident": int((wrong & (confidence >= CONFIDENT)).sum()),
        "top": listed,
    }


_METRICS = {"exact": "exact accuracy", "1off": "1-off accuracy", "accuracy": "accuracy"}


def counted(number: int, word: str) -> str:
    """``1 face``, ``4 faces``: a count in words."""
    return f"{number} {word}{'' if number == 1 else 's'}"


def _size(block: Mapping[str, Any], unit: str) -> str:
    """``4 faces of 4 subjects`` / ``4 faces`` (a figure's n in words)."""
    faces = counted(block.get("n", block.get("count")), "face")
    if unit == "subject":
        return f"{faces} of {counted(block.get('units'), 'subject')}"
    return faces


def small_set_warnings(report: Mapping[str, Any], s: EvalSettings) -> list[str]:
    """Plain sentences on what the report cannot conclude: the whole set, or a figure, a
    group or a rate resting on fewer than ``small_n`` units. Their intervals are already
    exact and wide, but a reader skims the values: a "0.000 of 4 faces" reads as "never"
    unless something says that four faces cannot show it."""
    unit = report["dataset"]["bootstrap_unit"]
    units = f"{s.small_n} {'subjects' if unit == 'subject' else 'faces'}"
    overall = report["overall"]
    out = []
    largest = max(overall.values(), key=lambda b: b.get("n", 0))
    if largest.get("small"):
        data = report["dataset"]
        whole = f"{data['faces']} faces" + (
            f" of {data['subjects']} subjects" if data.get("subjects") is not None else ""
        )
        out.append(
            f"Too few faces to conclude: the set has {whole}, under {units}. Every interval "
            "is exact (Clopper-Pearson) and wide, every group is smaller still, and no "
            "difference between groups here can be told from chance: evaluate on more "
            "faces before drawing conclusions."
        )
        return out
    for key, words in (
        ("age_exact", "age exact accuracy"),
        ("age_1off", "age 1-off accuracy"),
        ("gender", "gender accuracy"),
    ):
        if overall[key].get("small"):
            out.append(
                f"Too few faces to conclude on {words}: it rests on "
                f"{_size(overall[key], unit)}, under {units}."
            )
    for block in report["groups"]:
        small = [r for r in block["rows"] if r.get("small")]
        if small:
            listed = ", ".join(f"{r['group']} ({_size(r, unit)})" for r in small)
            out.append(
                f"{block['task']} {_METRICS[block['metric']]} by {block['by']}: too few "
                f"faces to conclude for {listed}, each under {units}."
            )
    for key, words in (
        ("minors_called_adults", "minors called adults"),
        ("adults_called_minors", "adults called minors"),
    ):
        value = report["minors"][key]
        if value.get("small"):
            out.append(
                f"Too few faces to conclude on {words}: it rests on {_size(value, unit)}, "
                f"under {units}."
            )
    return out


def faces_frame(table: FaceTable, probs: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """faces.csv: the table's own columns, then true and predicted classes by name and
    every class probability (the evaluation's label set, the model's stored temperature)."""
    labels = table.labels
    names = labels.class_names
    frame = table.frame.copy()
    if not table.has_subjects:
        frame["subject"] = None
    out = {}
    for task in TASKS:
        truth = table.targets(task)
        best = probs[task].argmax(axis=1)
        out[f"true_{task}"] = [names[task][t] if t >= 0 else "" for t in truth]
        out[f"pred_{task}"] = [names[task][b] for b in best]
        out[f"{task}_prob"] = probs[task].max(axis=1)
        for i, name in enumerate(names[task]):
            out[f"{task}_p_{name}"] = probs[task][:, i]
    for task in TASKS:
        truth = table.targets(task)
        correct = probs[task].argmax(axis=1) == truth
        out[f"{task}_correct"] = np.where(truth >= 0, correct.astype(float), np.nan)
    extra = pd.DataFrame(out, index=frame.index)
    keep = [c for c in frame.columns if c not in ("age", "gender")]
    return pd.concat([frame[keep], extra], axis=1)
