"""Cross-validation and sweep results: from a Hydra multirun directory to the paper's table.

Every train.py job writes ``metrics.json`` in its run directory; :class:`CVResultsCallback`
adds ``job_status.json`` (completed/failed, the error, the objective) and re-aggregates the
sweep directory after each job, so the table exists even when a fold fails and Hydra then
aborts the multirun. The same aggregation runs standalone::

    python -m agegender.crossval SWEEP_DIR

Outputs in SWEEP_DIR: ``cv_results.csv`` (fractions, one row per fold, then per setting the
mean and std, a 95% t-interval of the mean over the folds and a bootstrap interval from the
per-face predictions), ``cv_groups.csv`` (accuracy per true age class and per gender, pooled
over the folds), ``cv_results.md`` (percentages, the shape of Levi & Hassner's Table 3/4, and
the per-group table), ``cv_results.png`` (per-fold bars with mean +- std, the bootstrap
interval and the paper's figures, ``PUBLISHED``) and ``sweep_results.csv`` (one row per job:
its overrides, objective and status; this is the table of an Optuna sweep).

Two intervals, because they answer different questions. The t-interval (``ci_low``,
``ci_high``) treats the k fold accuracies as k draws: with 5 folds it is wide, and it says
how much another split of the subjects could move the mean. The bootstrap (``boot_low``,
``boot_high``) resamples the subjects of each fold with replacement (every face of a drawn
subject, so the interval is honest about the many photos per person in Adience), keeps the
folds as they are, and averages the fold accuracies per draw: it says how much the mean
depends on which people happen to be in the test folds. It needs each run's
``test_predictions.csv``; runs from before that file get NaN rows and a note.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from scipy import stats as scipy_stats

from agegender.errors import AgeGenderError, handled, translated
from agegender.fileio import atomic_write
from agegender.labels import ADIENCE8, GENDERS, IGNORE_INDEX, load_label_set
from agegender.stats import DEFAULT_RESAMPLES
from agegender.stats import LEVEL as STATS_LEVEL

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: (metric key suffix, column title) in the paper's column order.
METRICS: tuple[tuple[str, str], ...] = (
    ("age_acc", "Age exact"),
    ("age_acc_1off", "Age 1-off"),
    ("gender_acc", "Gender"),
)
#: (metrics.json prefix, protocol title): single centre crop and 10-crop over-sampling.
PROTOCOLS: tuple[tuple[str, str], ...] = (("test", "single crop"), ("test_10crop", "over-sampled"))
METRIC_COLUMNS: tuple[str, ...] = tuple(f"{p}/{m}" for p, _ in PROTOCOLS for m, _ in METRICS)
#: The published figures, drawn as reference lines in ``cv_results.png``: mean accuracy (%)
#: over the 5 Adience folds in Levi & Hassner, "Age and Gender Classification using
#: Convolutional Neural Networks", CVPR 2015 AMFG workshop, Table 3 (gender) and Table 4
#: (age exact and 1-off); ``test`` is their single centre crop, ``test_10crop`` over-sampling.
PUBLISHED: dict[str, float] = {
    "test/age_acc": 49.5,
    "test/age_acc_1off": 84.6,
    "test/gender_acc": 85.9,
    "test_10crop/age_acc": 50.7,
    "test_10crop/age_acc_1off": 84.7,
    "test_10crop/gender_acc": 86.8,
}
PUBLISHED_LABEL = "Levi & Hassner 2015"

STATUS_FILE = "job_status.json"
METRICS_FILE = "metrics.json"
FOLD_KEY = "data.fold"
#: agegender.sweep.STUDY_FILE: present in the directory of an Optuna sweep.
OPTUNA_STUDY_FILE = "optuna_study.yaml"
#: Per-face test predictions of a train.py run (columns ``PREDICTION_COLUMNS``, then
#: ``p_age_0..p_age_{C-1}``, ``p_gender_0``, ``p_gender_1``; a one-task network lacks the
#: other task's; docs/contracts.md); the bootstrap reads them.
PREDICTIONS_FILE = "test_predictions.csv"
PREDICTION_COLUMNS: tuple[str, ...] = ("stage", "row", "subject", "age", "gender")

#: Interval settings, those of every evaluation interval (agegender.stats): the coverage,
#: and the resamples and seed of the within-fold subject bootstrap (fixed: the same sweep
#: always gives the same table).
LEVEL = STATS_LEVEL
RESAMPLES = DEFAULT_RESAMPLES
SEED = 0
#: Summary rows per setting in ``cv_results.csv``, after the fold rows.
SUMMARY_ROWS: tuple[str, ...] = ("mean", "std", "ci_low", "ci_high", "boot_low", "boot_high")
#: The note (the bootstrap rows' status, and a line in the md) for folds without predictions.
NO_PREDICTIONS = "no per-face predictions: runs before this version"
#: ``cv_groups.csv`` columns.
GROUP_COLUMNS: tuple[str, ...] = (
    "setting",
    "protocol",
    "task",
    "metric",
    "by",
    "group",
    "count",
    "subjects",
    "value",
    "low",
    "high",
)
#: (metric, grouped by the true class of): gender accuracy per age class, age per gender.
GROUPINGS: tuple[tuple[str, str], ...] = (
    ("gender_acc", "age"),
    ("age_acc", "gender"),
    ("age_acc_1off", "gender"),
)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        return {"_unreadable": f"{path.name}: {exc}"}


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories are the subfolders holding Hydra's saved ``.hydra/overrides.yaml``."""
    dirs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    dirs = [d for d in dirs if d != sweep_dir]

    def order(d: Path) -> tuple[int, str]:
        rel = d.relative_to(sweep_dir).as_posix()
        return (int(rel), rel) if rel.isdigit() else (sys.maxsize, rel)

    return sorted(dirs, key=order)


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of the sweep: job, fold, setting, overrides, status, error, objective,
    and every metric of ``METRIC_COLUMNS`` (NaN where the job wrote none)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
        params = dict(o.split("=", 1) for o in overrides if "=" in o)
        fold = params.get(FOLD_KEY)
        if fold is None and (job_dir / ".hydra" / "config.yaml").exists():
            fold = OmegaConf.select(
                OmegaConf.load(job_dir / ".hydra" / "config.yaml"), FOLD_KEY, default=None
            )
        setting = " ".join(o for o in overrides if not o.startswith(f"{FOLD_KEY}="))
        labels, age_classes = _job_label_set(job_dir)
        status_info = _read_json(job_dir / STATUS_FILE) or {}
        metrics = _read_json(job_dir / METRICS_FILE)
        if status_info.get("status") == "pruned":
            status, error = "pruned", ""
        elif status_info.get("status") == "failed":
            status, error = "failed", status_info.get("error", "")
        elif metrics is None:
            status, error = "failed", f"no {METRICS_FILE} (job killed or still running)"
        elif "_unreadable" in metrics:
            status, error = "failed", metrics["_unreadable"]
        else:
            missing = [c for c in METRIC_COLUMNS if c.startswith("test/") and c not in metrics]
            # a finished job without test figures (test=false, a sweep trial) is no fold result
            status, error = ("ok", "") if not missing else ("untested", "")
        row: dict[str, Any] = {
            "job": job_dir.relative_to(sweep_dir).as_posix(),
            "fold": int(fold) if fold is not None and str(fold).isdigit() else None,
            "fold_set": any(o.startswith(f"{FOLD_KEY}=") for o in overrides),
            "setting": setting,
            "overrides": " ".join(overrides),
            "status": status,
            "error": error,
            "objective": status_info.get("objective"),
            "labels": labels,
            "age_classes": age_classes,
            "predictions": str(job_dir / PREDICTIONS_FILE)
            if (job_dir / PREDICTIONS_FILE).is_file()
            else "",
        }
        for col in METRIC_COLUMNS:
            value = (metrics or {}).get(col)
            row[col] = float(value) if isinstance(value, int | float) else math.nan
        rows.append(row)
    columns = ["job", "fold", "fold_set", "setting", "overrides", "status", "error", "objective"]
    extra = ["labels", "age_classes", "predictions"]
    return pd.DataFrame(rows, columns=[*columns, *extra, *METRIC_COLUMNS])


