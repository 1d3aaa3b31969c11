"""Cross-validation and sweep results: from a Hydra multirun directory to the paper's table.

Every train.py job writes ``metrics.json`` in its run directory; :class:`CVResultsCallback`
adds ``job_status.json`` (completed/failed, the error, the objective) and re-aggregates the
sweep directory after each job, so the table exists even when a fold fails and Hydra then
aborts the multirun. The same aggregation runs standalone::

    python -m agegender.crossval SWEEP_DIR

Outputs in SWEEP_DIR: ``cv_results.csv`` (fractions, one row per fold, then mean and std rows
per setting), ``cv_results.md`` (percentages, the shape of Levi & Hassner's Table 3/4),
``cv_results.png`` (per-fold bars with mean +- std and the paper's figures, ``PUBLISHED``)
and ``sweep_results.csv`` (one row per job: its overrides, objective and status; this is the
table of an Optuna sweep).
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

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from agegender.fileio import atomic_write
from agegender.labels import ADIENCE8, load_label_set

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
        labels = _job_labels(job_dir)
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
        }
        for col in METRIC_COLUMNS:
            value = (metrics or {}).get(col)
            row[col] = float(value) if isinstance(value, int | float) else math.nan
        rows.append(row)
    columns = ["job", "fold", "fold_set", "setting", "overrides", "status", "error", "objective"]
    return pd.DataFrame(rows, columns=[*columns, "labels", *METRIC_COLUMNS])


def _job_labels(job_dir: Path) -> str:
    """The job's label set as ``name (class, class, ...)`` (Hydra's saved config; jobs
    without one, or from before label sets, are adience8)."""
    config_path = job_dir / ".hydra" / "config.yaml"
    if not config_path.exists():
        return ADIENCE8.describe()
    node = OmegaConf.select(OmegaConf.load(config_path), "labels", default=None)
    try:
        return load_label_set(node).describe()
    except ValueError as exc:  # a config a later version cannot read: say so, do not fail
        return f"unreadable label set ({exc})"


def setting_labels(runs: pd.DataFrame) -> dict[str, str]:
    """setting -> its label set description (the first job's: one setting, one set)."""
    if "labels" not in runs:
        return {}
    return dict(zip(runs["setting"], runs["labels"], strict=True))


def _is_adience8(description: str | None) -> bool:
    return description is None or description == ADIENCE8.describe()


def cv_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Fold rows, then ``mean`` and ``std`` rows (sample std over the folds that finished),
    per setting. Failed folds stay in the table with their status and no numbers."""
    folds = runs[runs["fold"].notna() & runs["fold_set"]]
    if folds.empty:
        raise ValueError(f"no job of this sweep sets {FOLD_KEY}: not a cross-validation run")
    out = []
    for setting, group in folds.groupby("setting", sort=False, dropna=False):
        group = group.sort_values("fold")
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
        ok = group[group["status"] == "ok"]
        n_ok, n_all = len(ok), len(group)
        summary_status = f"{n_ok}/{n_all} folds" + (
            "" if n_ok == n_all else " (failed folds excluded)"
        )
        for stat in ("mean", "std"):
            values = ok[list(METRIC_COLUMNS)].agg(stat) if n_ok else pd.Series(dtype=float)
            out.append(
                {
                    "setting": setting,
                    "row": stat,
                    "status": summary_status,
                    "error": "",
                    **{c: float(values.get(c, math.nan)) for c in METRIC_COLUMNS},
                }
            )
    return pd.DataFrame(out, columns=["setting", "row", "status", "error", *METRIC_COLUMNS])


def _pct(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def cv_markdown(table: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """Percentages, ``mean +- std`` last, in the column layout of the paper's tables.
    ``labels``: setting -> label set (:func:`setting_labels`); a set other than adience8 is
    named under the setting's heading (its age figures are over those classes)."""
    header = ["Fold"] + [f"{title} ({proto})" for _, proto in PROTOCOLS for _, title in METRICS]
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
            if name in ("mean", "std"):
                continue
            cells = [_pct(r[c]) for c in METRIC_COLUMNS]
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {status} |")
        mean, std = rows.loc["mean"], rows.loc["std"]
        cells = [
            f"**{_pct(mean[c])} ± {_pct(std[c])}**" if _pct(mean[c]) else "" for c in METRIC_COLUMNS
        ]
        lines.append("| mean ± std | " + " | ".join(cells) + f" | {mean['status']} |")
        blocks.append("\n".join(line for line in lines if line))
    return "\n\n".join(blocks) + "\n"


def plot_cv(
    table: pd.DataFrame, path: str | Path | BinaryIO, labels: dict[str, str] | None = None
) -> Figure:
    """Per-fold bars with the mean as a line and +-std as a band, one panel per metric and
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


class NoJobsError(ValueError):
    """A sweep directory without jobs (a multirun that ran none: a complete study)."""


def aggregate(sweep_dir: str | Path) -> pd.DataFrame | None:
    """Write the sweep table always, and the CV table + plot when the sweep sets data.fold.

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
    table = cv_table(runs)
    labels = setting_labels(runs)
    cv_csv, cv_md = table.to_csv(index=False).encode(), cv_markdown(table, labels).encode()
    atomic_write(sweep_dir / "cv_results.csv", lambda fh: fh.write(cv_csv))
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
            log.info("cross-validation results:\n%s", cv_markdown(table))
            log.info("written to %s", Path(config.hydra.sweep.dir) / "cv_results.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agegender.crossval",
        description="Aggregate a train.py multirun directory into the paper-style CV table.",
    )
    parser.add_argument("sweep_dir", type=Path, help="Hydra sweep directory (multirun/...)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    try:
        table = aggregate(args.sweep_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if table is None:
        print((args.sweep_dir / "sweep_results.csv").read_text())
        print(f"no data.fold in this sweep; wrote {args.sweep_dir / 'sweep_results.csv'}")
        return 0
    print(cv_markdown(table))
    print(f"wrote cv_results.csv, cv_results.md, cv_results.png in {args.sweep_dir}")
    failed = table[table["row"].str.startswith("fold") & (table["status"] != "ok")]
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
