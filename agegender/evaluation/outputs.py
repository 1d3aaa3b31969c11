"""The evaluation's files: report.json (strict JSON), report.md, faces.csv and the figures.

Everything is written from :class:`agegender.evaluation.report.Evaluation`, so the files
agree with each other and with what the command prints (:func:`headline_rows`). Settings are
written in words ("calibration: off"), every interval names its method, and report.md opens
with what the report cannot conclude and the errors the model was surest of, with
thumbnails of their faces (``errors/``) when the images are at hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agegender.calibration import TEMPERATURE_RANGE
from agegender.evaluation.report import TASKS, Evaluation, counted
from agegender.images import ImageLoadError, load_image

#: Figures written beside report.md.
FIGURES: tuple[str, ...] = (
    "reliability_age.png",
    "reliability_gender.png",
    "coverage.png",
    "groups.png",
)
#: Folder (in the output) of the thumbnails of the most confident errors.
ERRORS_DIR = "errors"
#: Longer side of a thumbnail, in pixels.
THUMBNAIL = 96
#: Tick label size of the figures (matplotlib's 10 is small once a figure is scaled down).
TICKS = 11
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


def _units(report: Mapping[str, Any]) -> str:
    """What an interval counts as independent: subjects, or faces without a subject column."""
    return "subjects" if report["dataset"]["bootstrap_unit"] == "subject" else "faces"


def _unit(report: Mapping[str, Any]) -> str:
    return _units(report)[:-1]


def method_words(
    block: Mapping[str, Any],
    report: Mapping[str, Any],
    extremes: tuple[str, str] = ("all wrong", "all right"),
) -> str:
    """How ``block``'s interval was made, and why, in words: ``bootstrap over 412
    subjects``, ``exact: 4 subjects, under 30, too few to conclude``, ``exact: all right``
    (``extremes`` name a value of 0 and of 1), ``exact: the bootstrap had no spread``, or
    ``from the two groups' intervals (MOVER)`` for a gap. A report from before the methods
    were recorded: ``bootstrap`` (the only method then)."""
    method = block.get("method", "bootstrap" if "units" not in block else None)
    units, unit = block.get("units"), _unit(report)
    small_n = report["settings"].get("small_n")
    if method == "bootstrap":
        return "bootstrap" if units is None else f"bootstrap over {counted(units, unit)}"
    if method == "mover":
        return "from the two groups' intervals (MOVER)"
    if method != "exact":
        return "n/a"
    if units is not None and small_n is not None and units < small_n:
        return f"exact: {counted(units, unit)}, under {small_n}, too few to conclude"
    if block.get("value") in (0.0, 1.0):
        return f"exact: {extremes[int(block['value'])]}"
    return "exact: the bootstrap had no spread"


def headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(task, metric, value, 95% interval, n, interval method) for the three overall
    figures."""
    overall = report["overall"]
    rows = []
    for key, task, metric in (
        ("age_exact", "age", "exact"),
        ("age_1off", "age", "1-off"),
        ("gender", "gender", "accuracy"),
    ):
        block = overall[key]
        rows.append(
            (
                task,
                metric,
                _num(block["value"]),
                _interval(block),
                str(block["n"]),
                method_words(block, report),
            )
        )
    return rows