def _job_label_set(job_dir: Path) -> tuple[str, tuple[str, ...] | None]:
    """The job's label set as ``name (class, class, ...)`` and its age class names in logit
    order (the order of ``p_age_*`` in its predictions), from Hydra's saved config; jobs
    without one, or from before label sets, are adience8. An unreadable set: no names."""
    config_path = job_dir / ".hydra" / "config.yaml"
    if not config_path.exists():
        return ADIENCE8.describe(), ADIENCE8.age
    node = OmegaConf.select(OmegaConf.load(config_path), "labels", default=None)
    try:
        label_set = load_label_set(node)
    except ValueError as exc:  # a config a later version cannot read: say so, do not fail
        return f"unreadable label set ({exc})", None
    return label_set.describe(), label_set.age


def setting_labels(runs: pd.DataFrame) -> dict[str, str]:
    """setting -> its label set description (the first job's: one setting, one set)."""
    if "labels" not in runs:
        return {}
    return dict(zip(runs["setting"], runs["labels"], strict=True))


def _is_adience8(description: str | None) -> bool:
    return description is None or description == ADIENCE8.describe()


# -- per-face predictions and the within-fold subject bootstrap ---------------------------


def read_predictions(path: str | Path, age_classes: int | None = None) -> pd.DataFrame:
    """One run's per-face outcomes from its ``test_predictions.csv``.

    Returns columns ``stage``, ``subject``, ``age``, ``gender`` (true classes,
    ``IGNORE_INDEX`` = unknown) and ``age_acc``, ``age_acc_1off``, ``gender_acc`` (1.0 right,
    0.0 wrong, NaN where that task's true class is unknown, which then counts nowhere, as in
    training's metrics, or where the network has no head for it: no ``p_`` columns), the
    prediction being the most probable class. A face without a subject is its own cluster
    (``row <n>``): resampling it alone is the honest default when nobody recorded who it
    shows. ``age_classes``: the run's class count, checked against the ``p_age_*`` columns.
    Raises ValueError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"stage": str, "subject": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from exc
    if df.empty:
        raise ValueError(f"{path}: no faces in it")
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    probs = {t: [c for c in df.columns if c.startswith(f"p_{t}_")] for t in ("age", "gender")}
    if not any(probs.values()):
        missing.append("p_age_0.. or p_gender_0..")
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    sizes = {"age": len(probs["age"]) or age_classes, "gender": len(GENDERS)}
    for task, columns in probs.items():
        expected = [f"p_{task}_{i}" for i in range(sizes[task] or 0)]
        if columns and columns != expected:
            raise ValueError(f"{path}: {task} probabilities must be {', '.join(expected)}")
    if probs["age"] and age_classes is not None and len(probs["age"]) != age_classes:
        raise ValueError(
            f"{path}: {len(probs['age'])} age probabilities, the run's label set has {age_classes}"
        )
    numeric = ["age", "gender", *probs["age"], *probs["gender"]]
    values = df[numeric].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1) | df["stage"].isna()
    if bad.any():
        raise ValueError(
            f"{path}: row {int(bad.to_numpy().argmax()) + 2} of the file has an empty or "
            "non-numeric class or probability, or no stage"
        )
    true = {t: values[t].to_numpy() for t in ("age", "gender")}
    for task, classes in true.items():
        top = sizes[task] - 1 if sizes[task] else math.inf
        wrong = (classes != np.round(classes)) | (classes < IGNORE_INDEX) | (classes > top)
        if wrong.any():
            raise ValueError(
                f"{path}: {task} must be a class index (0..{top}) or {IGNORE_INDEX} "
                f"(unknown), got {classes[wrong][0]:g}"
            )
    right: dict[str, np.ndarray] = {}
    for task in ("age", "gender"):
        known = true[task] >= 0
        if not probs[task]:  # a one-task network: no figure for the other task
            right[task] = np.full(len(df), np.nan)
            right[f"{task}_1off"] = np.full(len(df), np.nan)
            continue
        distance = np.abs(values[probs[task]].to_numpy().argmax(axis=1) - true[task])
        right[task] = np.where(known, distance == 0, np.nan)
        right[f"{task}_1off"] = np.where(known, distance <= 1, np.nan)
    subject = df["subject"].where(df["subject"].notna(), "row " + df["row"].astype(str))
    return pd.DataFrame(
        {
            "stage": df["stage"].str.strip(),
            "subject": subject,
            "age": true["age"].astype(int),
            "gender": true["gender"].astype(int),
            "age_acc": right["age"],
            "age_acc_1off": right["age_1off"],
            "gender_acc": right["gender"],
        }
    )


def load_predictions(runs: pd.DataFrame) -> dict[str, pd.DataFrame | str]:
    """job -> its per-face outcomes (:func:`read_predictions`), or why there are none
    (``NO_PREDICTIONS``, or the problem with the file), for the finished fold jobs."""
    out: dict[str, pd.DataFrame | str] = {}
    finished = runs[runs["fold"].notna() & runs["fold_set"] & (runs["status"] == "ok")]
    for _, r in finished.iterrows():
        path = r.get("predictions") or ""
        if not path:
            out[r["job"]] = NO_PREDICTIONS
            continue
        classes = r.get("age_classes")
        try:
            out[r["job"]] = read_predictions(path, len(classes) if classes else None)
        except ValueError as exc:  # one bad file costs its intervals, never the table
            out[r["job"]] = str(exc)
    return out


class _Resampled:
    """The per-face outcomes of some folds and, per fold, the bootstrap draws as weights:
    ``weights[f][b, s]`` = how often subject ``s`` of fold ``f`` was drawn in resample ``b``
    (a multinomial count: drawing the fold's S subjects with replacement). Folds are
    resampled independently: each keeps its subject count, as the CV protocol does.
    A statistic is then a matrix product (every resample at once), not a Python loop.

    Written here rather than with ``agegender.stats.bootstrap_interval``: that resamples one
    pool of clusters, while a CV mean needs each fold resampled on its own (stratified)."""

    def __init__(self, folds: list[pd.DataFrame], resamples: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.folds: list[dict[str, np.ndarray]] = []
        self.weights: list[np.ndarray] = []
        for faces in folds:
            codes, subjects = pd.factorize(faces["subject"], sort=True)
            n = len(subjects)
            columns = ["stage", "age", "gender", "age_acc", "age_acc_1off", "gender_acc"]
            self.folds.append({c: faces[c].to_numpy() for c in columns} | {"code": codes})
            draws = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) if n else None
            self.weights.append(draws if n else np.zeros((resamples, 0)))

    @staticmethod
    def sums(
        fold: dict[str, np.ndarray],
        subjects: int,
        stage: str,
        metric: str,
        by: str | None = None,
        cls: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per subject: right answers and labelled faces for ``metric`` on ``stage`` (only
        faces whose true ``by`` class is ``cls``, when ``by`` is given)."""
        values = fold[metric]
        keep = (fold["stage"] == stage) & ~np.isnan(values)
        if by is not None:
            keep &= fold[by] == cls
        codes = fold["code"][keep]
        right = np.bincount(codes, values[keep], minlength=subjects)
        return right, np.bincount(codes, minlength=subjects).astype(float)

    def fold_mean(self, stage: str, metric: str) -> np.ndarray | None:
        """Per resample the mean over the folds of each fold's accuracy (None when a fold
        has no labelled face for it: no k-fold mean exists)."""
        accuracies = []
        for fold, weights in zip(self.folds, self.weights, strict=True):
            right, total = self.sums(fold, weights.shape[1], stage, metric)
            if not total.sum():
                return None
            with np.errstate(invalid="ignore", divide="ignore"):
                accuracies.append((weights @ right) / (weights @ total))
        return np.mean(accuracies, axis=0) if accuracies else None

    def pooled(self, stage: str, metric: str, by: str, cls: int) -> dict[str, Any] | None:
        """Accuracy over the faces of all folds whose true ``by`` class is ``cls``: count,
        subjects (per fold: Adience folds hold disjoint people), value, and per resample the
        pooled accuracy (``draws``). None when no such face is labelled."""
        right_b = total_b = 0.0
        right = total = subjects = 0.0
        for fold, weights in zip(self.folds, self.weights, strict=True):
            r, t = self.sums(fold, weights.shape[1], stage, metric, by, cls)
            right_b, total_b = right_b + weights @ r, total_b + weights @ t
            right, total, subjects = right + r.sum(), total + t.sum(), subjects + (t > 0).sum()
        if not total:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = right_b / total_b
        found = {"count": int(total), "subjects": int(subjects), "value": right / total}
        return found | {"draws": draws}


def _percentile_interval(draws: np.ndarray | None, level: float) -> tuple[float, float]:
    """The percentile interval of the resampled statistic; resamples where it is undefined
    (a group no drawn subject belongs to) are left out, as a bootstrap of that group would."""
    if draws is None:
        return math.nan, math.nan
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def t_interval(values: pd.Series, level: float = LEVEL) -> tuple[float, float]:
    """``mean +- t_{(1+level)/2, k-1} * std / sqrt(k)`` over the k values that are not NaN:
    the interval of a mean of k fold accuracies (NaN below two folds)."""
    values = values.dropna()
    k = len(values)
    if k < 2:
        return math.nan, math.nan
    half = scipy_stats.t.ppf((1 + level) / 2, k - 1) * values.std() / math.sqrt(k)
    return float(values.mean() - half), float(values.mean() + half)


def _settings_folds(
    runs: pd.DataFrame,
) -> list[tuple[Any, pd.DataFrame, pd.DataFrame]]:
    """(setting, its fold jobs sorted by fold, those that finished) per setting."""
    folds = runs[runs["fold"].notna() & runs["fold_set"]]
    if folds.empty:
        raise ValueError(f"no job of this sweep sets {FOLD_KEY}: not a cross-validation run")
    out = []
    for setting, group in folds.groupby("setting", sort=False, dropna=False):
        group = group.sort_values("fold")
        out.append((setting, group, group[group["status"] == "ok"]))
    return out


def _bootstrap_note(ok: pd.DataFrame, predictions: dict[str, pd.DataFrame | str]) -> str:
    """Why the bootstrap rows of a setting are NaN ("" when every finished fold has its
    per-face predictions)."""
    reasons = {
        int(fold): found
        for fold, job in zip(ok["fold"], ok["job"], strict=True)
        if isinstance(found := predictions.get(job, NO_PREDICTIONS), str)
    }
    lacking = [f"fold {fold}" for fold, reason in reasons.items() if reason == NO_PREDICTIONS]
    notes = [f"{NO_PREDICTIONS} ({', '.join(lacking)})"] if lacking else []
    notes += [f"fold {f}: {reason}" for f, reason in reasons.items() if reason != NO_PREDICTIONS]
    return "; ".join(notes)


def cv_table(
    runs: pd.DataFrame,
    predictions: dict[str, pd.DataFrame | str] | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Fold rows, then per setting (``SUMMARY_ROWS``): ``mean`` and ``std`` (sample std)
    over the folds that finished, ``ci_low``/``ci_high`` (:func:`t_interval` of the mean),
    ``boot_low``/``boot_high`` (percentile interval of the k-fold mean when the subjects of
    each fold are resampled with replacement, from the runs' per-face predictions; NaN with
    the reason in ``error`` when a finished fold has none). Failed folds stay in the table with
    their status and no numbers. ``predictions``: :func:`load_predictions` (read if None)."""
    if predictions is None:
        predictions = load_predictions(runs)
    out = []
    for setting, group, ok in _settings_folds(runs):
        for _, r in group.iterrows():
            out.append(
                {
                    "setting": setting,
                    "row": f"fold {int(r['fold'])}",
                    "status": r["status"],
                    "error": r["error"],
                    **{c: r[c] for c in METRIC_COLUMNS},
                }
            )
        n_ok, n_all = len(ok), len(group)
        excluded = "" if n_ok == n_all else " (failed folds excluded)"
        summary_status = f"{n_ok}/{n_all} folds{excluded}"
        rows: dict[str, dict[str, float]] = {name: {} for name in SUMMARY_ROWS}
        for col in METRIC_COLUMNS:
            values = ok[col].astype(float)
            rows["mean"][col] = float(values.mean()) if n_ok else math.nan
            rows["std"][col] = float(values.std()) if n_ok else math.nan
            rows["ci_low"][col], rows["ci_high"][col] = t_interval(values, level)
        note = _bootstrap_note(ok, predictions) if n_ok else ""
        resampled = None
        if n_ok and not note:
            resampled = _Resampled([predictions[j] for j in ok["job"]], resamples, seed)
        for col in METRIC_COLUMNS:
            stage, metric = col.split("/")
            draws = resampled.fold_mean(stage, metric) if resampled else None
            rows["boot_low"][col], rows["boot_high"][col] = _percentile_interval(draws, level)
        boot_status = f"{summary_status}, {resamples} resamples of the subjects of each fold"
        for name in SUMMARY_ROWS:
            boot = name.startswith("boot")
            out.append(
                {
                    "setting": setting,
                    "row": name,
                    "status": boot_status if boot else summary_status,
                    "error": note if boot else "",
                    **rows[name],
                }
            )
    return pd.DataFrame(out, columns=["setting", "row", "status", "error", *METRIC_COLUMNS])


def cv_groups(
    runs: pd.DataFrame,
    predictions: dict[str, pd.DataFrame | str] | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Where a setting fails (``GROUP_COLUMNS``): gender accuracy per true age class, age
    exact and 1-off per true gender (``GROUPINGS``), per protocol, over the faces of all
    finished folds that have per-face predictions (pooled: a class with few faces per fold
    gets one figure, not five noisy ones); ``count`` labelled faces, ``subjects`` people,
    ``low``/``high`` the percentile interval when the subjects of each fold are resampled
    (the same draws as :func:`cv_table`'s). Age classes are named in the label set's order;
    groups without a labelled face are left out."""
    if predictions is None:
        predictions = load_predictions(runs)
    out = []
    for setting, _, ok in _settings_folds(runs):
        jobs = [j for j in ok["job"] if isinstance(predictions.get(j), pd.DataFrame)]
        if not jobs:
            continue
        resampled = _Resampled([predictions[j] for j in jobs], resamples, seed)
        classes = ok["age_classes"].iloc[0] if "age_classes" in ok else None
        n_age = max((int(f["age"].max()) for f in resampled.folds if len(f["age"])), default=-1) + 1
        names = {
            "age": tuple(classes) if classes else tuple(f"class {i}" for i in range(n_age)),
            "gender": GENDERS,
        }
        for stage, _ in PROTOCOLS:
            for metric, by in GROUPINGS:
                for cls, group in enumerate(names[by]):
                    found = resampled.pooled(stage, metric, by, cls)
                    if found is None:
                        continue
                    low, high = _percentile_interval(found.pop("draws"), level)
                    out.append(
                        {
                            "setting": setting,
                            "protocol": stage,
                            "task": metric.split("_")[0],
                            "metric": metric,
                            "by": by,
                            "group": group,
                            **found,
                            "low": low,
                            "high": high,
                        }
                    )
    return pd.DataFrame(out, columns=list(GROUP_COLUMNS))


def _pct(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _interval(low: float, high: float) -> str:
    return f"[{_pct(low)}, {_pct(high)}]" if _pct(low) and _pct(high) else ""


#: (metric, by) -> its title in the md's per-group table.
_GROUP_TITLES = {
    ("gender_acc", "age"): ("Gender", "true age"),
    ("age_acc", "gender"): ("Age exact", "true gender"),
    ("age_acc_1off", "gender"): ("Age 1-off", "true gender"),
}


def _groups_markdown(groups: pd.DataFrame) -> list[str]:
    protocols = dict(PROTOCOLS)
    lines = [
        "**Per group** (the faces of all folds with per-face predictions, pooled; in brackets "
        f"the {LEVEL:.0%} bootstrap interval, subjects resampled within each fold)",
        "",
        "| Protocol | Accuracy | By | Group | Faces | Subjects | % [interval] |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, g in groups.iterrows():
        metric, by = _GROUP_TITLES[(g["metric"], g["by"])]
        cell = f"{_pct(g['value'])} {_interval(g['low'], g['high'])}".strip()
        lines.append(
            f"| {protocols.get(g['protocol'], g['protocol'])} | {metric} | {by} | {g['group']} "
            f"| {int(g['count'])} | {int(g['subjects'])} | {cell} |"
        )
    return lines


def cv_markdown(
    table: pd.DataFrame, labels: dict[str, str] | None = None, groups: pd.DataFrame | None = None
) -> str:
    """Percentages in the column layout of the paper's tables: the folds, then
    ``mean ± std [t-interval]`` and the bootstrap interval (or why there is none), then,
    with ``groups`` (:func:`cv_groups`), the per-group table. ``labels``: setting -> label
    set (:func:`setting_labels`); a set other than adience8 is named under the setting's
    heading (its age figures are over those classes)."""
    header = ["Fold"] + [f"{title} ({proto})" for _, proto in PROTOCOLS for _, title in METRICS]
    table = table.assign(setting=table["setting"].astype(object).fillna(""))  # CSV: "" -> NaN
    if groups is not None:
        groups = groups.assign(setting=groups["setting"].astype(object).fillna(""))
    blocks = []
    for setting, group in table.groupby("setting", sort=False, dropna=False):
        described = (labels or {}).get(setting)
        lines = [
            f"### {setting}" if setting else "",
            "" if _is_adience8(described) else f"Age classes: {described}\n",
            "| " + " | ".join(header) + " | Status |",
            "|" + "---|" * (len(header) + 1),
        ]
        rows = group.set_index("row")
        for name, r in rows.iterrows():
            if name in SUMMARY_ROWS:
                continue
            cells = [_pct(r[c]) for c in METRIC_COLUMNS]
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {status} |")
        summary = rows.reindex(list(SUMMARY_ROWS))
        cells = []
        for c in METRIC_COLUMNS:
            mean, std = _pct(summary.loc["mean", c]), _pct(summary.loc["std", c])
            cell = f"**{mean} ± {std}**" if std else f"**{mean}**" if mean else ""
            ci = _interval(summary.loc["ci_low", c], summary.loc["ci_high", c])
            cells.append(f"{cell} {ci}".strip())
        title = f"mean ± std [{LEVEL:.0%} t-interval]"
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {summary.loc['mean', 'status']} |")
        boot = [
            _interval(summary.loc["boot_low", c], summary.loc["boot_high", c])
            for c in METRIC_COLUMNS
        ]
        if any(boot):
            title = f"{LEVEL:.0%} bootstrap (subjects)"
            status = summary.loc["boot_low", "status"]
            lines.append(f"| {title} | " + " | ".join(boot) + f" | {status} |")
        note = summary.loc["boot_low", "error"]
        if isinstance(note, str) and note:
            lines.append(f"\nBootstrap interval: {note}.")
        if groups is not None and (groups["setting"] == setting).any():
            lines.append("\n" + "\n".join(_groups_markdown(groups[groups["setting"] == setting])))
        blocks.append("\n".join(line for line in lines if line))
    return "\n\n".join(blocks) + "\n"


def plot_cv(
    table: pd.DataFrame, path: str | Path | BinaryIO, labels: dict[str, str] | None = None
) -> Figure:
    """Per-fold bars with the mean as a line and +-std as a band, and in a slot after the
    folds the mean with its bootstrap interval as an error bar (rows ``boot_low``/
    ``boot_high``; none without per-face predictions), one panel per metric and
    protocol (``METRIC_COLUMNS``), one row per setting (the overrides besides the fold, in
    full as the row's title); the paper's figure (``PUBLISHED``) as a dashed red line, only
    for settings on adience8 (``labels``: setting -> label set; others name their set in
    the title: the paper's figures are not comparable to coarser classes).

    Saves the figure as PNG to ``path`` (a file name or an open binary file) and returns it
    (closed: for inspection, not display)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {f"{p}/{m}": f"{title} ({proto})" for p, proto in PROTOCOLS for m, title in METRICS}
    table = table.assign(setting=table["setting"].astype(object).fillna(""))  # CSV: "" -> NaN
    settings = list(dict.fromkeys(table["setting"]))
    width = 3 * len(METRIC_COLUMNS)
    fig = plt.figure(figsize=(width, 3.4 * len(settings)), layout="constrained")
    subfigs = fig.subfigures(len(settings), 1, squeeze=False)[:, 0]
    for subfig, setting in zip(subfigs, settings, strict=True):
        name = setting if isinstance(setting, str) and setting else "(no overrides)"
        described = (labels or {}).get(setting)
        title = f"setting: {name}"
        if not _is_adience8(described):
            title += f"; age classes: {described}"
        subfig.suptitle(textwrap.fill(title, width=12 * width), fontsize=10)
        axes = subfig.subplots(1, len(METRIC_COLUMNS), sharey=True, squeeze=False)[0]
        group = table[table["setting"] == setting].set_index("row")
        fold_rows = [r for r in group.index if r.startswith("fold")]
        for ax, col in zip(axes, METRIC_COLUMNS, strict=True):
            values = [100 * group.loc[r, col] for r in fold_rows]
            ax.bar(range(len(fold_rows)), values, color="tab:blue", label="per fold")
            ax.set_xticks(range(len(fold_rows)), [r.split()[1] for r in fold_rows])
            for x, (r, value) in enumerate(zip(fold_rows, values, strict=True)):
                if math.isnan(value):  # a failed fold: say so instead of an empty slot
                    ax.text(x, 30, group.loc[r, "status"], rotation=90, ha="center", fontsize=7)
            mean, std = 100 * group.loc["mean", col], 100 * group.loc["std", col]
            if not math.isnan(mean):
                std_text = "" if math.isnan(std) else f" ± {std:.1f}"
                ax.axhline(mean, color="black", lw=1, label=f"mean: {mean:.1f}{std_text}")
                if not math.isnan(std):
                    ax.axhspan(mean - std, mean + std, color="gray", alpha=0.3)
            low, high = (
                100 * group.loc[row, col] if row in group.index else math.nan
                for row in ("boot_low", "boot_high")
            )
            if not (math.isnan(mean) or math.isnan(low) or math.isnan(high)):
                # the mean with its bootstrap interval, in a slot of its own after the folds
                ax.errorbar(
                    [len(fold_rows)],
                    [mean],
                    # clipped: a zero-width interval can miss the mean by a rounding error
                    yerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]],
                    fmt="o",
                    color="black",
                    ms=4,
                    capsize=4,
                    label=f"mean, {LEVEL:.0%} bootstrap: [{low:.1f}, {high:.1f}]",
                )
                ticks = [*ax.get_xticks(), len(fold_rows)]
                ax.set_xticks(ticks, [*(r.split()[1] for r in fold_rows), "mean"])
            if col in PUBLISHED and _is_adience8(described):
                ref = PUBLISHED[col]
                ax.axhline(ref, color="tab:red", ls="--", lw=1.5, label=f"{PUBLISHED_LABEL}: {ref}")
            ax.set_title(titles[col], fontsize=9)
            ax.set_ylim(0, 100)
            ax.set_xlabel("fold", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.legend(loc="lower center", fontsize=7, framealpha=0.9)
        axes[0].set_ylabel("accuracy (%)", fontsize=9)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return fig


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per job (an Optuna trial, a grid point, a fold): parameters as columns."""
    params = [dict(o.split("=", 1) for o in ov.split() if "=" in o) for ov in runs["overrides"]]
    table = pd.concat([runs[["job"]], pd.DataFrame(params, index=runs.index)], axis=1)
    job_status = runs["status"].map(lambda s: s if s in ("failed", "pruned") else "completed")
    rest = runs[["objective", "error", *METRIC_COLUMNS]].assign(status=job_status)
    return pd.concat([table, rest[["objective", "status", "error", *METRIC_COLUMNS]]], axis=1)


class NoJobsError(AgeGenderError, ValueError):
    """A sweep directory without jobs (a multirun that ran none: a complete study)."""


def aggregate(sweep_dir: str | Path) -> pd.DataFrame | None:
    """Write the sweep table always, and the CV tables (``cv_results.*``, ``cv_groups.csv``)
    + plot when the sweep sets data.fold.

    Returns the CV table (None for a sweep without folds)."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    if runs.empty:
        raise NoJobsError(f"{sweep_dir} holds no Hydra job directories (.hydra/overrides.yaml)")
    # An Optuna sweep's sweeper writes sweep_results.csv from its study (agegender.sweep).
    if not (sweep_dir / OPTUNA_STUDY_FILE).exists():
        sweep_csv = sweep_table(runs).to_csv(index=False).encode()
        atomic_write(sweep_dir / "sweep_results.csv", lambda fh: fh.write(sweep_csv))
    # A CV table only for sweeps that vary the fold on the command line or in the sweeper's
    # params (experiment=cv): an Optuna sweep on one named fold gets the sweep table only.
    folds = runs.loc[runs["fold_set"] & runs["fold"].notna(), "fold"]
    if folds.nunique() < 2:
        return None
    predictions = load_predictions(runs)
    table = cv_table(runs, predictions)
    groups = cv_groups(runs, predictions)
    labels = setting_labels(runs)
    cv_csv, cv_md = table.to_csv(index=False).encode(), cv_markdown(table, labels, groups).encode()
    groups_csv = groups.to_csv(index=False).encode()
    atomic_write(sweep_dir / "cv_results.csv", lambda fh: fh.write(cv_csv))
    atomic_write(sweep_dir / "cv_groups.csv", lambda fh: fh.write(groups_csv))
    atomic_write(sweep_dir / "cv_results.md", lambda fh: fh.write(cv_md))
    atomic_write(sweep_dir / "cv_results.png", lambda fh: plot_cv(table, fh, labels))
    return table


def _objective(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class CVResultsCallback(Callback):
    """Hydra callback (``hydra.callbacks`` in train.yaml): status per job, tables per sweep."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        out_dir = Path(config.hydra.runtime.output_dir)
        failed = job_return.status == JobStatus.FAILED
        info: dict[str, Any] = {"status": "failed" if failed else "completed"}
        exc = job_return._return_value if failed else None
        if type(exc).__name__ == "TrialPruned":  # an Optuna trial stopped by its pruner
            info = {"status": "pruned", "reason": str(exc)}
        elif failed:
            info["error"] = f"{type(exc).__name__}: {exc}".strip()
            info["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
        else:
            info["objective"] = _objective(job_return._return_value)
        try:
            status = json.dumps(info, indent=2).encode()
            atomic_write(out_dir / STATUS_FILE, lambda fh: fh.write(status))
            if config.hydra.mode == RunMode.MULTIRUN:
                aggregate(config.hydra.sweep.dir)
        except Exception:  # never turn a finished job into a failed one over a report
            log.exception("could not write the cross-validation summary")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            table = aggregate(config.hydra.sweep.dir)
        except NoJobsError:  # e.g. rerunning a sweep whose study already holds n_trials
            log.info("no job ran in this multirun: no cross-validation summary to write")
            return
        except Exception:
            log.exception("could not write the cross-validation summary")
            return
        if table is not None:
            md = Path(config.hydra.sweep.dir) / "cv_results.md"
            log.info("cross-validation results:\n%s", md.read_text())
            log.info("written to %s", md)


@handled("agegender.crossval")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.crossval",
        description="Aggregate a train.py multirun directory into the paper-style CV table.",
    )
    parser.add_argument("sweep_dir", type=Path, help="Hydra sweep directory (multirun/...)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    with translated(ValueError):  # a sweep directory aggregate cannot read
        table = aggregate(args.sweep_dir)
    if table is None:
        print((args.sweep_dir / "sweep_results.csv").read_text())
        print(f"no data.fold in this sweep; wrote {args.sweep_dir / 'sweep_results.csv'}")
        return 0
    print((args.sweep_dir / "cv_results.md").read_text())
    written = "cv_results.csv, cv_groups.csv, cv_results.md, cv_results.png"
    print(f"wrote {written} in {args.sweep_dir}")
    failed = table[table["row"].str.startswith("fold") & (table["status"] != "ok")]
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
