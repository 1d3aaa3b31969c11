"""The evaluation's files: report.json (strict JSON), report.md, faces.csv and the figures.

Everything is written from :class:`agegender.evaluation.report.Evaluation`, so the files
agree with each other and with what the command prints (:func:`headline_rows`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agegender.evaluation.report import TASKS, Evaluation

#: Figures written beside report.md.
FIGURES: tuple[str, ...] = (
    "reliability_age.png",
    "reliability_gender.png",
    "coverage.png",
    "groups.png",
)
_METRIC_WORDS = {"exact": "exact accuracy", "1off": "1-off accuracy", "accuracy": "accuracy"}
#: How many rows of each kind (skipped, duplicate, unreadable) the console lists; report.json
#: lists them all.
CONSOLE_ROWS = 20


def plain(value: Any) -> Any:
    """``value`` as strict-JSON data: NaN and infinities become null, numpy scalars and
    arrays plain numbers and lists, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _interval(block: Mapping[str, Any]) -> str:
    return f"[{_num(block.get('low'))}, {_num(block.get('high'))}]"


def headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(task, metric, value, 95% interval, n) for the three overall figures."""
    overall = report["overall"]
    rows = []
    for key, task, metric in (
        ("age_exact", "age", "exact"),
        ("age_1off", "age", "1-off"),
        ("gender", "gender", "accuracy"),
    ):
        block = overall[key]
        rows.append((task, metric, _num(block["value"]), _interval(block), str(block["n"])))
    return rows


def headline_text(report: Mapping[str, Any]) -> str:
    """The headline as an aligned text table (what the command prints)."""
    level = f"{report['settings']['level'] * 100:g}% interval"
    rows = [("task", "metric", "value", level, "n"), *headline_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def summary_line(report: Mapping[str, Any], output: str | Path) -> str:
    """The command's last stdout line: faces evaluated and how many rows were left out, by
    kind (:func:`problem_lines` says which)."""
    data = report["dataset"]
    return (
        f"evaluate: {data['faces']} faces ({data['faces_without_detection']} without a "
        f"detection, {data['errors']} unreadable, {data.get('skipped_rows', 0)} rows skipped, "
        f"{data.get('duplicate_rows', 0)} duplicate rows counted once) -> "
        f"{Path(output) / 'report.md'}"
    )


def problem_lines(dataset: Mapping[str, Any], limit: int = CONSOLE_ROWS) -> list[str]:
    """Every row the evaluation left out, for the console: ``skipped row: file:line: why``,
    ``duplicate row: file:line: ...``, ``unreadable: file:line: path: why``; at most
    ``limit`` of each kind, then ``... and N more ... (all in report.json)``. A count alone
    sends the user to report.json to find which lines of the file to fix."""
    unreadable = [
        f"{e['where']}: {e['path']}: {e['error']}"
        if e.get("where")
        else f"{e['path']}: {e['error']}"
        for e in dataset.get("error_list") or []
    ]
    kinds = (
        ("skipped row", "skipped rows", list(dataset.get("skipped_row_list") or [])),
        ("duplicate row", "duplicate rows", list(dataset.get("duplicate_row_list") or [])),
        ("unreadable", "unreadable images", unreadable),
    )
    lines = []
    for label, plural, items in kinds:
        lines += [f"{label}: {item}" for item in items[:limit]]
        if len(items) > limit:
            lines.append(f"... and {len(items) - limit} more {plural} (all in report.json)")
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _gap_line(gap: Mapping[str, Any] | None) -> str:
    if gap is None:
        return "Largest gap: fewer than two groups with enough faces (gap_min_faces)."
    low, high = gap["low"], gap["high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        verdict = "no interval"
    elif low > 0 or high < 0:
        verdict = "the interval excludes 0"
    else:
        verdict = "the interval includes 0: not distinguishable from chance here"
    return (
        f"Largest gap: {gap['high_group']} minus {gap['low_group']} = {_num(gap['value'])} "
        f"{_interval(gap)} ({verdict})."
    )


def report_markdown(report: Mapping[str, Any]) -> str:
    """report.md: settings, headline, groups, minors, calibration, abstention, problems."""
    model, data, s = report["model"], report["dataset"], report["settings"]
    level = f"{s['level'] * 100:g}%"
    unit = data["bootstrap_unit"]
    lines = [
        f"# Evaluation: {model['description']}",
        "",
        f"- Model: {model['description']} (backend {model['backend']}, detector "
        f"{model['detector']}, label set {model['model_label_set'].get('name')}, "
        + (
            f"stored temperatures {model['calibration']['temperature']})"
            if model.get("calibration")
            else "no stored calibration)"
        ),
        f"- Dataset: {data.get('description') or data['source']}: {data['faces']} faces"
        + (f" of {data['subjects']} subjects" if data.get("subjects") is not None else "")
        + f" (age labelled {data.get('age_labelled')}, gender labelled "
        f"{data.get('gender_labelled')}); label set {data['label_set_name']}",
        f"- Faces without a detection (whole image used): {data['faces_without_detection']}; "
        f"unreadable images: {data['errors']}; rows skipped: {data.get('skipped_rows', 0)}; "
        f"duplicate rows counted once: {data.get('duplicate_rows', 0)}",
        f"- Intervals: {level} percentile bootstrap, {s['resamples']} resamples of "
        + (
            "subjects (all faces of a drawn subject together)"
            if unit == "subject"
            else "images (the set names no subjects: too narrow if people repeat)"
        )
        + f", seed {s['seed']}; ECE with {s['bins']} bins",
        f"- Settings: groups {s['groups'] or 'none'}, calibrate {s['calibrate']}"
        + (f" (fraction {s['calibrate_fraction']:g})" if s["calibrate"] else ""),
        "",
        "## Headline",
        "",
        *_table(
            ["task", "metric", "value", f"{level} interval", "n"],
            [list(r) for r in headline_rows(report)],
        ),  # fmt: skip
        "",
        "## Groups",
        "",
    ]
    for block in report["groups"]:
        title = f"{block['task']} {_METRIC_WORDS[block['metric']]} by {block['by']}"
        lines += [f"### {title}", ""]
        rows = [
            [
                r["group"],
                str(r["count"]),
                "" if r["subjects"] is None else str(r["subjects"]),
                _num(r["value"]),
                _interval(r),
            ]
            for r in block["rows"]
        ]
        lines += _table(["group", "faces", "subjects", "value", f"{level} interval"], rows)
        lines += ["", _gap_line(block["gap"]), ""]
    lines += ["## Minors and adults", ""]
    for key, words in (
        ("minors_called_adults", "Minors (true class wholly under 18) called adults"),
        ("adults_called_minors", "Adults (true class wholly 18 or over) called minors"),
    ):
        value = report["minors"][key]
        if "undefined" in value:
            lines.append(f"- {words}: undefined ({value['undefined']})")
        else:
            lines.append(
                f"- {words}: {_num(value['value'])} {_interval(value)} of {value['n']} faces"
            )
    lines += ["", "## Calibration", ""]
    rows = []
    for task in TASKS:
        c = report["calibration"][task]
        rows.append(
            [
                task,
                _num(c["ece"]),
                _num(c["temperature"]),
                _num(c["ece_calibrated"]),
                c["evaluated_on"],
            ]
        )
    lines += _table(["task", "ECE", "temperature", "ECE after", "evaluated on"], rows)
    if report.get("calibrated_checkpoint"):
        lines += ["", f"Calibrated copy of the checkpoint: `{report['calibrated_checkpoint']}`"]
    lines += ["", "![age](reliability_age.png) ![gender](reliability_gender.png)", ""]
    lines += ["## Abstention (accuracy of the most confident faces)", ""]
    rows = []
    for task in TASKS:
        a = report["abstention"][task]
        at = a["at_coverage"]
        rows.append([task, _num(a["aurc"]), *(_num(at[k]) for k in ("1.0", "0.9", "0.8", "0.5"))])
    lines += _table(["task", "AURC", "100%", "90%", "80%", "50%"], rows)
    lines += ["", "![coverage](coverage.png)", "", "![groups](groups.png)", ""]
    notes = list(data.get("notes") or [])
    errors = data.get("error_list") or []
    skipped = data.get("skipped_row_list") or []
    duplicates = data.get("duplicate_row_list") or []
    if notes or errors or skipped or duplicates:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- {line}" for line in problem_lines(data, limit=50)]
        lines.append("")
    return "\n".join(lines)


def _plots(report: Mapping[str, Any], output: Path) -> None:
    import matplotlib  # deferred: ~0.3 s, only for the figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in TASKS:
        c = report["calibration"][task]
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        for bins, label in ((c["bins"], "raw"), (c["bins_calibrated"], "temperature-scaled")):
            if not bins:
                continue
            used = [b for b in bins if b["count"]]
            ax.plot(
                [b["confidence"] for b in used],
                [b["accuracy"] for b in used],
                marker="o",
                label=f"{label} (ECE {_num(c['ece'] if label == 'raw' else c['ece_calibrated'])})",
            )
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class)", ylabel="accuracy")
        ax.set_title(f"{task}: reliability")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(output / f"reliability_{task}.png", dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for task in TASKS:
        curve = report["abstention"][task]["curve"]
        ax.step(
            [p["coverage"] for p in curve],
            [p["accuracy"] for p in curve],
            where="post",
            label=f"{task} (AURC {_num(report['abstention'][task]['aurc'])})",
        )
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="coverage (share of faces kept)",
           ylabel="accuracy of kept faces", title="accuracy vs coverage")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "coverage.png", dpi=100)
    plt.close(fig)

    blocks = report["groups"]
    fig, axes = plt.subplots(len(blocks), 1, figsize=(7, 1.2 + 0.45 * sum(
        max(len(b["rows"]), 1) for b in blocks)), squeeze=False)  # fmt: skip
    for ax, block in zip(axes[:, 0], blocks, strict=True):
        rows = block["rows"]
        y = np.arange(len(rows))
        values = np.array([np.nan if r["value"] is None else r["value"] for r in rows], float)
        lows = np.array([np.nan if r["low"] is None else r["low"] for r in rows], float)
        highs = np.array([np.nan if r["high"] is None else r["high"] for r in rows], float)
        ax.errorbar(values, y, xerr=[values - lows, highs - values], fmt="o", capsize=3)
        ax.set_yticks(y, [f"{r['group']} (n={r['count']})" for r in rows], fontsize=7)
        ax.set_xlim(-0.02, 1.02)
        ax.margins(y=0.3)
        ax.set_title(
            f"{block['task']} {_METRIC_WORDS[block['metric']]} by {block['by']}", fontsize=8
        )
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("accuracy (95% interval)")
    fig.tight_layout()
    fig.savefig(output / "groups.png", dpi=100)
    plt.close(fig)


def write_outputs(evaluation: Evaluation, output: str | Path) -> dict[str, Path]:
    """report.json, report.md, faces.csv and :data:`FIGURES` into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    data = plain(evaluation.report)
    paths = {
        "report.json": output / "report.json",
        "report.md": output / "report.md",
        "faces.csv": output / "faces.csv",
    }
    paths["report.json"].write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    paths["report.md"].write_text(report_markdown(data), encoding="utf-8")
    evaluation.faces.to_csv(paths["faces.csv"], index=False, float_format="%.6g")
    _plots(data, output)
    paths.update({name: output / name for name in FIGURES})
    return paths
