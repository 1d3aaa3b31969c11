"""agegender.stats on small hand-computed sets: cluster bootstrap intervals, accuracy per
group, the largest gap between groups, accuracy against coverage (and its area), the rates
of minors called adults and adults called minors, and LabelSet.class_years."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agegender.labels import load_label_set
from agegender.stats import (
    DEFAULT_RESAMPLES,
    LEVEL,
    SMALL_N,
    StatsError,
    accuracy_coverage,
    bootstrap_interval,
    exact_interval,
    group_accuracy,
    interval_dict,
    largest_gap,
    minors_rates,
    selective_risk_area,
)


def _subjects(pattern: list[int], faces: int, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """One subject per entry of ``pattern`` (1: all its faces right, 0: all wrong)."""
    correct = np.repeat(np.asarray(pattern, dtype=float), faces)
    ids = np.repeat([f"{prefix}{i}" for i in range(len(pattern))], faces)
    return correct, ids


# -- LabelSet.class_years --------------------------------------------------------------------
def test_class_years_of_the_builtin_sets() -> None:
    adience8 = load_label_set("adience8")
    assert adience8.class_years(0) == (0.0, 3.0)
    assert adience8.class_years(3) == (15.0, 21.0)  # "15-20" holds 15..20 inclusive
    assert adience8.class_years(7) == (60.0, 101.0)
    coarse3 = load_label_set("coarse3")
    assert [coarse3.class_years(i) for i in range(3)] == [(0, 13), (13, 20), (20, 80)]
    decades = load_label_set("decades")
    assert decades.class_years(1) == (10.0, 20.0)
    assert decades.class_years(7) == (70.0, 90.0)  # the open-ended class ends at max_age
    with pytest.raises(IndexError, match="classes 0..2, not 3"):
        coarse3.class_years(3)
    with pytest.raises(IndexError, match="not -1"):
        coarse3.class_years(-1)  # IGNORE_INDEX is no class (no wrap-around)


# -- bootstrap intervals ---------------------------------------------------------------------
def test_two_subjects_by_hand_and_the_row_bootstrap_of_the_same_rows() -> None:
    # subject x: 3 right, subject y: 3 wrong. Drawing 2 subjects: xx (1), xy (.5), yy (0)
    # with probabilities 1/4, 1/2, 1/4, so the 95 % interval is (0, 1). Drawing 6 rows: the
    # mean is Binomial(6, 1/2) / 6; P(0) = 1/64 < 2.5 % < P(<= 1) = 7/64, so (1/6, 5/6).
    values = [1, 1, 1, 0, 0, 0]
    clusters = ["x", "x", "x", "y", "y", "y"]
    assert bootstrap_interval(values, clusters, resamples=4000) == (0.0, 1.0)
    low, high = bootstrap_interval(values, resamples=4000)
    assert (low, high) == pytest.approx((1 / 6, 5 / 6))


def test_cluster_interval_is_wider_when_subjects_are_all_right_or_all_wrong() -> None:
    correct, ids = _subjects([1, 0] * 10, faces=10, prefix="s")  # 20 people, 200 faces
    cluster_low, cluster_high = bootstrap_interval(correct, ids)
    row_low, row_high = bootstrap_interval(correct)
    # 20 independent people vs 200 "independent" faces: about sqrt(10) times wider
    assert cluster_high - cluster_low > 2 * (row_high - row_low)
    assert cluster_low < 0.5 < cluster_high and row_low < 0.5 < row_high


def test_interval_contains_the_estimate_and_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40, 300)
    correct = (rng.random(40) < 0.7)[ids] ^ (rng.random(300) < 0.1)
    stats = interval_dict(correct, ids)
    assert stats["n"] == 300 and stats["value"] == pytest.approx(correct.mean())
    assert stats["low"] < stats["value"] < stats["high"]
    assert bootstrap_interval(correct, ids, seed=5) == bootstrap_interval(correct, ids, seed=5)
    assert bootstrap_interval(correct, ids, seed=5) != bootstrap_interval(correct, ids, seed=6)
    # the mean's fast path (per-cluster sums) sees exactly the draws a general statistic sees
    general = bootstrap_interval(correct, ids, statistic=lambda v: float(np.mean(v)), seed=5)
    assert general == pytest.approx(bootstrap_interval(correct, ids, seed=5))
    median = bootstrap_interval(correct, ids, statistic=np.median, resamples=200)
    assert set(median) <= {0.0, 0.5, 1.0}
    assert DEFAULT_RESAMPLES == 1000 and LEVEL == 0.95


def test_single_subject_and_empty_values() -> None:
    assert bootstrap_interval([1, 0, 1, 1], ["a"] * 4) == (0.75, 0.75)
    assert np.isnan(bootstrap_interval([])).all()
    empty = interval_dict([])
    assert empty["n"] == 0 and np.isnan(empty["value"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": [1, 0], "clusters": ["a"]}, "clusters has 1 rows but the values have 2"),
        ({"values": [1, 0], "clusters": ["a", None]}, "clusters has 1 missing value"),
        ({"values": [1, float("nan")]}, "values has 1 missing value"),
        ({"values": ["yes", "no"]}, "values must be numbers"),
        ({"values": [1, 0], "level": 95}, "level must be between 0 and 1"),
        ({"values": [1, 0], "resamples": 0}, "resamples must be a whole number"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(StatsError, match=message):
        bootstrap_interval(**kwargs)


# -- exact intervals and the method switch --------------------------------------------------
def test_exact_interval_is_clopper_pearson() -> None:
    from scipy.stats import binomtest

    # the case: 4 of 4 right is not "[1, 1]"
    assert exact_interval(4, 4) == pytest.approx((0.3976, 1.0), abs=1e-4)
    assert exact_interval(0, 1) == pytest.approx((0.0, 0.975))
    for k, n in ((0, 5), (3, 10), (7, 7), (12, 40)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert exact_interval(k, n) == pytest.approx((ci.low, ci.high))
    # fractional successes (accuracy x subjects) lie between their integer neighbours
    low, high = exact_interval(2.5, 4)
    assert exact_interval(2, 4)[0] < low < exact_interval(3, 4)[0]
    assert exact_interval(2, 4)[1] < high < exact_interval(3, 4)[1]
    assert exact_interval(3, 10, level=0.5)[1] < exact_interval(3, 10)[1]
    assert np.isnan(exact_interval(0, 0)).all()
    with pytest.raises(StatsError, match="between 0 and trials"):
        exact_interval(5, 4)


def test_interval_method_switch() -> None:
    """Bootstrap for many units that are not all alike; exact otherwise; never zero width."""
    four = interval_dict([1, 1, 1, 1])  # 4 faces, no subjects: 4 units
    assert (four["method"], four["units"], four["n"]) == ("exact", 4, 4)
    assert (four["low"], four["high"]) == pytest.approx(exact_interval(4, 4))
    assert four["low"] < four["high"]
    one = interval_dict([0.0])
    assert (one["method"], one["low"]) == ("exact", 0.0) and one["high"] == pytest.approx(0.975)

    # 60 subjects of 3 faces, mixed: the subject bootstrap
    rng = np.random.default_rng(7)
    correct, ids = _subjects((rng.random(60) < 0.7).astype(int).tolist(), 3, "s")
    correct[::5] = 1 - correct[::5]  # faces of a subject disagree sometimes
    big = interval_dict(correct, ids)
    assert (big["method"], big["units"], big["n"]) == ("bootstrap", 60, 180)
    assert (big["low"], big["high"]) == bootstrap_interval(correct, ids)
    # the same faces with the first 20 subjects only: under SMALL_N subjects, exact
    few = interval_dict(correct[:60], ids[:60])
    assert SMALL_N == 30 and (few["method"], few["units"]) == ("exact", 20)
    assert (few["low"], few["high"]) == pytest.approx(exact_interval(few["value"] * 20, 20))
    # 60 subjects all right: exact over the 60 subjects, not over the 180 faces
    right = interval_dict(np.ones(180), ids)
    assert (right["method"], right["units"]) == ("exact", 60)
    assert right["low"] == pytest.approx(0.025 ** (1 / 60)) and right["high"] == 1.0
    # every subject half right: every bootstrap draw is 0.5, so the exact interval
    flat = interval_dict(np.tile([1.0, 0.0], 40), np.repeat(np.arange(40), 2))
    assert bootstrap_interval(np.tile([1.0, 0.0], 40), np.repeat(np.arange(40), 2)) == (0.5, 0.5)
    assert flat["method"] == "exact" and flat["low"] < 0.5 < flat["high"]
    # values that are no proportion keep the bootstrap at any size
    assert interval_dict([2.0, 3.0, 4.0])["method"] == "bootstrap"
    assert interval_dict([])["method"] is None
    with pytest.raises(StatsError, match="small_n must be"):
        interval_dict([1, 0], small_n=-1)


def test_small_groups_never_get_a_zero_width_interval() -> None:
    correct = [1, 1, 1, 1, 0, 1, 0, 1, 1, 1]
    groups = ["all right"] * 4 + ["one wrong"] + ["mixed"] * 5
    table = group_accuracy(correct, groups)
    assert (table["low"] < table["high"]).all()
    assert set(table["method"]) == {"exact"}
    gap = largest_gap([1, 1, 1, 1, 1, 1], ["x", "x", "x", "y", "y", "y"])
    assert gap is not None and gap["value"] == 0.0 and gap["method"] == "mover"
    assert gap["low"] < 0.0 < gap["high"]


# -- groups ----------------------------------------------------------------------------------
def _ten_rows() -> tuple[list[int], list[object], list[str]]:
    correct = [1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    groups = ["a", "a", "a", "a", "b", "b", "b", "b", "b", None]
    clusters = ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s5", "s5", "s6"]
    return correct, groups, clusters


def test_group_accuracy_by_hand() -> None:
    correct, groups, clusters = _ten_rows()
    # small_n=0: the bootstrap for every group, whatever its size (the hand computation)
    table = group_accuracy(correct, groups, clusters, small_n=0)
    assert list(table.columns) == [
        "group", "count", "subjects", "value", "low", "high", "units", "method"
    ]  # fmt: skip
    assert table["group"].tolist() == ["a", "b"]  # the row without a group is left out
    assert table["count"].tolist() == [4, 5]
    assert table["subjects"].tolist() == [2, 3] == table["units"].tolist()
    assert table["value"].tolist() == pytest.approx([0.75, 0.6])
    assert table["method"].tolist() == ["bootstrap", "bootstrap"]
    # a: s1 (1, 1) and s2 (0, 1); draws s1s1 = 1, s1s2 = .75, s2s2 = .5 -> (0.5, 1)
    assert (table.loc[0, "low"], table.loc[0, "high"]) == (0.5, 1.0)
    # b's interval is its own rows' cluster bootstrap
    b = [i for i, g in enumerate(groups) if g == "b"]
    expected = bootstrap_interval([correct[i] for i in b], [clusters[i] for i in b])
    assert (table.loc[1, "low"], table.loc[1, "high"]) == expected
    # the default rule: 2 and 3 subjects are under SMALL_N, so Clopper-Pearson with the
    # subjects as trials (a: 0.75 x 2 of 2, b: 0.6 x 3 of 3)
    table = group_accuracy(correct, groups, clusters)
    assert table["method"].tolist() == ["exact", "exact"]
    assert (table.loc[0, "low"], table.loc[0, "high"]) == pytest.approx(exact_interval(1.5, 2))
    assert (table.loc[1, "low"], table.loc[1, "high"]) == pytest.approx(exact_interval(1.8, 3))

    by_rows = group_accuracy(correct, pd.Categorical(groups, categories=["b", "a"]))
    assert by_rows["group"].tolist() == ["b", "a"]  # a Categorical's order
    assert by_rows["subjects"].tolist() == [None, None]
    with pytest.raises(StatsError, match="groups has 3 rows but correct has 10"):
        group_accuracy(correct, ["a", "b", "c"])


def test_largest_gap_finds_a_planted_gap() -> None:
    a_correct, a_ids = _subjects([1] * 20, faces=5, prefix="a")  # group A: 100 %
    b_correct, b_ids = _subjects([1, 0] * 10, faces=5, prefix="b")  # group B: 50 %
    correct = np.concatenate([a_correct, b_correct])
    ids = np.concatenate([a_ids, b_ids])
    groups = ["A"] * 100 + ["B"] * 100
    gap = largest_gap(correct, groups, ids)
    assert gap is not None
    assert (gap["high_group"], gap["low_group"], gap["n_groups"]) == ("A", "B", 2)
    assert gap["value"] == pytest.approx(0.5)
    assert (gap["high_accuracy"], gap["low_accuracy"]) == (1.0, 0.5)
    assert 0 < gap["low"] < 0.5 < gap["high"] <= 1.0
    # A is all right: its exact interval, and the gap's from the two groups' intervals
    assert gap["method"] == "mover"
    a = interval_dict(a_correct, a_ids)
    b = interval_dict(b_correct, b_ids)
    assert (a["method"], b["method"]) == ("exact", "exact")  # 20 subjects each
    assert gap["low"] == pytest.approx(0.5 - np.hypot(1 - a["low"], b["high"] - 0.5))
    assert gap["high"] == pytest.approx(min(1.0, 0.5 + np.hypot(0, 0.5 - b["low"])))
    # with the bootstrap forced (small_n=0) the paired draws still exclude 0
    paired = largest_gap(correct, groups, ids, small_n=0)
    assert paired is not None and paired["method"] == "mover"  # A is still all right


def test_largest_gap_finds_none_where_none_is_planted() -> None:
    a_correct, a_ids = _subjects([1, 0] * 10, faces=5, prefix="a")  # 50 %
    b_correct, b_ids = _subjects([1] * 11 + [0] * 9, faces=5, prefix="b")  # 55 %
    correct, ids = np.concatenate([a_correct, b_correct]), [*a_ids, *b_ids]
    gap = largest_gap(correct, ["A"] * 100 + ["B"] * 100, ids, small_n=0)
    assert gap is not None and (gap["high_group"], gap["low_group"]) == ("B", "A")
    assert gap["value"] == pytest.approx(0.05)
    assert gap["low"] < 0 < gap["high"] and gap["method"] == "bootstrap"
    gap = largest_gap(correct, ["A"] * 100 + ["B"] * 100, ids)  # 20 subjects: exact ends
    assert gap is not None and gap["method"] == "mover" and gap["low"] < 0 < gap["high"]


def test_largest_gap_min_count_ties_and_draws_without_a_group() -> None:
    correct, ids = _subjects([1] * 20, faces=5, prefix="a")
    correct = np.append(correct, 0.0)  # group C: one wrong face of subject a0
    ids = np.append(ids, "a0")
    groups = ["A"] * 100 + ["C"]
    assert largest_gap(correct, groups, ids, min_count=2) is None  # C skipped: one group left
    gap = largest_gap(correct, groups, ids)
    assert gap is not None and (gap["high_group"], gap["low_group"]) == ("A", "C")
    # draws without a0 have no C row and are skipped; every other draw gives 1 - 0, a
    # paired bootstrap of no width: the interval comes from the groups' exact intervals
    assert gap["value"] == 1.0 and gap["method"] == "mover"
    a, c = interval_dict(correct[:100], ids[:100]), interval_dict([0.0], ["a0"])
    assert (gap["low"], gap["high"]) == pytest.approx(
        (1.0 - np.hypot(1.0 - a["low"], c["high"]), 1.0)
    )
    assert gap["low"] < 1.0
    tie = largest_gap([1, 0, 1, 0], ["x", "x", "y", "y"])
    assert tie is not None and (tie["low_group"], tie["high_group"], tie["value"]) == (
        "x",
        "y",
        0.0,
    )
    assert largest_gap([1, 0], ["x", None]) is None


# -- abstention ------------------------------------------------------------------------------
def test_accuracy_coverage_by_hand_with_ties() -> None:
    confidence = [0.6, 0.9, 0.8, 0.8, 0.5, 0.9]
    correct = [0, 1, 1, 0, 0, 1]
    curve = accuracy_coverage(confidence, correct)
    assert list(curve.columns) == ["threshold", "coverage", "accuracy", "kept"]
    # sorted: .9 .9 | .8 .8 | .6 | .5 with right, right | right, wrong | wrong | wrong
    assert curve["threshold"].tolist() == [0.9, 0.8, 0.6, 0.5]  # one row per tied value
    assert curve["kept"].tolist() == [2, 4, 5, 6]
    assert curve["coverage"].tolist() == pytest.approx([2 / 6, 4 / 6, 5 / 6, 1.0])
    assert curve["accuracy"].tolist() == pytest.approx([1.0, 0.75, 0.6, 0.5])
    # risks 0, .25, .4, .5; flat at 0 below coverage 1/3, trapezoids above it
    expected = (1 / 3) * 0.25 / 2 + (1 / 6) * (0.25 + 0.4) / 2 + (1 / 6) * (0.4 + 0.5) / 2
    assert selective_risk_area(curve) == pytest.approx(expected)


def test_uninformative_confidence_has_one_row_and_its_error_as_area() -> None:
    curve = accuracy_coverage([0.7] * 4, [1, 0, 1, 1])
    assert curve.to_dict("records") == [
        {"threshold": 0.7, "coverage": 1.0, "accuracy": 0.75, "kept": 4}
    ]
    assert selective_risk_area(curve) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    random_curve = accuracy_coverage(rng.random(500), rng.random(500) < 0.8)
    assert random_curve["coverage"].is_monotonic_increasing  # thresholds fall down the table
    assert random_curve["threshold"].is_monotonic_decreasing
    assert random_curve["coverage"].iloc[-1] == 1.0
    assert np.isnan(selective_risk_area(accuracy_coverage([], [])))
    with pytest.raises(StatsError, match="confidence has 2 rows but correct has 1"):
        accuracy_coverage([0.5, 0.6], [1])


# -- minors and adults -----------------------------------------------------------------------
def test_minors_rates_on_adience8_by_hand() -> None:
    labels = load_label_set("adience8")
    true = np.array([0, 1, 2, 2, 3, 4, 5, 7, -1, 6])
    predicted = np.array([4, 1, 2, 6, 0, 1, 5, 7, 0, 3])
    rates = minors_rates(true, predicted, labels)
    # minors (0-2, 4-6, 8-12): rows 0-3, called adult (25-32 and up) in rows 0 and 3
    minors = rates["minors_called_adults"]
    assert (minors["value"], minors["n"]) == (0.5, 4)
    assert minors["low"] <= 0.5 <= minors["high"]
    # adults: rows 5, 6, 7, 9; row 5 called 4-6; row 9 called 15-20, which is neither side;
    # row 4 (true 15-20) straddles 18 and row 8 has no label: both left out
    adults = rates["adults_called_minors"]
    assert (adults["value"], adults["n"]) == (0.25, 4)


def test_minors_rates_on_coarse3_by_hand_with_subjects() -> None:
    labels = load_label_set("coarse3")  # child < 13 minor, teen 13-19 straddles, adult >= 20
    true = np.array([0, 0, 0, 1, 2, 2, 2])
    predicted = np.array([2, 0, 1, 2, 0, 1, 2])
    subjects = ["p", "p", "q", "r", "s", "t", "u"]
    rates = minors_rates(true, predicted, labels, subjects, small_n=0)
    # children: p = (called adult, not), q = (not): draws pp .5, pq 1/3, qq 0 -> (0, .5)
    assert rates["minors_called_adults"] == {
        "value": 1 / 3, "low": 0.0, "high": 0.5, "n": 3, "units": 2, "method": "bootstrap"
    }  # fmt: skip
    # the default: 2 subjects, Clopper-Pearson of 1/3 x 2 subjects of 2
    rates = minors_rates(true, predicted, labels, subjects)
    low, high = exact_interval(2 / 3, 2)
    assert rates["minors_called_adults"] == {
        "value": 1 / 3, "low": low, "high": high, "n": 3, "units": 2, "method": "exact"
    }  # fmt: skip
    # adults: s called child, t called teen (neither), u right
    assert rates["adults_called_minors"]["value"] == pytest.approx(1 / 3)
    assert rates["adults_called_minors"]["n"] == 3

    no_child = minors_rates(np.array([1, 2]), np.array([0, 0]), labels)
    assert no_child["minors_called_adults"] == {
        "undefined": "no face in this set is known to be under 18 (each face's true class "
        "straddles 18, lies entirely at or above 18 or is unknown)"
    }
    assert no_child["adults_called_minors"]["value"] == 1.0


def test_minors_rates_undefined_by_the_set() -> None:
    coarse2 = load_label_set("coarse2")  # adult starts at 13: no class wholly >= 18
    rates = minors_rates(np.array([0, 1]), np.array([1, 1]), coarse2)
    assert rates["minors_called_adults"] == {
        "undefined": "no class of coarse2 lies entirely at or above 18, so no face can be "
        "called an adult"
    }
    assert rates["adults_called_minors"] == {
        "undefined": "no class of coarse2 lies entirely at or above 18"
    }
    adience8 = load_label_set("adience8")
    rates = minors_rates(np.array([0, 4]), np.array([4, 0]), adience8, threshold=2)
    assert rates["minors_called_adults"] == {
        "undefined": "no class of adience8 lies entirely under 2"
    }
    with pytest.raises(StatsError, match="holds class 3 but label set 'coarse3' has 3"):
        minors_rates(np.array([3]), np.array([0]), load_label_set("coarse3"))
    with pytest.raises(StatsError, match="must be class indices"):
        minors_rates(np.array([0.5]), np.array([0.5]), adience8)