def headline_text(report: Mapping[str, Any]) -> str:
    """The headline as an aligned text table (what the command prints)."""
    level = f"{report['settings']['level'] * 100:g}% interval"
    rows = [("task", "metric", "value", level, "n", "interval method"), *headline_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


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


def _gap_line(gap: Mapping[str, Any] | None, report: Mapping[str, Any]) -> str:
    if gap is None:
        return (
            "Largest gap: none stated, fewer than two groups have "
            f"{report['settings']['gap_min_faces']} faces or more."
        )
    low, high = gap["low"], gap["high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        verdict = "no interval"
    elif low > 0 or high < 0:
        verdict = "the interval excludes 0"
    else:
        verdict = "the interval includes 0: not distinguishable from chance here"
    how = "paired bootstrap" if gap.get("method", "bootstrap") == "bootstrap" else None
    return (
        f"Largest gap: {gap['high_group']} minus {gap['low_group']} = {_num(gap['value'])} "
        f"{_interval(gap)}, {how or method_words(gap, report)} ({verdict})."
    )


def _settings_words(report: Mapping[str, Any]) -> str:
    """The settings as a reader says them, not as Python prints them."""
    s = report["settings"]
    groups = ", ".join(s["groups"]) if s["groups"] else "none"
    if s["calibrate"]:
        calibration = (
            f"on (a temperature per task fitted on {s['calibrate_fraction']:.0%} of the "
            f"subjects, seed {s['seed']}; ECE reported on the others)"
        )
    else:
        calibration = "off (predictions carry the model's stored temperature, if it has one)"
    words = [
        f"extra groups: {groups}",
        f"calibration: {calibration}",
        f"confidence bins: {s['bins']}",
        f"largest gap: groups of {s['gap_min_faces']} faces or more",
    ]
    if s.get("small_n") is not None:
        words.append(f"too few to conclude: under {s['small_n']} {_units(report)}")
    return "; ".join(words)


def _stored_words(model: Mapping[str, Any]) -> str:
    record = model.get("calibration")
    if not record:
        return "no stored calibration"
    temps = record.get("temperature") or {}
    return "stored temperature " + ", ".join(f"{t} T = {_num(v)}" for t, v in temps.items())


def _intervals_words(report: Mapping[str, Any]) -> str:
    s, unit = report["settings"], _units(report)
    level = f"{s['level'] * 100:g}%"
    if report["dataset"]["bootstrap_unit"] == "subject":
        drawn = "subjects (all faces of a drawn subject together)"
    else:
        drawn = "faces (the set names no subjects: too narrow if people repeat)"
    if s.get("small_n") is None:  # a report from before the exact interval
        return f"{level} percentile bootstrap, {s['resamples']} resamples of {drawn}"
    return (
        f"{level}. A figure resting on {s['small_n']} {unit} or more that are not all right "
        f"or all wrong: percentile bootstrap, {s['resamples']} resamples of {drawn}, seed "
        f"{s['seed']}. Otherwise exact (Clopper-Pearson, each of the {unit} counted once), "
        "because a bootstrap of a few faces, or of faces that are all right, claims more "
        "certainty than it has (4 right of 4 would be [1, 1]). The interval method column "
        "names the method of each row; a largest gap is a paired bootstrap, or built from "
        "the two groups' intervals (MOVER) when either is exact"
    )


def _temperature_words(temperature: float | None) -> str:
    """A temperature, and whether the fit stopped at the end of its allowed range (a fit
    that wanted more than 20: the scaled model is near-uniform, not a clean calibration)."""
    text = _num(temperature)
    if temperature is not None and not (
        TEMPERATURE_RANGE[0] * 1.0001 < temperature < TEMPERATURE_RANGE[1] * 0.9999
    ):
        text += f" (the fit's limit, {TEMPERATURE_RANGE[0]:g}-{TEMPERATURE_RANGE[1]:g})"
    return text


def _failures(report: Mapping[str, Any], thumbnails: bool) -> list[str]:
    """report.md's "Where it fails": the warnings, the gaps larger than chance, and the
    most confident errors per task (with thumbnails when they were written)."""
    lines = ["## Where it fails", ""]
    lines += [f"- **Warning**: {w}" for w in report.get("warnings") or []]
    real = [
        b
        for b in report["groups"]
        if b["gap"] is not None
        and b["gap"]["low"] is not None
        and math.isfinite(b["gap"]["low"])
        and b["gap"]["low"] > 0
    ]
    for block in real:
        gap = block["gap"]
        lines.append(
            f"- {block['task']} {_METRIC_WORDS[block['metric']]} is lower for "
            f"{gap['low_group']} than for {gap['high_group']} by {_num(gap['value'])} "
            f"{_interval(gap)} (by {block['by']}; larger than chance)."
        )
    if not real:
        lines.append("- No gap between groups is larger than chance in this report.")
    lines.append("")
    errors = report.get("confident_errors") or {}
    for task in TASKS:
        item = errors.get(task)
        if not item:
            continue
        if not item["wrong"]:
            lines += [f"**{task}**: no wrong answer among {item['faces']} labelled faces.", ""]
            continue
        listed = item["top"]
        lines += [
            f"**{task}**: {item['wrong']} of {item['faces']} labelled faces wrong, "
            f"{item['wrong_confident']} of them at probability {item['confident_at']:.2f} or "
            f"more. The {len(listed)} the model was surest of:",
            "",
        ]
        header = ["file", "subject", "true", "predicted", "probability", "p(true)"]
        rows = []
        for entry in listed:
            name = entry["path"] or f"faces.csv row {entry['face'] + 1}"
            cells = [
                f"`{name}`",
                entry["subject"] or "",
                entry["true"],
                entry["predicted"],
                _num(entry["probability"]),
                _num(entry["true_probability"]),
            ]
            if thumbnails:
                picture = entry.get("thumbnail")
                cells.insert(0, f"![{entry['true']}]({picture})" if picture else "")
            rows.append(cells)
        lines += _table(["face", *header] if thumbnails else header, rows)
        lines.append("")
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the model, the set and the settings in words; where the model fails
    (warnings, gaps, most confident errors); then the headline, groups, minors,
    calibration, abstention and notes, every interval with its method."""
    model, data, s = report["model"], report["dataset"], report["settings"]
    level = f"{s['level'] * 100:g}%"
    errors = report.get("confident_errors") or {}
    thumbnails = any(e.get("thumbnail") for item in errors.values() for e in item["top"])
    lines = [
        f"# Evaluation: {model['description']}",
        "",
        f"- Model: {model['description']} (backend {model['backend'] or 'n/a'}, detector "
        f"{model['detector'] or 'n/a'}, label set {model['model_label_set'].get('name')}, "
        f"{_stored_words(model)})",
        f"- Dataset: {data.get('description') or data['source']}: {data['faces']} faces"
        + (f" of {data['subjects']} subjects" if data.get("subjects") is not None else "")
        + f" (age labelled {data.get('age_labelled')}, gender labelled "
        f"{data.get('gender_labelled')}); label set {data['label_set_name']}",
        f"- Faces without a detection (whole image used): {data['faces_without_detection']}; "
        f"unreadable images: {data['errors']}; rows skipped: {data.get('skipped_rows', 0)}; "
        f"duplicate rows counted once: {data.get('duplicate_rows', 0)}",
        f"- Intervals: {_intervals_words(report)}.",
        f"- Settings: {_settings_words(report)}.",
        "",
        *_failures(report, thumbnails),
        "## Headline",
        "",
        *_table(
            ["task", "metric", "value", f"{level} interval", "n", "interval method"],
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
                method_words(r, report),
            ]
            for r in block["rows"]
        ]
        header = ["group", "faces", "subjects", "value", f"{level} interval", "interval method"]
        lines += _table(header, rows)
        lines += ["", _gap_line(block["gap"], report), ""]
    lines += ["## Minors and adults", ""]
    for key, words in (
        ("minors_called_adults", "Minors (true class wholly under 18) called adults"),
        ("adults_called_minors", "Adults (true class wholly 18 or over) called minors"),
    ):
        value = report["minors"][key]
        if "undefined" in value:
            lines.append(f"- {words}: undefined ({value['undefined']})")
        else:
            how = method_words(value, report, ("none", "all"))
            lines.append(
                f"- {words}: {_num(value['value'])} {_interval(value)} of {value['n']} faces "
                f"({how})"
            )
    lines += ["", "## Calibration", ""]
    rows = []
    for task in TASKS:
        c = report["calibration"][task]
        rows.append(
            [
                task,
                _num(c["ece"]),
                _temperature_words(c["temperature"]),
                _num(c["ece_calibrated"]),
                c["evaluated_on"],
            ]
        )
    lines += _table(["task", "ECE", "temperature", "ECE after", "evaluated on"], rows)
    if report.get("calibrated_checkpoint"):
        lines += ["", f"Calibrated copy of the checkpoint: `{report['calibrated_checkpoint']}`"]
    lines += [
        "",
        "Reliability diagrams: the bars are the accuracy per confidence bin, the number on "
        "each bar its faces (a bin of 3 faces says little); a calibrated model's bars reach "
        "the diagonal.",
        "",
        "![age](reliability_age.png) ![gender](reliability_gender.png)",
        "",
    ]
    lines += ["## Abstention (accuracy of the most confident faces)", ""]
    rows = []
    for task in TASKS:
        a = report["abstention"][task]
        at = a["at_coverage"]
        rows.append(
            [
                task,
                str(a.get("faces", "")),
                _num(a["aurc"]),
                *(_num(at[k]) for k in ("1.0", "0.9", "0.8", "0.5")),
            ]
        )
    lines += _table(["task", "faces", "AURC", "100%", "90%", "80%", "50%"], rows)
    lines += ["", "![coverage](coverage.png)", "", "![groups](groups.png)", ""]
    notes = list(data.get("notes") or [])
    errors_list = data.get("error_list") or []
    skipped = data.get("skipped_row_list") or []
    duplicates = data.get("duplicate_row_list") or []
    if notes or errors_list or skipped or duplicates:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- {line}" for line in problem_lines(data, limit=50)]
        lines.append("")
    return "\n".join(lines)


def _reliability(report: Mapping[str, Any], task: str, output: Path, plt: Any) -> None:
    """One panel per set of bins (raw, and temperature-scaled when there is one): the
    accuracy of each non-empty bin as a bar over the bin, its faces printed on the bar (a
    bin of 3 faces is noise, one of 300 is not), the mean confidence of the bin as a dot
    on the bar's top, and the diagonal. The y axis runs to 1.12 so a bar of accuracy 1 and
    its count stay inside the frame."""
    c = report["calibration"][task]
    panels = [(c["bins"], "raw", c["ece"])]
    if c.get("bins_calibrated"):
        limit = "(the fit's limit" in _temperature_words(c["temperature"])
        title = f"temperature-scaled, T = {_num(c['temperature'], 2)}" + (
            " (the fit's limit)" if limit else ""
        )
        panels.append((c["bins_calibrated"], title, c["ece_calibrated"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.4), squeeze=False)
    for ax, (bins, label, ece) in zip(axes[0], panels, strict=True):
        used = [b for b in bins or [] if b["count"]]
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        ax.bar(
            [b["lower"] for b in used],
            [b["accuracy"] for b in used],
            width=[b["upper"] - b["lower"] for b in used],
            align="edge",
            color="tab:blue",
            alpha=0.35,
            edgecolor="tab:blue",
            label="accuracy in the bin",
        )
        ax.plot(
            [b["confidence"] for b in used],
            [b["accuracy"] for b in used],
            "o",
            color="tab:blue",
            markersize=4,
            label="mean confidence in the bin",
        )
        for b in used:
            ax.text(
                (b["lower"] + b["upper"]) / 2,
                b["accuracy"] + 0.035,
                str(b["count"]),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        faces = sum(b["count"] for b in used)
        ax.set(xlim=(0, 1), ylim=(0, 1.12))
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_xlabel("confidence (probability of the top class)", fontsize=TICKS)
        ax.set_ylabel("accuracy (number on a bar: its faces)", fontsize=TICKS)
        ax.tick_params(labelsize=TICKS)
        ax.set_title(f"{task}, {label}\nECE {_num(ece)}, n = {faces} faces", fontsize=TICKS)
        ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(output / f"reliability_{task}.png", dpi=100)
    plt.close(fig)


def _coverage(report: Mapping[str, Any], output: Path, plt: Any) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for task in TASKS:
        block = report["abstention"][task]
        curve = block["curve"]
        if not curve:
            continue
        (line,) = ax.step(
            [p["coverage"] for p in curve],
            [p["accuracy"] for p in curve],
            where="post",
            label=f"{task}: n = {block.get('faces', len(curve))} faces, AURC {_num(block['aurc'])}",
        )
        # every face kept (the plain accuracy): a dot, or one confidence for all faces would
        # be a curve of one point that a step line does not draw at all
        ax.plot([curve[-1]["coverage"]], [curve[-1]["accuracy"]], "o", color=line.get_color())
    ax.set(xlim=(0, 1.02), ylim=(0, 1.08))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("coverage (share of the n faces kept)", fontsize=TICKS)
    ax.set_ylabel("accuracy of the kept faces", fontsize=TICKS)
    ax.set_title("accuracy vs coverage (most confident faces kept)", fontsize=TICKS)
    ax.tick_params(labelsize=TICKS)
    # below the axes: inside, it would hide the low-coverage end or the right-hand tail
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=10, frameon=False)
    fig.tight_layout()
    fig.savefig(output / "coverage.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _groups(report: Mapping[str, Any], output: Path, plt: Any) -> None:
    """Every group's accuracy with its interval, n in each label; a group too small to
    conclude on is drawn hollow and grey."""
    blocks = report["groups"]
    level = f"{report['settings']['level'] * 100:g}%"
    rows_total = sum(max(len(b["rows"]), 1) for b in blocks)
    fig, axes = plt.subplots(
        len(blocks), 1, figsize=(8, 1.0 + 0.9 * len(blocks) + 0.42 * rows_total), squeeze=False
    )
    for ax, block in zip(axes[:, 0], blocks, strict=True):
        rows = block["rows"]
        for y, r in enumerate(rows):
            value = np.nan if r["value"] is None else r["value"]
            low = np.nan if r["low"] is None else r["low"]
            high = np.nan if r["high"] is None else r["high"]
            small = bool(r.get("small"))
            ax.errorbar(
                [value],
                [y],
                xerr=[[value - low], [high - value]],
                fmt="o",
                capsize=4,
                color="grey" if small else "tab:blue",
                markerfacecolor="white" if small else "tab:blue",
            )
        labels = [
            f"{r['group']} (n={r['count']}"
            + (f", {r['subjects']} subj." if r.get("subjects") is not None else "")
            + ")"
            for r in rows
        ]
        ax.set_yticks(np.arange(len(rows)), labels, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=TICKS)
        faces = sum(r["count"] for r in rows)
        ax.set_title(
            f"{block['task']} {_METRIC_WORDS[block['metric']]} by {block['by']} "
            f"(n = {faces} faces)",
            fontsize=TICKS,
        )
    small_n = report["settings"].get("small_n")
    note = (
        f"; hollow grey: under {small_n} {_units(report)}, too few to conclude" if small_n else ""
    )
    axes[-1, 0].set_xlabel(f"accuracy ({level} interval{note})", fontsize=TICKS)
    fig.tight_layout()
    fig.savefig(output / "groups.png", dpi=100)
    plt.close(fig)


def _plots(report: Mapping[str, Any], output: Path) -> None:
    import matplotlib  # deferred: ~0.3 s, only for the figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in TASKS:
        _reliability(report, task, output, plt)
    _coverage(report, output, plt)
    _groups(report, output, plt)


def _box(faces: Any, index: int) -> tuple[float, float, float, float] | None:
    """The face box faces.csv records for row ``index`` (None: none, use the image)."""
    try:
        box = tuple(float(faces.iloc[index][c]) for c in ("x1", "y1", "x2", "y2"))
    except (KeyError, TypeError, ValueError):
        return None
    return box if all(math.isfinite(v) for v in box) and box[2] > box[0] else None  # type: ignore[return-value]


def _thumbnail(file: str, box: tuple[float, float, float, float] | None, target: Path) -> bool:
    """A JPEG of the face (its box and a margin of a fifth around it, else the whole image)
    at most :data:`THUMBNAIL` pixels on a side; False when the image cannot be read."""
    from PIL import Image  # deferred: only when thumbnails are written

    try:
        image = load_image(file)
    except (ImageLoadError, OSError):
        return False
    height, width = image.shape[:2]
    if box is not None:
        x1, y1, x2, y2 = box
        margin = 0.2 * max(x2 - x1, y2 - y1)
        left, top = max(0, int(x1 - margin)), max(0, int(y1 - margin))
        right, bottom = min(width, int(x2 + margin)), min(height, int(y2 + margin))
        if right > left and bottom > top:
            image = image[top:bottom, left:right]
    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target, quality=85)
    return True


def write_thumbnails(evaluation: Evaluation, output: Path) -> None:
    """Thumbnails of the most confident errors into ``output/errors/`` (``age_01.jpg`` ...),
    each entry's ``thumbnail`` set to its path relative to ``output`` (None: no image files
    known, or this one unreadable). A face is easier to judge than a file name: a profile,
    a blur, a mislabelled row shows at a glance. Earlier thumbnails of this folder go first,
    so none is left from another run."""
    folder = output / ERRORS_DIR
    if folder.is_dir():  # only the names written here: age_01.jpg ... gender_99.jpg
        for task in TASKS:
            for old in folder.glob(f"{task}_[0-9][0-9].jpg"):
                old.unlink()
    errors = evaluation.report.get("confident_errors") or {}
    for task in TASKS:
        for rank, entry in enumerate((errors.get(task) or {}).get("top") or [], 1):
            entry["thumbnail"] = None
            if evaluation.files is None:
                continue
            name = f"{task}_{rank:02d}.jpg"
            box = _box(evaluation.faces, entry["face"])
            if _thumbnail(evaluation.files[entry["face"]], box, folder / name):
                entry["thumbnail"] = f"{ERRORS_DIR}/{name}"


def write_outputs(evaluation: Evaluation, output: str | Path) -> dict[str, Path]:
    """report.json, report.md, faces.csv, :data:`FIGURES` and the thumbnails of the most
    confident errors (:func:`write_thumbnails`) into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_thumbnails(evaluation, output)
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
