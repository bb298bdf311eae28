"""The confidence interval that decides the benchmarks' time targets (benchmark/paired.py)."""

from __future__ import annotations

import random

import pytest

from benchmark.paired import median_interval, verdict


def test_the_interval_uses_the_order_statistics_of_the_binomial_tables():
    # n = 9: the 2nd and 8th values (coverage 96 %); n = 12: 3rd and 10th; n = 30: 10th, 21st
    assert median_interval(range(1, 10)) == (2, 8)
    assert median_interval(range(1, 13)) == (3, 10)
    assert median_interval(range(1, 31)) == (10, 21)
    # fewer than 6 values cannot reach 95 %: the whole range, in any order
    assert median_interval([5.0, -3.0, 40.0]) == (-3.0, 40.0)
    assert median_interval([7.0]) == (7.0, 7.0)
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])


def test_the_interval_holds_the_true_median_about_95_times_in_100():
    """Samples of a skewed distribution whose median is known (exponential: ln 2)."""
    rng = random.Random(13)
    true_median = 0.6931471805599453
    trials = 2000
    held = 0
    for _ in range(trials):
        low, high = median_interval([rng.expovariate(1.0) for _ in range(20)])
        held += low <= true_median <= high
    assert 0.94 <= held / trials <= 0.985


def test_the_interval_narrows_as_pairs_are_added():
    rng = random.Random(7)
    widths = []
    for n in (10, 40, 160):
        low, high = median_interval([rng.gauss(30.0, 100.0) for _ in range(n)])
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_a_target_is_decided_only_when_the_interval_is_on_one_side_of_its_limit():
    assert verdict((10.0, 50.0), 55.0) is True
    assert verdict((56.0, 90.0), 55.0) is False
    assert verdict((10.0, 90.0), 55.0) == "undecided"
    assert verdict((55.0, 55.0), 55.0) is True
