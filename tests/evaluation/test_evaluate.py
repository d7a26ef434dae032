"""The evaluation harness: outputs, resumability, config errors, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import config

from hetpure import cli
from hetpure.errors import ConfigError, HetpureError
from hetpure.evaluate import (
    evaluate,
    mcnemar_p,
    paired_comparison,
    parse_set,
    read_records,
    resolve_config,
    wilson_interval,
)

# ``assets`` (tiny image folder and UNet) is conftest.py's module-scoped fixture; ``config`` builds a run on it.


def test_outputs_and_resume(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = evaluate(config(assets, out))
    records = read_records(out / "records.jsonl")
    assert summary["n"] == 5 and len(records) == 5
    assert {"clean_accuracy", "robust_accuracy", "robust_accuracy_worst_case", "n", "config"} <= set(summary)
    assert summary["eps_calls"]["attack_per_forward_pass"] == 2
    assert summary["eps_calls"]["defence_per_purification"] == 4
    assert sorted(r["index"] for r in records) == sorted(r["index"] for r in records if r["index"] < 6)
    r = records[0]
    assert {"index", "label", "clean_prediction", "adversarial_prediction", "clean_votes", "adversarial_votes",
            "settings_hash"} <= set(r)
    assert sum(r["clean_votes"]) == 2 and r["worst_case_correct"] <= 2
    assert all(rec["perturbation_linf"] <= 8 / 255 + 1e-6 for rec in records)
    md = (out / "summary.md").read_text()
    assert "robust accuracy" in md and "95% CI" in md and "differs from the evaluated one" in md
    assert (out / "examples.png").exists()
    full = (out / "records.jsonl").read_text()

    # rerunning skips everything
    again = evaluate(config(assets, out))
    assert (out / "records.jsonl").read_text() == full and again["images_this_session"] == 0

    # a kill after the first batch, mid-write of the second: the torn line is dropped and the rest redone
    lines = full.splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[:2]) + lines[2][:17])
    evaluate(config(assets, out))
    resumed = read_records(out / "records.jsonl")
    assert sorted(map(json.dumps, untimed(resumed))) == sorted(map(json.dumps, untimed(read_records_text(full))))
    assert all(r["seconds"] > 0 for r in resumed) and summary["seconds_per_image"] > 0


def test_a_run_grows_and_shrinks_with_n(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    small = evaluate(config(assets, out, data={"n": 3}))
    first = read_records(out / "records.jsonl")
    assert small["n"] == 3 and len(first) == 3
    grown = evaluate(config(assets, out, data={"n": 5}))  # the same folder: the 3 finished images are kept
    records = read_records(out / "records.jsonl")
    assert grown["n"] == 5 and len(records) == 5
    assert grown["images_this_session"] == 3  # the partial batch [2, 3] is redone; only image 3 is added
    assert untimed(records[:3]) == untimed(first)
    # the first 4 images form the same two batches at n = 4 and n = 5, so their records agree with a fresh run
    fresh = evaluate(config(assets, tmp_path / "fresh", data={"n": 4}))
    fresh_records = {r["index"]: r for r in untimed(read_records(tmp_path / "fresh" / "records.jsonl"))}
    assert all(fresh_records[r["index"]] == r for r in untimed(records[:2]))
    assert fresh["n"] == 4
    shrunk = evaluate(config(assets, out, data={"n": 2}))  # a smaller n summarises only its own images
    assert shrunk["n"] == 2 and shrunk["images_this_session"] == 0
    assert len(read_records(out / "records.jsonl")) == 5
    with pytest.raises(HetpureError, match="other settings"):  # another seed is another subset: refused
        evaluate(config(assets, out, data={"n": 2, "seed": 1}))


def read_records_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def hand_counted_robust(records: list[dict]) -> float:
    """Robust accuracy counted by hand: the clean and the adversarial vote each elect the label alone."""
    def elected(votes: list[int], label: int) -> bool:
        return votes[label] == max(votes) and votes.count(max(votes)) == 1

    return sum(elected(r["clean_votes"], r["label"]) and elected(r["adversarial_votes"], r["label"])
               for r in records) / len(records)


def untimed(records: list[dict]) -> list[dict]:
    """Records without their wall-clock field (the only one a rerun may change)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_other_settings_in_the_same_folder_are_refused(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    evaluate(config(assets, out, data={"n": 2}, attack={"name": "fgsm"}))
    with pytest.raises(HetpureError, match="other settings"):
        evaluate(config(assets, out, data={"n": 2}, attack={"name": "fgsm", "eps": 0.1}))


def test_undefended_and_uniform(assets: Path, tmp_path: Path) -> None:
    s = evaluate(config(assets, tmp_path / "none", defense={"method": "none"}, attack={"name": "fgsm"}))
    assert s["eps_calls"]["defence_per_purification"] == 0
    u = evaluate(config(assets, tmp_path / "uni", defense={"method": "uniform", "t_star": 0.1},
                        attack={"name": "none"}))
    assert u["clean_accuracy"] == u["robust_accuracy"]


def test_config_errors(assets: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="attack.stepz"):
        resolve_config(config(assets, tmp_path, attack={"stepz": 3}))
    with pytest.raises(ConfigError, match="unknown config section 'model'"):
        resolve_config({**config(assets, tmp_path), "model": {}})
    with pytest.raises(ConfigError, match="attack.gradient"):
        resolve_config(config(assets, tmp_path, attack={"gradient": "magic"}))
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["steps=3"])
    assert parse_set(["attack.eps=0.5", "run.device=cpu"]) == {"attack": {"eps": 0.5}, "run": {"device": "cpu"}}


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    assert wilson_interval(0, 10)[0] == 0.0


