"""Statistics of evaluation records: Wilson intervals, exact McNemar tests, paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


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


def paired_comparison(records: Iterable[dict[str, Any]], reference: Iterable[dict[str, Any]],
                      ties: str = "wrong") -> dict[str, Any]:
    """Compare two evaluations image by image on the images both hold (same data, ideally the same attack).

    Correctness follows the counting rules (:mod:`hetpure.evaluation.counting`): clean = the clean vote elects
    the label, robust = clean-correct and every adversarial evaluation correct, a shared top vote wrong under
    ``ties="wrong"``. For each: ``wins`` = images only ``records`` gets right, ``losses`` = images only
    ``reference`` gets right, ``difference`` = (wins − losses) / n and the exact McNemar p-value. Pairing
    removes the between-image variance that two independent intervals carry.

    When both hold the R votes of each image (``clean_votes`` / ``adversarial_votes``), also the mean
    paired difference of the true class's vote share, ``vote_share_difference`` = mean_i (v_a,i − v_b,i)
    with v = votes for the label / R, and its standard error ``vote_share_se`` (sample sd / √n). It sees
    what the majority vote rounds away: a change of a few votes per image, which flips only near-ties.

    >>> hit = {"index": 0, "label": 1, "clean_votes": [0, 2], "adversarial_votes": [0, 2]}
    >>> miss = {"index": 0, "label": 1, "clean_votes": [0, 2], "adversarial_votes": [2, 0]}
    >>> c = paired_comparison([hit], [miss]); (c["robust"]["wins"], c["robust"]["losses"], c["clean"]["wins"])
    (1, 0, 0)
    """
    from .counting import image_status

    a = {int(r["index"]): r for r in records}
    b = {int(r["index"]): r for r in reference}
    common = sorted(set(a) & set(b))
    status_a = {i: image_status(a[i], ties) for i in common}
    status_b = {i: image_status(b[i], ties) for i in common}
    result: dict[str, Any] = {"n": len(common), "ties": ties}
    for key, votes in (("clean", "clean_votes"), ("robust", "adversarial_votes")):
        ok_a = [status_a[i][key] for i in common]
        ok_b = [status_b[i][key] for i in common]
        wins = sum(x and not y for x, y in zip(ok_a, ok_b))
        losses = sum(y and not x for x, y in zip(ok_a, ok_b))
        result[key] = {"wins": wins, "losses": losses, "difference": (wins - losses) / len(common) if common else 0.0,
                       "p_value": mcnemar_p(wins, losses)}
        if common and all(a[i].get(votes) and b[i].get(votes) for i in common):
            d = [_vote_share(a[i], votes) - _vote_share(b[i], votes) for i in common]
            mean = sum(d) / len(d)
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
            result[key].update(vote_share_difference=mean, vote_share_se=sd / math.sqrt(len(d)))
    return result


def _vote_share(record: dict[str, Any], votes: str) -> float:
    counts = record[votes]
    return counts[int(record["label"])] / max(1, sum(counts))
