"""Counting rules: which images a run's records count as clean-correct, adversarially correct and robust.

The rules are applied by the summary to the records, so a committed run folder is re-summarised under new
rules without recomputing anything (its records keep every vote):

* **Votes.** An image's defended prediction is the majority vote of R purifications. A vote whose top count
  is shared by the true label and another class is *wrong* under ``run.ties: wrong`` (the default) and goes to
  the lowest label under ``run.ties: lowest`` (``argmax``, what :func:`hetpure.majority_vote` and ``predict``
  return). Clean and adversarial votes alike.
* **Robust accuracy** (AutoAttack's convention, Croce & Hein 2020): an image is robust when its clean
  evaluation is correct **and** every adversarial evaluation of every attack that ran on it is correct.
* **Adversarial accuracy**: every adversarial evaluation correct, whatever the clean evaluation says — the
  quantity hetpure 0.1 reported as robust accuracy (with ``ties: lowest``).
* **Worst case of K**: robust, and correct in each of the K independent defended evaluations of every
  adversarial example.

A record of a single-attack run holds one outcome in its top-level fields (``adversarial_votes``,
``worst_case_correct``); a record of an ensemble run holds one outcome per attack under ``attacks`` (an
attack that skipped the image, because it was already broken or clean-wrong, has ``attacked: false``).
:func:`outcomes` reads both layouts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .stats import mcnemar_p, wilson_interval

TIES = ("wrong", "lowest")

#: The counting rules in words, for the first lines of every summary.
RULES = {
    "robust": "robust = clean evaluation correct and every adversarial evaluation of every attack correct "
              "(AutoAttack's convention); adversarial = every adversarial evaluation correct, clean ignored",
    "wrong": "a majority vote whose top count the true label shares with another class counts as wrong",
    "lowest": "a majority vote whose top count is shared goes to the lowest label (argmax)",
}


def vote_correct(votes: list[int], label: int, ties: str = "wrong") -> bool:
    """Whether a majority vote with these per-class ``votes`` is the true ``label`` under the ties rule.

    >>> vote_correct([3, 3, 2], 0, "wrong"), vote_correct([3, 3, 2], 0, "lowest"), vote_correct([3, 3, 2], 1, "lowest")
    (False, True, False)
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    top = max(votes)
    if votes[label] != top:
        return False
    if ties == "lowest":
        return votes.index(top) == label
    return sum(1 for v in votes if v == top) == 1


def clean_correct(record: dict[str, Any], ties: str = "wrong") -> bool:
    """The clean evaluation of a record is correct (from its votes when it holds them)."""
    label = int(record["label"])
    if record.get("clean_votes"):
        return vote_correct(record["clean_votes"], label, ties)
    return int(record["clean_prediction"]) == label