def test_cli_evaluate_with_set_and_sanity(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config(assets, tmp_path / "cli", data={"n": 2})))
    code = cli.main(["evaluate", str(cfg_file), "--set", "attack.name=fgsm", "--set", "run.sanity_n=2",
                     "--sanity"])
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["config"]["attack"]["name"] == "fgsm"
    checks = summary["sanity"]["checks"]
    assert "undefended classifier falls to <= 2%" in checks
    assert "large budget drives accuracy to chance or below" in checks
    assert code == 0
    strict = cli.main(["evaluate", str(cfg_file), "--set", "attack.name=fgsm", "--set", "run.sanity_n=2",
                       "--sanity", "--strict"])
    assert strict == (0 if summary["sanity"]["all_passed"] else 3)
    assert cli.main(["evaluate", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("attack", [
    {"name": "mask-pgd", "mask_mode": "weight", "attention_weight": 1.0},
    {"name": "lowfreq-pgd", "grid": 4, "upsample": "nearest"},
])
def test_adaptive_attacks_run_from_the_config(assets: Path, tmp_path: Path, attack: dict) -> None:
    s = evaluate(config(assets, tmp_path / attack["name"], data={"n": 2}, attack=attack))
    records = read_records(tmp_path / attack["name"] / "records.jsonl")
    assert s["n"] == 2 and s["robust_accuracy"] == hand_counted_robust(records)
    saved = json.loads((tmp_path / attack["name"] / "config.json").read_text())["config"]["attack"]
    assert {k: saved[k] for k in attack} == attack


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(12, 0) == pytest.approx(2 / 2**12)  # 12 discordant images all one way
    assert mcnemar_p(8, 10) == pytest.approx(0.814529, abs=1e-6)  # 2 * P(Binomial(18, 1/2) <= 8)
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(5, 1) == mcnemar_p(1, 5) == pytest.approx(0.21875)


def test_paired_comparison_counts_discordant_images() -> None:
    def rec(i: int, clean: int, adv: int) -> dict:
        return {"index": i, "label": 1, "clean_prediction": clean, "adversarial_prediction": adv}

    ours = [rec(0, 1, 1), rec(1, 1, 0), rec(2, 1, 1), rec(3, 0, 0), rec(9, 1, 1)]
    theirs = [rec(0, 1, 0), rec(1, 0, 0), rec(2, 1, 1), rec(3, 1, 1)]
    c = paired_comparison(ours, theirs)
    assert c["n"] == 4  # image 9 is only in one run
    assert (c["clean"]["wins"], c["clean"]["losses"]) == (1, 1) and c["clean"]["difference"] == 0.0
    assert (c["robust"]["wins"], c["robust"]["losses"]) == (1, 1) and c["robust"]["p_value"] == 1.0
    swapped = paired_comparison(theirs, ours)
    assert swapped["robust"]["wins"] == c["robust"]["losses"]
    assert "vote_share_difference" not in c["clean"]  # no votes in these records


def test_paired_comparison_vote_share_difference_and_standard_error() -> None:
    def rec(i: int, clean: list[int], adv: list[int]) -> dict:
        return {"index": i, "label": 1, "clean_prediction": 1, "adversarial_prediction": 0,
                "clean_votes": clean, "adversarial_votes": adv}

    # true-class shares of 4 votes: ours (3, 2, 4) / 4, theirs (1, 2, 4) / 4 -> differences 0.5, 0, 0
    ours = [rec(0, [1, 3], [2, 2]), rec(1, [2, 2], [4, 0]), rec(2, [0, 4], [3, 1])]
    theirs = [rec(0, [3, 1], [2, 2]), rec(1, [2, 2], [4, 0]), rec(2, [0, 4], [3, 1])]
    c = paired_comparison(ours, theirs)
    assert c["clean"]["vote_share_difference"] == pytest.approx(1 / 6)
    assert c["clean"]["vote_share_se"] == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))  # sd of (.5, 0, 0)
    assert c["robust"]["vote_share_difference"] == 0.0 and c["robust"]["vote_share_se"] == 0.0
    assert paired_comparison(theirs, ours)["clean"]["vote_share_difference"] == pytest.approx(-1 / 6)


