"""``bench/cifar10_verdict.py``: the plan of the new rows and what R = 32 votes do to the verdict, on hand-made
records (no model runs), and ``merge_into`` keeping the rows the verdict adds."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def verdict(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("cifar10_verdict_under_test", BENCH / "cifar10_verdict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(index: int, label: int, correct: bool, runs: int = 8) -> dict[str, Any]:
    """A single-attack record whose clean vote is right and whose adversarial vote is right or wrong."""
    wrong = (label + 1) % 10
    votes = [0] * 10
    votes[label if correct else wrong] = runs
    clean = [0] * 10
    clean[label] = runs
    return {"index": index, "label": label, "clean_votes": clean, "adversarial_votes": votes,
            "clean_prediction": label, "adversarial_prediction": label if correct else wrong}


def test_plan_chains_the_attacks_and_branches_the_mask_attacks(verdict: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verdict, "base_of_chain", lambda defence, args: verdict.sources(defence, args))
    args = argparse.Namespace(out=str(tmp_path), sources=str(tmp_path / "src"), attacks=["pgd", "apgd-dlr"],
                              mask_attacks=["mask-pgd-restrict", "lowfreq-pgd"], eot=8)
    src = [tmp_path / "src/heterogeneous", tmp_path / "src/heterogeneous-exact"]
    steps = verdict.plan("heterogeneous", args)
    names = [(a, f.name, [c.name for c in cond]) for a, f, cond in steps]
    pgd, dlr = tmp_path / "verdict/heterogeneous-pgd-eot8", tmp_path / "verdict/heterogeneous-apgd-dlr-eot8"
    assert [s[0] for s in steps] == ["pgd", "apgd-dlr", "mask-pgd-restrict", "lowfreq-pgd"]
    assert steps[0][2] == src and steps[1][2] == [*src, pgd]
    # each mask-aware attack on what the whole chain left, not on another mask attack's survivors
    assert steps[2][2] == steps[3][2] == [*src, pgd, dlr], names
    assert [s[0] for s in verdict.plan("uniform-tl", args)] == ["pgd", "apgd-dlr"]


class FakeRun:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.identity: dict[str, Any] = {}  # a run on the full subset


@pytest.mark.parametrize(("exact_clean_of_2", "expected"), [(True, "raw"), (False, "combined")])
def test_the_chain_conditions_on_the_combination_when_an_image_would_be_missed(
        verdict: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_clean_of_2: bool, expected: str) -> None:
    # image 2 is robust in the surrogate row and correct under the exact row's attack; when the exact row's own
    # clean vote of it is wrong it is no survivor of the two rows although combine (the surrogate row's clean
    # vote) counts it robust, so the chain must condition on the combination, brought up to date first
    root = tmp_path / "src"
    exact = [record(1, 1, True), record(2, 2, True), record(3, 3, False)]
    if not exact_clean_of_2:
        exact[1]["clean_votes"] = [0, 0, 0, 8, 0, 0, 0, 0, 0, 0]
    runs = {"uniform-tl": FakeRun([record(1, 1, True), record(2, 2, True), record(3, 3, True), record(7, 7, True)]),
            "uniform-tl-exact": FakeRun(exact)}
    combined: list[Any] = []
    monkeypatch.setattr(verdict, "load_run", lambda folder: runs[Path(folder).name])
    monkeypatch.setattr(verdict, "combine", lambda folders, out: combined.append((folders, out)))
    base = verdict.base_of_chain("uniform-tl", argparse.Namespace(sources=str(root)))
    raw = [root / "uniform-tl", root / "uniform-tl-exact"]
    if expected == "raw":
        assert base == raw and not combined
    else:
        assert base == [root / "combined/uniform-tl-surrogate+exact"] and combined == [(raw, base[0])]


def test_vote_noise_counts_flips_and_unresolved_images(verdict: Any) -> None:
    # images 1, 2, 3 survived the committed rows; PGD breaks 1 at R = 8, APGD-DLR (on 2, 3) breaks 3.
    # At R = 32: PGD's example of 1 is right (so 1 is unresolved: APGD-DLR never attacked it), APGD-DLR's
    # example of 2 is wrong (2 broken), of 3 right (3 robust).
    pgd8 = [record(1, 0, False), record(2, 1, True), record(3, 2, True)]
    pgd32 = [record(1, 0, True, 32), record(2, 1, True, 32), record(3, 2, True, 32)]
    dlr8 = [record(2, 1, True), record(3, 2, False)]
    dlr32 = [record(2, 1, False, 32), record(3, 2, True, 32)]
    noise = verdict.vote_noise([("pgd", pgd8, pgd32), ("apgd-dlr", dlr8, dlr32)])
    assert noise["images"] == 3
    assert noise["at_r8"] == {1: "broken", 2: "robust", 3: "broken"}
    assert noise["at_r32"] == {1: "unresolved", 2: "broken", 3: "robust"}
    assert noise["per_row"] == [
        {"attack": "pgd", "attacked": 3, "correct_r8": 2, "correct_r32": 3, "r8_only": 0, "r32_only": 1},
        {"attack": "apgd-dlr", "attacked": 2, "correct_r8": 1, "correct_r32": 1, "r8_only": 1, "r32_only": 1}]


def test_vote_noise_refuses_an_unfinished_rescoring(verdict: Any) -> None:
    with pytest.raises(SystemExit, match="rescoring of pgd"):
        verdict.vote_noise([("pgd", [record(1, 0, True), record(2, 0, True)], [record(1, 0, True, 32)])])


def test_vote_noise_verdict_bounds_and_pairs(verdict: Any) -> None:
    # four images; heterogeneous: image 0 broken by a committed row, 1 unresolved at R = 32, 2 broken at
    # R = 32 only, 3 robust; uniform: 0 robust at both, 1 unresolved, 2 and 3 broken by committed rows
    het_worst = [record(0, 0, False), record(1, 1, False), record(2, 2, True), record(3, 3, True)]
    uni_worst = [record(0, 0, True), record(1, 1, False), record(2, 2, False), record(3, 3, False)]
    noise = {"heterogeneous": {"at_r8": {1: "broken", 2: "robust", 3: "robust"},
                               "at_r32": {1: "unresolved", 2: "broken", 3: "robust"}, "per_row": []},
             "uniform-tl": {"at_r8": {0: "robust", 1: "broken"}, "at_r32": {0: "robust", 1: "unresolved"},
                            "per_row": []}}
    out = verdict.vote_noise_verdict({"heterogeneous": het_worst, "uniform-tl": uni_worst}, noise, 32)
    het = out["defences"]["heterogeneous"]
    assert (het["robust_r8"], het["robust_lower"], het["robust_upper"]) == (0.5, 0.25, 0.5)
    assert (het["unresolved"], het["robust_at_r8_broken_at_r32"], het["broken_at_r8_robust_at_r32"]) == (1, 1, 0)
    uni = out["defences"]["uniform-tl"]
    assert (uni["robust_r8"], uni["robust_lower"], uni["robust_upper"]) == (0.25, 0.25, 0.5)
    # bounds on heterogeneous − uniform: lower = heterogeneous {3} (unresolved broken) against uniform {0, 1}
    # (unresolved robust): 1 win, 2 losses; upper = {1, 3} against {0}: 2 wins, 1 loss
    assert {k: out["pair_lower"][k] for k in ("n", "wins", "losses")} == {"n": 4, "wins": 1, "losses": 2}
    assert out["pair_lower"]["difference"] == -0.25 and out["pair_lower"]["p_value"] == 1.0
    assert (out["pair_upper"]["wins"], out["pair_upper"]["losses"], out["pair_upper"]["difference"]) == (2, 1, 0.25)


def test_vote_noise_verdict_refuses_a_worst_row_that_disagrees(verdict: Any) -> None:
    noise = {d: {"at_r8": {0: "robust"}, "at_r32": {0: "robust"}, "per_row": []}
             for d in ("heterogeneous", "uniform-tl")}
    worst = {"heterogeneous": [record(0, 0, False)], "uniform-tl": [record(0, 0, True)]}
    with pytest.raises(SystemExit, match="heterogeneous-worst"):
        verdict.vote_noise_verdict(worst, noise, 32)


def test_merge_into_keeps_the_rows_it_does_not_order(verdict: Any, tmp_path: Path) -> None:
    target = tmp_path / "rows.json"
    target.write_text(json.dumps([{"defense": "heterogeneous-worst", "v": 1}, {"defense": "b", "v": 1}]))
    verdict.merge_into(target, [{"defense": "a", "v": 2}, {"defense": "b", "v": 2}], lambda r: r["defense"],
                       ("a", "b"))
    assert json.loads(target.read_text()) == [{"defense": "a", "v": 2}, {"defense": "b", "v": 2},
                                              {"defense": "heterogeneous-worst", "v": 1}]


def test_the_results_tables_render_the_new_sections(verdict: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("results_tables_under_test", BENCH / "results_tables.py")
    assert spec is not None and spec.loader is not None
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    pgd8, pgd32 = [record(1, 0, False), record(2, 1, True)], [record(1, 0, True, 32), record(2, 1, True, 32)]
    noise = {d: verdict.vote_noise([("pgd", pgd8, pgd32)]) for d in ("heterogeneous", "uniform-tl")}
    worst = {d: [record(0, 0, False), record(1, 0, False), record(2, 1, True)] for d in noise}
    entry = verdict.vote_noise_verdict(worst, noise, 32)
    attack = {"defence": "heterogeneous", "attack": "pgd", "settings": {"name": "pgd", "steps": 20, "eot": 8},
              "attacked": 2, "broke": 1, "core_hours": 0.5, "seconds_per_image": 900.0, "machine": "x86_64 test"}
    (tmp_path / "cifar10_verdict.json").write_text(json.dumps({"worst R32": [entry], "worst attacks": [attack]},
                                                              default=str))
    rendered = tables.vote_noise_tables()
    assert "| heterogeneous | pgd | 2 | 1 | 2 | 0 | 1 |" in rendered
    # image 2 robust at both R; image 1 right at R = 32 but never faced a later row: there is none, so robust
    assert "| heterogeneous | 3 | 33.3 | 66.7 – 66.7 | 0 | 0 | 1 |" in rendered
    assert "| heterogeneous vs uniform-tl | lower bound | 3 | +0.0 (0/0, p = 1) |" in rendered
    assert "| heterogeneous | pgd | steps 20, eot 8 | 2 | 1 | 0.50 | 900 | – | – | x86_64 test |" in \
        tables.worst_attacks_table()


def test_worst_command_keeps_every_flag_but_the_process_split(verdict: Any) -> None:
    argv = ["rows", "--n", "128", "--defences", "heterogeneous", "--attacks", "pgd", "apgd-dlr", "--mask-attacks",
            "lowfreq-pgd", "--out", "runs/x y", "--eot", "8", "--sources=runs/s"]
    assert verdict.worst_command(argv) == ("python bench/cifar10_verdict.py worst --n 128 --attacks pgd apgd-dlr "
                                           "--out 'runs/x y' --eot 8 --sources=runs/s")


def test_a_locked_row_is_retried_then_refused(verdict: Any) -> None:
    from hetpure.errors import RecordsError

    calls = []

    def job() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RecordsError("another hetpure run is writing into f (lock .hetpure.lock held); wait")
        return "done"

    assert verdict.when_unlocked(job, tries=5, wait_s=0) == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(RecordsError, match="another hetpure run"):
        verdict.when_unlocked(job, tries=2, wait_s=0)
