"""What paired measurements let a benchmark conclude about a time target.

A tracked process and the same process untracked, run right next to each other, form a pair:
their difference cancels a slow minute of the machine. The median of many differences is the
typical cost; its confidence interval says how sure that figure is. On this machine single
differences scatter by tens of ms (hundreds on steps of seconds), so a target is decided only
when the whole interval lies on one side of its limit, and called "undecided" otherwise. The
interval narrows as pairs are added (unlike the quartiles, which measure the scatter itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

CONFIDENCE = 0.95


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the k-th smallest and k-th
    largest value, with k the largest for which the median falls outside with probability at
    most ``1 - confidence`` (each value is below the median with probability 1/2, so the count
    below is binomial). With fewer than 6 values no k reaches 95 %: the whole range is given.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    cut = 0  # values left out at each end
    below = 1 / 2**n  # P(all but `cut` values fall below the median) = P(Binomial(n, 1/2) <= cut)
    while 2 * (below + comb(n, cut + 1) / 2**n) <= 1 - confidence:
        cut += 1
        below += comb(n, cut) / 2**n
    return ordered[cut], ordered[n - 1 - cut]


def interval_ms(seconds: Sequence[float]) -> list[float]:
    """:func:`median_interval` of differences in seconds, in ms to 0.1, as the tables show it."""
    return [round(bound * 1000, 1) for bound in median_interval(seconds)]


def verdict(interval: Sequence[float], limit: float) -> bool | str:
    """True when the whole interval is within ``limit``, False when it is all above,
    ``"undecided"`` when it straddles the limit."""
    low, high = interval
    if high <= limit:
        return True
    return False if low > limit else "undecided"