def outcomes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's per-attack outcomes: ``attacks`` of an ensemble record, else one outcome built from the
    top-level fields of a single-attack record (hetpure 0.1's layout included)."""
    if "attacks" in record:
        return list(record["attacks"])
    return [{
        "name": record.get("attack_name"),
        "attacked": True,
        "prediction": record.get("adversarial_prediction"),
        "votes": record.get("adversarial_votes"),
        "worst_case_correct": record.get("worst_case_correct"),
        "worst_case_correct_strict": record.get("worst_case_correct_strict"),
        "worst_case_k": record.get("worst_case_k", 1),
        **({"forward_passes": record["attack_forward_passes"]} if "attack_forward_passes" in record else {}),
        **({"first_broken_at": record["first_broken_at"]} if "first_broken_at" in record else {}),
    }]


def outcome_correct(outcome: dict[str, Any], label: int, ties: str = "wrong") -> bool:
    """One attack's defended (majority-vote) evaluation of its adversarial example is correct."""
    if outcome.get("votes"):
        return vote_correct(outcome["votes"], label, ties)
    return int(outcome["prediction"]) == label


def outcome_worst_case(outcome: dict[str, Any], label: int, ties: str = "wrong") -> bool:
    """Correct in all K defended evaluations of one attack's adversarial example.

    Records store the count of correct evaluations under both rules (``worst_case_correct``: lowest label,
    ``worst_case_correct_strict``: ties wrong). Older records hold only the first; with K = 1 the strict count
    is recomputed from the votes, with K > 1 the stored count is used (it can only be higher: an upper bound).
    """
    k = int(outcome.get("worst_case_k") or 1)
    if ties == "wrong" and outcome.get("worst_case_correct_strict") is not None:
        return int(outcome["worst_case_correct_strict"]) == k
    if ties == "wrong" and k == 1 and outcome.get("votes"):
        return vote_correct(outcome["votes"], label, ties)
    if outcome.get("worst_case_correct") is None:
        return outcome_correct(outcome, label, ties)
    return int(outcome["worst_case_correct"]) == k


def image_status(record: dict[str, Any], ties: str = "wrong") -> dict[str, Any]:
    """Per image: clean, adversarial, robust, worst-case correctness and the first attack that broke it.

    ``broken_by`` is the position of the first attack (in the ensemble's order) whose defended evaluation is
    wrong, or None; an attack that did not run on the image (``attacked: false``) neither breaks nor saves it.
    """
    label = int(record["label"])
    clean = clean_correct(record, ties)
    ran = [(j, o) for j, o in enumerate(outcomes(record)) if o.get("attacked", True)]
    wrong = [j for j, o in ran if not outcome_correct(o, label, ties)]
    # a replayed attack with no saved example for an image still standing: never faced it, so never robust
    unresolved = any(o.get("unresolved") for o in outcomes(record))
    adversarial = not wrong and not unresolved
    worst = all(outcome_worst_case(o, label, ties) for _, o in ran)
    return {"clean": clean, "adversarial": adversarial, "robust": clean and adversarial,
            "worst_case": clean and adversarial and worst, "broken_by": wrong[0] if wrong else None}


def _rate(hits: int, n: int) -> tuple[float, list[float]]:
    return (hits / n if n else math.nan), list(wilson_interval(hits, n))


def accuracies(records: Iterable[dict[str, Any]], ties: str = "wrong",
               attack_names: list[str] | None = None) -> dict[str, Any]:
    """The accuracies of a set of records under the counting rules (see the module docstring).

    Returns ``clean_accuracy``, ``adversarial_accuracy``, ``robust_accuracy``, ``robust_accuracy_worst_case``
    (each with its 95% Wilson interval under ``…_ci95``) and, per attack of the ensemble, how many images it
    ran on, how many it broke first and the robust accuracy after it (AutoAttack's running column).

    >>> r = {"label": 1, "clean_votes": [0, 2], "adversarial_votes": [1, 1], "worst_case_correct": 1,
    ...      "worst_case_k": 1, "clean_prediction": 1, "adversarial_prediction": 0}
    >>> a = accuracies([r], "wrong"); a["clean_accuracy"], a["robust_accuracy"]
    (1.0, 0.0)
    """
    rs = list(records)
    n = len(rs)
    status = [image_status(r, ties) for r in rs]
    out: dict[str, Any] = {"n": n, "ties": ties}
    for key in ("clean", "adversarial", "robust"):
        out[f"{key}_accuracy"], out[f"{key}_accuracy_ci95"] = _rate(sum(s[key] for s in status), n)
    out["robust_accuracy_worst_case"], out["robust_accuracy_worst_case_ci95"] = _rate(
        sum(s["worst_case"] for s in status), n)
    count = max((len(outcomes(r)) for r in rs), default=1)
    names = attack_names or [None] * count
    per_attack = []
    robust = sum(s["clean"] for s in status)
    for j in range(count):
        attacked = sum(1 for r in rs if j < len(outcomes(r)) and outcomes(r)[j].get("attacked", True))
        broken = sum(1 for s in status if s["clean"] and s["broken_by"] == j)
        robust -= broken
        alone = [outcome_correct(outcomes(r)[j], int(r["label"]), ties) and clean_correct(r, ties)
                 for r in rs if j < len(outcomes(r)) and outcomes(r)[j].get("attacked", True)]
        kept = [outcomes(r)[j] for r in rs if j < len(outcomes(r)) and outcomes(r)[j].get("first_broken_at", -1) >= 0]
        still = [o for o, r in ((outcomes(r)[j], r) for r in rs if j < len(outcomes(r)))
                 if o.get("first_broken_at", -1) >= 0 and not outcome_correct(o, int(r["label"]), ties)]
        per_attack.append({
            "attack": names[j] if j < len(names) else None, "attacked": attacked, "broke": broken,
            "robust_accuracy_after": robust / n if n else math.nan,
            # every image attacked (ensemble: all, or a single attack): the attack's own robust accuracy
            **({"robust_accuracy_alone": sum(alone) / n} if attacked == n and n else {}),
            # keep: first_broken — of the examples a judge found wrong, how many the fresh evaluation gets wrong too
            **({"first_broken": {"kept": len(kept), "still_wrong_on_rescore": len(still),
                                 "rate": len(still) / len(kept)}} if kept else {}),
        })
    out["per_attack"] = per_attack
    unresolved = sum(1 for r in rs if any(o.get("unresolved") for o in outcomes(r)))
    if unresolved:  # rescorings: images counted not robust because a later attack has no example for them
        out["unresolved"] = unresolved
    return out


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
