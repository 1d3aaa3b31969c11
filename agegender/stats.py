"""Statistics of an evaluation: intervals, per-group accuracy, the largest gap between
groups, accuracy against coverage, and how often minors and adults are confused.

The rule for every interval of a proportion (an accuracy, a rate): with at least
:data:`SMALL_N` units (subjects; faces when there is no subject column) and values that are
not all 0 or all 1, a percentile bootstrap over the units; otherwise, or when the bootstrap
has no spread at all, the exact Clopper-Pearson interval with the units as trials
(:func:`exact_interval`). A percentile bootstrap of 4 right faces out of 4 is
``[1, 1]``: every draw is all right, so it claims certainty from four faces; Clopper-Pearson
gives ``[0.40, 1]``. Each interval names its method (``"bootstrap"`` or ``"exact"``).

The bootstrap (Efron & Tibshirani, "An Introduction to the Bootstrap", ch. 13), when
``clusters`` is given, resamples whole clusters (subjects) with replacement, each drawn
cluster bringing all its rows. The faces of one person are not
independent: Adience has about 10-20 photos per subject, which are right or wrong together
far more often than faces of different people. A bootstrap over single faces treats them as
independent and gives intervals that are too narrow (it counts 20 photos of one person as
20 pieces of evidence); the cluster bootstrap counts people. Without ``clusters`` rows are
resampled, which is right only when each row is a different person.

Draws come from ``numpy.random.default_rng(seed)``, so a seed gives the same interval on
every run. Each draw is a vector of counts (how often each cluster was drawn), built for many
draws at once with ``np.bincount``; a mean over the drawn rows is then a matrix product
(counts @ per-cluster sums), so 1000 resamples of 20 000 faces take a fraction of a second.

Core module: numpy and pandas (plus :meth:`agegender.labels.LabelSet.class_years`), and
scipy's beta distribution for the exact interval (imported when one is needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from agegender.errors import AgeGenderError
from agegender.labels import LabelSet

#: Bootstrap resamples of every interval unless a caller asks for another number.
DEFAULT_RESAMPLES: int = 1000
#: Coverage of every interval (a 95 % percentile interval) unless asked otherwise.
LEVEL: float = 0.95
#: Fewer units (subjects, or faces without subjects) than this: the exact interval, not the
#: bootstrap (a bootstrap of a few units has few distinct draws and too narrow an interval).
SMALL_N: int = 30
#: The ``method`` of an interval: percentile bootstrap, or exact Clopper-Pearson.
BOOTSTRAP, EXACT = "bootstrap", "exact"
#: The ``method`` of a gap's interval when it is not the paired bootstrap: Zou & Donner's
#: MOVER, built from the two groups' own intervals.
MOVER = "mover"
#: Most draw-by-unit counts held in memory at once (draws are made in chunks below this).
_CHUNK_CELLS = 2_000_000

ArrayLike = Any  # a sequence, numpy array or pandas Series


class StatsError(AgeGenderError, ValueError):
    """Input the statistics cannot use (the message says which argument and why)."""


# -- input checks ----------------------------------------------------------------------------
def _as_values(values: ArrayLike, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise StatsError(f"{name} must be numbers (or True/False)") from None
    if array.ndim != 1:
        raise StatsError(f"{name} must be one value per face, got shape {array.shape}")
    if np.isnan(array).any():
        raise StatsError(f"{name} has {int(np.isnan(array).sum())} missing value(s)")
    return array


def _cluster_codes(clusters: ArrayLike | None, n: int) -> tuple[np.ndarray, int]:
    """Integer codes 0..k-1 of the resampled units: the clusters, or each row on its own."""
    if clusters is None:
        return np.arange(n), n
    codes, uniques = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)), sort=False)
    if len(codes) != n:
        raise StatsError(f"clusters has {len(codes)} rows but the values have {n}")
    if (codes < 0).any():
        raise StatsError(
            f"clusters has {int((codes < 0).sum())} missing value(s): every face needs its "
            "subject (or leave clusters out to resample faces)"
        )
    return codes.astype(np.int64), len(uniques)


def _check(resamples: int, level: float, small_n: int = SMALL_N) -> None:
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise StatsError(f"resamples must be a whole number >= 1, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise StatsError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    if not isinstance(small_n, (int, np.integer)) or small_n < 0:
        raise StatsError(f"small_n must be a whole number >= 0, got {small_n!r}")


def _same_length(name: str, array: ArrayLike, n: int) -> None:
    if len(array) != n:
        raise StatsError(f"{name} has {len(array)} rows but correct has {n}")


# -- the resampling engine -------------------------------------------------------------------
def _draw_counts(units: int, resamples: int, seed: int | None) -> Iterator[np.ndarray]:
    """How often each of ``units`` clusters is drawn, ``resamples`` times (chunks of rows of a
    draws x units count matrix): each draw picks ``units`` clusters uniformly with
    replacement, the nonparametric bootstrap of the clusters."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(units, 1)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        picks = rng.integers(0, units, size=(size, units))
        picks += (np.arange(size) * units)[:, None]
        yield np.bincount(picks.ravel(), minlength=size * units).reshape(size, units)
        done += size