def test_attack_through_resolves_over_the_defence(assets: Path, tmp_path: Path) -> None:
    """attack.through: keys it omits keep the defence's values; equal to the defence means no transfer."""
    cfg = resolve_config(config(assets, tmp_path, attack={"through": {"method": "uniform", "t_star": 0.2}}))
    through = cfg["attack"]["through"]
    assert through["method"] == "uniform" and through["t_star"] == 0.2
    assert through["ddim_steps"] == cfg["defense"]["ddim_steps"] == 20
    same = resolve_config(config(assets, tmp_path, attack={"through": {"method": "heterogeneous", "tau": 0.5}}))
    assert same["attack"]["through"] is None
    with pytest.raises(ConfigError, match="attack.through.t_lx"):
        resolve_config(config(assets, tmp_path, attack={"through": {"t_lx": 0.2}}))
    with pytest.raises(ConfigError, match="attack.through must be a mapping"):
        resolve_config(config(assets, tmp_path, attack={"through": "heterogeneous"}))
    with pytest.raises(ConfigError, match="attack.through.method"):
        resolve_config(config(assets, tmp_path, attack={"through": {"method": "sde"}}))


def test_transfer_evaluation_attacks_one_pipeline_and_scores_another(assets: Path, tmp_path: Path) -> None:
    """Crafted through heterogeneous, scored on uniform: the adversarial examples are exactly those of the
    heterogeneous run (same attack stream), the clean predictions exactly those of the uniform run, and the
    summary names both pipelines first."""
    uniform = {"method": "uniform", "t_star": 0.1, "ddim_steps": 20, "runs": 2}
    hetero = {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": 0.5, "ddim_steps": 20, "runs": 2}
    het = read_records_of(evaluate(config(assets, tmp_path / "het", defense=hetero)), tmp_path / "het")
    uni = read_records_of(evaluate(config(assets, tmp_path / "uni", defense=uniform)), tmp_path / "uni")
    out = tmp_path / "transfer"
    summary = evaluate(config(assets, out, defense=uniform, attack={"through": hetero}))
    tr = read_records_of(summary, out)
    assert [r["perturbation_l2"] for r in tr] == [r["perturbation_l2"] for r in het]
    assert [r["clean_votes"] for r in tr] == [r["clean_votes"] for r in uni]
    assert summary["pipelines"] == {"attacked": "heterogeneous t_s 0.1 / t_l 0.2, τ 0.5, U 3, S = 10",
                                    "evaluated": "uniform t* = 0.1, S = 20", "transfer": True}
    assert summary["eps_calls"]["attack_per_forward_pass"] == 2  # heterogeneous at S = 10, not uniform's 1
    assert summary["eps_calls"]["defence_per_purification"] == 2
    lines = (out / "summary.md").read_text().splitlines()
    assert lines[2].startswith("Counting: robust = clean evaluation correct")  # the counting rules come first
    assert lines[4].startswith("**Transfer evaluation")
    assert "attacked: heterogeneous t_s 0.1 / t_l 0.2" in lines[6] and "evaluated: uniform t* = 0.1" in lines[7]
    assert summary["settings_hash"] != json.loads((tmp_path / "uni" / "config.json").read_text())["settings_hash"]


def read_records_of(summary: dict, out: Path) -> list[dict]:
    return sorted(read_records(out / "records.jsonl"), key=lambda r: r["index"])


def test_attack_cost_counts_the_attacks_own_forward_passes(assets: Path, tmp_path: Path) -> None:
    """ε-calls per image = calls per pass × Attack.forward_passes: PGD's steps × EOT, APGD's extra evaluation."""
    pgd = evaluate(config(assets, tmp_path / "pgd", data={"n": 2}, attack={"steps": 3, "eot": 2}))
    assert pgd["eps_calls"]["attack_per_image"] == 2 * 3 * 2
    apgd = evaluate(config(assets, tmp_path / "apgd", data={"n": 2}, attack={"name": "apgd-ce", "steps": 3, "eot": 2}))
    passes = {r["attack_forward_passes"] for r in read_records(tmp_path / "apgd" / "records.jsonl")}
    assert passes == {(3 + 1) * 2}  # the starting point's gradient, then one per step
    assert apgd["eps_calls"]["attack_per_image"] == 2 * (3 + 1) * 2
