"""Statistics: Wilson intervals and exact McNemar tests (the paired comparison of records is in counting.py)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: a Binomial(wins + losses, 1/2) test on the discordant pairs."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, j) for j in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**m)