def _resampled_sums(
    codes: np.ndarray, units: int, columns: np.ndarray, resamples: int, seed: int | None
) -> np.ndarray:
    """Per draw, the column sums over the drawn rows (draws x columns): the counts of each
    cluster times its column sums, so no draw ever materialises its rows."""
    per_unit = np.zeros((units, columns.shape[1]))
    np.add.at(per_unit, codes, columns)
    draws = _draw_counts(units, resamples, seed)
    return np.concatenate([counts.astype(np.float64) @ per_unit for counts in draws])


def _percentile(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of the finite draws (a draw that could not compute the
    statistic, e.g. a group with no row in it, is NaN and left out)."""
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


# -- intervals -------------------------------------------------------------------------------
def bootstrap_interval(
    values: ArrayLike,
    clusters: ArrayLike | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int | None = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of ``statistic(values)``.

    With ``clusters`` (one subject id per value) each draw takes as many clusters as there
    are, with replacement, and ``statistic`` sees the concatenated rows of the drawn clusters
    (grouped by cluster, not in draw order; every statistic here ignores order); without it,
    rows are drawn. Resampling subjects is the point: photos of one person are right or
    wrong together, so a row bootstrap would read 20 photos of one person as 20 independent
    pieces of evidence and give an interval that is too narrow. ``np.mean`` (the default,
    and what accuracy is) is computed from per-cluster sums without building any draw; any
    other statistic is called once per draw on the same draws. No value: ``(nan, nan)``.
    """
    _check(resamples, level)
    array = _as_values(values, "values")
    if not len(array):
        return float("nan"), float("nan")
    codes, units = _cluster_codes(clusters, len(array))
    if statistic is np.mean:
        sums = _resampled_sums(
            codes, units, np.stack([array, np.ones_like(array)], 1), resamples, seed
        )
        return _percentile(_ratio(sums[:, 0], sums[:, 1]), level)
    order = np.argsort(codes, kind="stable")
    grouped, grouped_codes = array[order], codes[order]
    draws = [
        float(statistic(np.repeat(grouped, row[grouped_codes])))
        for counts in _draw_counts(units, resamples, seed)
        for row in counts
    ]
    return _percentile(np.asarray(draws, dtype=np.float64), level)


def exact_interval(successes: float, trials: float, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval ``(low, high)`` of a proportion: ``successes`` of ``trials``.

    The exact binomial interval (Clopper & Pearson 1934): the beta quantiles
    ``beta(k, n - k + 1)`` at ``(1 - level) / 2`` and ``beta(k + 1, n - k)`` at
    ``(1 + level) / 2``, with ``low = 0`` when ``k = 0`` and ``high = 1`` when ``k = n``. It
    never has zero width and never claims certainty: 4 of 4 gives ``(0.398, 1)``, 0 of 1
    ``(0, 0.975)``. ``successes`` may be fractional (an accuracy times a number of subjects,
    as :func:`interval_dict` counts people); the beta quantiles are defined for any positive
    parameters. No trial: ``(nan, nan)``.
    """
    from scipy.stats import beta  # deferred: scipy (~0.2 s) only where an interval needs it

    if not 0.0 < level < 1.0:
        raise StatsError(f"level must be between 0 and 1 (e.g. 0.95), got {level!r}")
    n, k = float(trials), float(successes)
    if not (math.isfinite(n) and math.isfinite(k)) or k < 0 or k > n:
        raise StatsError(f"successes must lie between 0 and trials, got {k:g} of {n:g}")
    if n <= 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low = 0.0 if k <= 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def interval_dict(
    values: ArrayLike,
    clusters: ArrayLike | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int | None = 0,
    small_n: int = SMALL_N,
) -> dict[str, Any]:
    """``{"value": mean, "low", "high", "n", "units", "method"}``: a mean (an accuracy, a
    rate) with its interval, the number of rows ``n``, the number of independent ``units``
    (distinct clusters, or rows without ``clusters``) and the interval's ``method``: the form
    every report and JSON file stores.

    ``method`` is ``"bootstrap"`` (:func:`bootstrap_interval` over the clusters, whose
    docstring says why subjects are resampled) when there are at least ``small_n`` units and
    the values are not all 0 or all 1; otherwise ``"exact"``: Clopper-Pearson
    (:func:`exact_interval`) with ``units`` trials and ``mean x units`` successes. Counting
    each subject once is the cautious reading of faces that are right or wrong together (20
    photos of one person are not 20 pieces of evidence). A bootstrap with no spread (every
    draw the same, e.g. each subject half right) also falls back to the exact interval: no
    interval here has zero width. Values outside 0-1 are no proportion: always bootstrap.
    No value: NaNs, ``n = 0``, ``units = 0``, method None.
    """
    _check(resamples, level, small_n)
    array = _as_values(values, "values")
    if not len(array):
        nan = float("nan")
        return {"value": nan, "low": nan, "high": nan, "n": 0, "units": 0, "method": None}
    _, units = _cluster_codes(clusters, len(array))
    value = float(array.mean())
    proportion = bool(((array >= 0) & (array <= 1)).all())
    method = BOOTSTRAP
    if proportion and (units < small_n or value in (0.0, 1.0)):
        method = EXACT
    else:
        low, high = bootstrap_interval(array, clusters, np.mean, resamples, level, seed)
        if proportion and not low < high:
            method = EXACT
    if method == EXACT:
        low, high = exact_interval(value * units, units, level)
    return {
        "value": value,
        "low": low,
        "high": high,
        "n": int(len(array)),
        "units": int(units),
        "method": method,
    }


# -- groups ----------------------------------------------------------------------------------
def _group_codes(groups: ArrayLike, n: int) -> tuple[np.ndarray, list[Any]]:
    """Codes of the group values (-1: missing, left out) and the values in report order:
    a Categorical's category order, else sorted (order of first appearance when the values
    cannot be compared). Only values that occur are listed."""
    _same_length("groups", groups, n)
    series = groups if isinstance(groups, pd.Series) else pd.Series(groups)
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy().astype(np.int64)
        names = list(series.cat.categories)
    else:
        try:
            codes, uniques = pd.factorize(series, sort=True)
        except TypeError:
            codes, uniques = pd.factorize(series, sort=False)
        names = list(uniques)
    present = np.unique(codes[codes >= 0])
    remap = np.full(len(names) + 1, -1)
    remap[present] = np.arange(len(present))
    return remap[codes], [names[i] for i in present]


def group_accuracy(
    correct: ArrayLike,
    groups: ArrayLike,
    clusters: ArrayLike | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int | None = 0,
    small_n: int = SMALL_N,
) -> pd.DataFrame:
    """Accuracy per group with its interval: one row per group value that occurs (sorted,
    or in the order of a Categorical's categories), columns ``group``, ``count`` (faces),
    ``subjects`` (distinct clusters in the group; None without ``clusters``), ``value``
    (accuracy), ``low``, ``high``, ``units`` (the interval's independent units: subjects, or
    faces without ``clusters``) and ``method`` (``"bootstrap"`` or ``"exact"``).

    A model that is right on 80 % of faces can be right on 95 % of men and 60 % of
    children; the overall number hides it. Rows whose group is missing (NaN/None) are left
    out. Each group's interval is :func:`interval_dict`'s on that group's rows (its own
    subjects resampled, or Clopper-Pearson for a group of fewer than ``small_n`` units or one
    that is all right or all wrong, the usual case for a small group); the same ``seed`` is
    used for every group.
    """
    values = _as_values(correct, "correct")
    codes, names = _group_codes(groups, len(values))
    cluster_array = None
    if clusters is not None:
        _same_length("clusters", clusters, len(values))
        cluster_array = np.asarray(clusters, dtype=object)
    rows = []
    for index, name in enumerate(names):
        mask = codes == index
        members = None if cluster_array is None else cluster_array[mask]
        stats = interval_dict(values[mask], members, resamples, level, seed, small_n)
        rows.append(
            {
                "group": name,
                "count": stats["n"],
                "subjects": None if members is None else len(pd.unique(members)),
                "value": stats["value"],
                "low": stats["low"],
                "high": stats["high"],
                "units": stats["units"],
                "method": stats["method"],
            }
        )
    columns = ["group", "count", "subjects", "value", "low", "high", "units", "method"]
    return pd.DataFrame(rows, columns=columns)


def largest_gap(
    correct: ArrayLike,
    groups: ArrayLike,
    clusters: ArrayLike | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int | None = 0,
    min_count: int = 1,
    small_n: int = SMALL_N,
) -> dict[str, Any] | None:
    """The accuracy gap between the best and the worst group, with a paired interval.

    Returns ``{"high_group", "low_group", "value"`` (accuracy of high minus low),
    ``"low", "high"`` (its interval), ``"method"``, ``"n_groups"`` (groups compared),
    ``"high_accuracy", "low_accuracy"}``, or None when fewer than two groups have
    ``min_count`` rows (rows of a missing group are left out). The best and worst group are
    found once, on the full data (ties: the earlier group in report order is "low", the
    later "high"). Each draw then resamples the clusters (subjects; rows without
    ``clusters``) of all compared groups together and computes every group's accuracy on
    that same draw, so the interval is for the difference itself (paired), not two separate
    intervals that overlap; a subject whose faces fall in both groups moves both. A draw in
    which the high or the low group has no row cannot give a difference and is skipped (the
    interval comes from the other draws). An interval that excludes 0 says the gap is
    larger than what resampling the same people produces by chance (it does not correct for
    having picked the extreme pair, so read a narrow miss of 0 with care).

    ``method`` is ``"bootstrap"`` for that paired bootstrap. When either group would get the
    exact interval in :func:`interval_dict` (fewer than ``small_n`` units, all right or all
    wrong) or the paired draws have no spread, the bootstrap of the difference degenerates
    too (two groups that are all right give ``0 [0, 0]``), so the interval is ``"mover"``
    instead: Zou & Donner's (2008) method of variance estimates recovery on the two groups'
    own intervals (Newcombe's 1998 difference interval with those intervals in place of
    Wilson's): ``d - sqrt((p1 - l1)^2 + (u2 - p2)^2)`` to ``d + sqrt((u1 - p1)^2 +
    (p2 - l2)^2)``, clipped to [-1, 1]. It treats the two groups as independent, which is
    right when no subject is in both.
    """
    _check(resamples, level, small_n)
    values = _as_values(correct, "correct")
    codes, names = _group_codes(groups, len(values))
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    kept = [i for i in range(len(names)) if counts[i] >= max(min_count, 1)]
    if len(kept) < 2:
        return None
    accuracy = np.array([values[codes == i].mean() for i in kept])
    order = np.argsort(accuracy, kind="stable")
    low_index, high_index = kept[order[0]], kept[order[-1]]
    rows = np.isin(codes, kept)
    cluster_rows = None
    if clusters is not None:
        _same_length("clusters", clusters, len(values))
        cluster_rows = np.asarray(clusters, dtype=object)[rows]
    unit_codes, units = _cluster_codes(cluster_rows, int(rows.sum()))
    members = np.stack([codes[rows] == i for i in kept], 1).astype(np.float64)
    columns = np.concatenate([members * values[rows][:, None], members], 1)
    sums = _resampled_sums(unit_codes, units, columns, resamples, seed)
    drawn = _ratio(sums[:, : len(kept)], sums[:, len(kept) :])  # draws x groups, NaN: no row
    gaps = drawn[:, order[-1]] - drawn[:, order[0]]
    low, high = _percentile(gaps, level)
    value = float(accuracy[order[-1]] - accuracy[order[0]])
    cluster_array = None if clusters is None else np.asarray(clusters, dtype=object)
    ends = [
        interval_dict(
            values[codes == index],
            None if cluster_array is None else cluster_array[codes == index],
            resamples,
            level,
            seed,
            small_n,
        )
        for index in (high_index, low_index)
    ]
    method = BOOTSTRAP
    if any(end["method"] == EXACT for end in ends) or not low < high:
        method = MOVER
        low, high = _mover(value, *ends)
    return {
        "high_group": names[high_index],
        "low_group": names[low_index],
        "value": value,
        "low": low,
        "high": high,
        "method": method,
        "n_groups": len(kept),
        "high_accuracy": float(accuracy[order[-1]]),
        "low_accuracy": float(accuracy[order[0]]),
    }


def _mover(value: float, first: dict[str, Any], second: dict[str, Any]) -> tuple[float, float]:
    """Zou & Donner's MOVER interval of ``first - second`` from each one's own interval
    (:func:`largest_gap` says when and why); written out because scipy has no such function
    and it is two lines of arithmetic."""
    p1, l1, u1 = first["value"], first["low"], first["high"]
    p2, l2, u2 = second["value"], second["low"], second["high"]
    low = value - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = value + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


# -- abstention ------------------------------------------------------------------------------
def accuracy_coverage(confidence: ArrayLike, correct: ArrayLike) -> pd.DataFrame:
    """Accuracy of the faces a model keeps when it abstains below a confidence threshold.

    Faces are sorted by confidence, descending; one row per distinct confidence (faces with
    equal confidence are kept or dropped together, so a tie is one threshold), from the
    highest threshold (fewest faces) to the lowest, whose row keeps every face (coverage 1,
    the plain accuracy). Columns: ``threshold``, ``coverage`` (share of faces kept:
    confidence >= threshold), ``accuracy`` (of the kept faces), ``kept`` (how many).
    Coverage never rises as the threshold rises; accuracy rises as coverage falls only
    if confidence means something, which is what the curve shows (nothing forces it).
    """
    conf = _as_values(confidence, "confidence")
    right = _as_values(correct, "correct")
    if len(conf) != len(right):
        raise StatsError(f"confidence has {len(conf)} rows but correct has {len(right)}")
    columns = ["threshold", "coverage", "accuracy", "kept"]
    if not len(conf):
        return pd.DataFrame(columns=columns)
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    # the last face of each run of equal confidences closes that threshold
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    kept = ends + 1
    return pd.DataFrame(
        {
            "threshold": conf[ends],
            "coverage": kept / len(conf),
            "accuracy": np.cumsum(right)[ends] / kept,
            "kept": kept.astype(np.int64),
        },
        columns=columns,
    )


def selective_risk_area(curve: pd.DataFrame) -> float:
    """Area under the risk-coverage curve (AURC; Geifman & El-Yaniv 2017), risk = 1 -
    accuracy, trapezoidal over coverage from 0 to 1, on :func:`accuracy_coverage`'s table.

    One number for how well confidence ranks right answers above wrong ones: lower is
    better. Below the smallest coverage the curve is taken flat at its first risk, so a
    model whose confidence says nothing (one threshold) gets its plain error rate and a
    perfect ranking gets less. Empty table: NaN."""
    if curve is None or not len(curve):
        return float("nan")
    data = curve.sort_values("coverage", kind="stable")
    coverage = np.concatenate([[0.0], data["coverage"].to_numpy(dtype=np.float64)])
    risk = 1.0 - data["accuracy"].to_numpy(dtype=np.float64)
    risk = np.concatenate([risk[:1], risk])
    return float(np.sum(np.diff(coverage) * (risk[1:] + risk[:-1]) / 2.0))


# -- minors and adults -----------------------------------------------------------------------
def _side_classes(labels: LabelSet, threshold: float) -> tuple[set[int], set[int]]:
    """Classes wholly under ``threshold`` years (minors) and wholly at or above it (adults);
    a class straddling it is in neither."""
    minors, adults = set(), set()
    for index in range(len(labels.age)):
        lo, hi = labels.class_years(index)
        if hi <= threshold:
            minors.add(index)
        elif lo >= threshold:
            adults.add(index)
    return minors, adults


def minors_rates(
    true_classes: ArrayLike,
    predicted_classes: ArrayLike,
    labels: LabelSet,
    clusters: ArrayLike | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = LEVEL,
    seed: int | None = 0,
    threshold: float = 18.0,
    small_n: int = SMALL_N,
) -> dict[str, dict[str, Any]]:
    """How often a minor is called an adult, and an adult a minor, with cluster intervals.

    The costly mistakes of an age model used for age checks. A true class is "minor" when
    all its years (:meth:`LabelSet.class_years`) are under ``threshold``, "adult" when all
    are at or above it; a class straddling it (adience8's 15-20, coarse3's teen) says
    nothing about which side a face is on, so its faces are left out of both rates, as are
    faces without an age label or a prediction (class index < 0). "Called adult" means a
    predicted class whose years are all >= ``threshold``, "called minor" all below it; a
    prediction of a straddling class is neither. Returns ``{"minors_called_adults": ...,
    "adults_called_minors": ...}``, each :func:`interval_dict`'s ``{"value", "low", "high",
    "n", "units", "method"}`` (n = faces of that true side; the interval exact below
    ``small_n`` units or when no face or every face of the side is called the other) or
    ``{"undefined": reason}`` when the set has no class wholly on a side or no face is known
    to be on it.
    """
    truth = np.asarray(true_classes)
    predicted = np.asarray(predicted_classes)
    if truth.ndim != 1 or predicted.shape != truth.shape:
        raise StatsError(
            f"true_classes {truth.shape} and predicted_classes {predicted.shape} must be one "
            "class index per face"
        )
    if len(truth) and not (
        np.issubdtype(truth.dtype, np.integer) and np.issubdtype(predicted.dtype, np.integer)
    ):
        raise StatsError("true_classes and predicted_classes must be class indices (integers)")
    count = len(labels.age)
    for name, array in (("true_classes", truth), ("predicted_classes", predicted)):
        if len(array) and array.max() >= count:
            raise StatsError(
                f"{name} holds class {int(array.max())} but label set {labels.name!r} has "
                f"{count} classes (0..{count - 1})"
            )
    cluster_array = None
    if clusters is not None:
        if len(clusters) != len(truth):
            raise StatsError(f"clusters has {len(clusters)} rows but there are {len(truth)} faces")
        cluster_array = np.asarray(clusters, dtype=object)
    minors, adults = _side_classes(labels, threshold)
    known = (truth >= 0) & (predicted >= 0)
    is_minor = known & np.isin(truth, list(minors))
    is_adult = known & np.isin(truth, list(adults))
    called_adult = np.isin(predicted, list(adults))
    called_minor = np.isin(predicted, list(minors))
    under, over = f"under {threshold:g}", f"at or above {threshold:g}"

    def rate(
        side: np.ndarray,
        called: np.ndarray,
        side_classes: set[int],
        other: set[int],
        side_words: str,
        other_words: str,
        other_side: str,
    ) -> dict[str, Any]:
        if not side_classes:
            return {"undefined": f"no class of {labels.name} lies entirely {side_words}"}
        if not other:
            return {
                "undefined": f"no class of {labels.name} lies entirely {other_words}, so no "
                f"face can be called {other_side}"
            }
        if not side.any():
            return {
                "undefined": f"no face in this set is known to be {side_words} (each face's "
                f"true class straddles {threshold:g}, lies entirely {other_words} or is "
                "unknown)"
            }
        members = None if cluster_array is None else cluster_array[side]
        return interval_dict(
            called[side].astype(np.float64), members, resamples, level, seed, small_n
        )

    return {
        "minors_called_adults": rate(
            is_minor, called_adult, minors, adults, under, over, "an adult"
        ),
        "adults_called_minors": rate(
            is_adult, called_minor, adults, minors, over, under, "a minor"
        ),
    }
