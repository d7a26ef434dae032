"""Counting rules, attack ensembles, saved adversarial examples, combine / compare / rescore / export.

The accuracies are pinned against small, asymmetric hand-written records (a wrong rule — robust counted from
the clean field, wins and losses swapped, ties to the lowest label — changes a pinned number). The runs use a
classifier whose decision is the image's mean brightness, so which image an L∞ attack of 8/255 can break is
known by hand: an image at a class centre cannot be broken, one 0.04 from it can, one 0.07 from it is wrong
already.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hetpure import cli
from hetpure.errors import ConfigError, RecordsError
from hetpure.evaluate import evaluate, paired_comparison, read_records
from hetpure.evaluation.combine import combine, compare
from hetpure.evaluation.counting import accuracies, image_status, vote_correct
from hetpure.evaluation.diagnostics import cosine_with_expected, eot_for_cosine, signal_to_noise, summarise_cosines
from hetpure.evaluation.export import leaderboard_record
from hetpure.evaluation.rescore import rescore
from hetpure.evaluation.shards import load_adversarial, write_shard

# --- the rules on hand-written records ------------------------------------------------------------------------


def rec(index: int, label: int, clean: list[int], adv: list[int], **extra: object) -> dict:
    return {"index": index, "label": label, "clean_votes": clean, "adversarial_votes": adv,
            "clean_prediction": max(range(len(clean)), key=lambda c: (clean[c], -c)),
            "adversarial_prediction": max(range(len(adv)), key=lambda c: (adv[c], -c)),
            "worst_case_correct": 1, "worst_case_k": 1, **extra}


# label 1 throughout, 3 classes, R = 4
RECORDS = [
    rec(0, 1, [0, 4, 0], [0, 3, 1]),   # clean ok, adversarial ok → robust
    rec(1, 1, [0, 4, 0], [2, 2, 0]),   # adversarial tie with class 0 (lowest label wins: class 0) → wrong either way
    rec(2, 1, [0, 2, 2], [0, 4, 0]),   # clean tie with class 2: wrong under "wrong", right under "lowest"
    rec(3, 1, [4, 0, 0], [0, 4, 0]),   # clean wrong, adversarial right: adversarial but not robust
    rec(4, 1, [0, 3, 1], [1, 2, 1]),   # robust
    rec(5, 1, [1, 3, 0], [3, 1, 0]),   # broken
]


def test_vote_correct_ties() -> None:
    assert vote_correct([2, 2, 0], 0, "lowest") and not vote_correct([2, 2, 0], 0, "wrong")
    assert not vote_correct([2, 2, 0], 1, "lowest") and not vote_correct([2, 2, 0], 1, "wrong")
    assert vote_correct([0, 2, 2], 1, "lowest") and not vote_correct([0, 2, 2], 1, "wrong")
    assert vote_correct([1, 3, 0], 1, "wrong")
    with pytest.raises(ValueError, match="ties"):
        vote_correct([1, 0], 0, "random")


def test_accuracies_pinned_on_asymmetric_records() -> None:
    strict = accuracies(RECORDS, "wrong")
    assert strict["clean_accuracy"] == 4 / 6  # 0, 1, 4, 5 (2 is a tie, 3 wrong)
    assert strict["adversarial_accuracy"] == 4 / 6  # 0, 2, 3, 4
    assert strict["robust_accuracy"] == 2 / 6  # 0, 4: clean-correct and adversarially correct
    assert strict["robust_accuracy_worst_case"] == 2 / 6
    lowest = accuracies(RECORDS, "lowest")
    assert lowest["clean_accuracy"] == 5 / 6 and lowest["robust_accuracy"] == 3 / 6  # image 2 now counts
    assert lowest["adversarial_accuracy"] == 4 / 6
    lo, hi = strict["robust_accuracy_ci95"]
    assert lo < 2 / 6 < hi and math.isclose(lo, 0.0968, abs_tol=1e-3)


def test_clean_wrong_image_is_not_robust_and_attack_that_skipped_neither_breaks_nor_saves() -> None:
    assert image_status(RECORDS[3])["adversarial"] and not image_status(RECORDS[3])["robust"]
    ensemble = rec(9, 0, [3, 1], [3, 1], attacks=[
        {"name": "pgd", "attacked": True, "votes": [3, 1], "worst_case_correct": 1, "worst_case_k": 1},
        {"name": "apgd-dlr", "attacked": True, "votes": [1, 3], "worst_case_correct": 0, "worst_case_k": 1},
        {"name": "fgsm", "attacked": False}])
    status = image_status(ensemble)
    assert status == {"clean": True, "adversarial": False, "robust": False, "worst_case": False, "broken_by": 1}
    per = accuracies([ensemble], "wrong", ["pgd", "apgd-dlr", "fgsm"])["per_attack"]
    assert [(p["attacked"], p["broke"], p["robust_accuracy_after"]) for p in per] == [(1, 0, 1.0), (1, 1, 0.0),
                                                                                        (0, 0, 0.0)]


def test_worst_case_uses_the_strict_count_when_recorded() -> None:
    r = rec(0, 1, [0, 4, 0], [0, 4, 0], worst_case_k=3, worst_case_correct=3, worst_case_correct_strict=2)
    assert image_status(r, "lowest")["worst_case"] and not image_status(r, "wrong")["worst_case"]


def test_paired_comparison_pinned_on_asymmetric_records() -> None:
    row = [rec(i, 1, [0, 4, 0], [0, 4, 0]) for i in range(4)] + [rec(4, 1, [0, 4, 0], [4, 0, 0])]
    ref = [rec(0, 1, [0, 4, 0], [4, 0, 0]), rec(1, 1, [4, 0, 0], [0, 4, 0]),  # ref clean-wrong: not robust
           rec(2, 1, [0, 4, 0], [2, 2, 0]), rec(3, 1, [0, 4, 0], [0, 4, 0]), rec(4, 1, [0, 4, 0], [0, 4, 0])]
    c = paired_comparison(row, ref)
    assert (c["robust"]["wins"], c["robust"]["losses"]) == (3, 1)
    assert c["robust"]["difference"] == pytest.approx(2 / 5) and c["robust"]["p_value"] == pytest.approx(0.625)
    assert (c["clean"]["wins"], c["clean"]["losses"]) == (1, 0)
    # vote share of the true class: row (1, 1, 1, 1, 0) vs ref (0, 1, .5, 1, 1): mean +0.1
    assert c["robust"]["vote_share_difference"] == pytest.approx(0.1)
    swapped = paired_comparison(ref, row)
    assert (swapped["robust"]["wins"], swapped["robust"]["losses"]) == (1, 3)


def test_eot_diagnostic_model() -> None:
    rho = signal_to_noise(0.04, 1)
    assert rho == pytest.approx(0.04 / 0.96)
    assert cosine_with_expected(rho, 2) == pytest.approx(math.sqrt(2 * rho / (2 * rho + 1)))
    assert eot_for_cosine(rho) == pytest.approx(0.81 / (0.19 * rho))
    d = summarise_cosines([0.04, 0.04], [0.2, 0.2], eot=2)
    assert d["eot_for_cosine_0.9"] == pytest.approx(0.81 / (0.19 * rho)) and "far below" in d["warning"]
    assert summarise_cosines([0.99], [0.99], eot=8)["warning"] is None
    assert summarise_cosines([-0.1], [0.0], eot=2)["eot_for_cosine_0.9"] is None  # no signal: unbounded


# --- runs on a classifier decided by brightness ---------------------------------------------------------------


class Brightness(nn.Module):
    """Class k is the image whose mean brightness is nearest k/9 (10 classes): logits −10·|mean − k/9|."""

    def forward(self, x: Tensor) -> Tensor:
        centres = torch.arange(10, dtype=x.dtype, device=x.device) / 9
        return -10 * (x.mean((1, 2, 3))[:, None] - centres).abs()


class Flat:
    """Constant 3×8×8 images at given brightness, with labels: an in-memory dataset."""

    classes = [str(k) for k in range(10)]

    def __init__(self, values: list[float], labels: list[int]) -> None:
        self.images = torch.tensor(values)[:, None, None, None].expand(-1, 3, 8, 8).contiguous()
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


# label k at k/9: +0 unbreakable, +0.04 breakable by 8/255, +0.07 wrong already
DATA = Flat([1 / 9, 2 / 9 + 0.04, 3 / 9, 4 / 9 + 0.07, 5 / 9 + 0.04, 6 / 9], [1, 2, 3, 4, 5, 6])


def brightness_config(out: Path, attack: object, **run: object) -> dict:
    return {"data": {"name": "mnist5k"}, "classifier": {"name": "cifar_resnet20"}, "defense": {"method": "none"},
            "attack": attack, "run": {"batch_size": 4, "out": str(out), "worst_case_k": 1, "progress": False,
                                      "save_images": False, **run}}


PGD = {"name": "pgd", "steps": 3, "step_size": 0.02, "eps": 8 / 255}


def run(out: Path, attack: object = PGD, data: Flat = DATA, **run_keys: object) -> dict:
    return evaluate(brightness_config(out, attack, **run_keys), components=(data, Brightness(), None))


def test_ensemble_attacks_survivors_only_and_saves_what_it_scored(tmp_path: Path) -> None:
    out = tmp_path / "ens"
    s = run(out, [PGD, {"name": "fgsm", "eps": 8 / 255}])
    records = {r["index"]: r for r in read_records(out / "records.jsonl")}
    assert s["clean_accuracy"] == 5 / 6 and s["robust_accuracy"] == 3 / 6 and s["adversarial_accuracy"] == 3 / 6
    assert [records[i]["broken_by"] for i in range(6)] == [None, "pgd", None, "pgd", "pgd", None]
    # fgsm ran only on the survivors: not on the clean-wrong image 3 nor on the images pgd broke
    assert [records[i]["attacks"][1]["attacked"] for i in range(6)] == [True, False, True, False, False, True]
    assert [(p["attack"], p["attacked"], p["broke"]) for p in s["per_attack"]] == [("pgd", 6, 2), ("fgsm", 3, 0)]
    assert [p["eps_calls"]["backward_passes"] for p in s["per_attack"]] == [3, 1]  # one per iteration (EOT 1)
    assert "| fgsm | 3 | 0 |" in (out / "summary.md").read_text()
    saved = load_adversarial(out, list(records.values()))
    for i, r in records.items():
        for j, outcome in enumerate(r["attacks"]):
            assert (j in saved[i]) == outcome["attacked"]  # an example for exactly the images each attack ran on
            if outcome["attacked"]:
                x = DATA[i][0]
                assert float((saved[i][j] - x).abs().max()) == pytest.approx(outcome["perturbation_linf"], abs=0)
                assert saved[i][j].dtype == torch.float32
    again = run(out, [PGD, {"name": "fgsm", "eps": 8 / 255}])
    assert again["images_this_session"] == 0


def test_single_attack_keeps_its_records_layout(tmp_path: Path) -> None:
    out = tmp_path / "one"
    run(out)
    r = read_records(out / "records.jsonl")[0]
    assert "attacks" not in r and {"adversarial_votes", "worst_case_correct_strict", "adversarial_shard"} <= set(r)


def test_torn_or_altered_shard_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out)
    records = read_records(out / "records.jsonl")
    shard = out / records[0]["adversarial_shard"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordsError, match="torn or altered"):
        load_adversarial(out, records)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(RecordsError, match="does not match"):
        rescore(out, tmp_path / "re", components=(DATA, Brightness(), None))
    shard.unlink()
    with pytest.raises(RecordsError, match="missing"):
        load_adversarial(out, records)


def test_rescore_checks_every_shard_first_then_reads_each_batchs_own(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from hetpure.evaluation import shards

    out = tmp_path / "run"
    run(out, batch_size=2)  # three batches, three shards
    records = read_records(out / "records.jsonl")
    names = sorted({r["adversarial_shard"] for r in records})
    assert len(names) == 3
    reads: list[str] = []
    original = shards.read_shard
    monkeypatch.setattr(shards, "read_shard", lambda o, name, digest: reads.append(name) or original(o, name, digest))
    rescore(out, tmp_path / "re", ["run.batch_size=2"], (DATA, Brightness(), None))
    assert reads[:3] == names and sorted(reads[3:]) == names  # all checked up front, then one shard per batch
    last = out / names[-1]  # a torn last shard stops the rescoring before its first record
    last.write_bytes(last.read_bytes()[:-7])
    with pytest.raises(RecordsError, match="torn or altered"):
        rescore(out, tmp_path / "re3", ["run.batch_size=2"], (DATA, Brightness(), None))
    assert not (tmp_path / "re3" / "records.jsonl").exists()


def test_each_image_comes_from_the_shard_its_record_names(tmp_path: Path) -> None:
    # a grown run recomputes its partial last batch: the new shard holds fresh examples of the old images too,
    # but their records still name the old shard, whose examples were scored
    old = write_shard(tmp_path, 2, [(torch.full((2, 3, 2, 2), 0.1), [4, 5])])
    new = write_shard(tmp_path, 2, [(torch.full((3, 3, 2, 2), 0.9), [4, 5, 6])])
    records = [{"index": 4, "adversarial_shard": old[0], "adversarial_shard_sha256": old[1]},
               {"index": 5, "adversarial_shard": old[0], "adversarial_shard_sha256": old[1]},
               {"index": 6, "adversarial_shard": new[0], "adversarial_shard_sha256": new[1]}]
    for wanted in ({4, 5, 6}, {4, 6}, None):
        found = load_adversarial(tmp_path, records, wanted)
        assert {i: float(found[i][0].mean()) for i in found} == pytest.approx(
            {i: v for i, v in {4: 0.1, 5: 0.1, 6: 0.9}.items() if wanted is None or i in wanted})


def test_rescore_of_a_grown_run_scores_every_finished_image(assets: Path, tmp_path: Path) -> None:
    from conftest import config

    out = tmp_path / "grown"
    cfg = config(assets, out, data={"n": 2}, defense={"method": "none"}, attack={"steps": 1}, run={"worst_case_k": 1})
    evaluate(cfg)
    cfg["data"]["n"] = 4  # grown in place: config.json keeps the first batch's n = 2
    evaluate(cfg)
    assert json.loads((out / "config.json").read_text())["config"]["data"]["n"] == 2
    s = rescore(out, tmp_path / "re", ["run.seed=3"])
    assert s["n"] == 4 and s["config"]["data"]["n"] >= 4


def test_rescore_scores_the_saved_examples_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run(out)
    given = (DATA, Brightness(), None)
    s = rescore(out, tmp_path / "re", ["run.seed=5"], given)
    assert s["n"] == 6 and s["robust_accuracy"] == first["robust_accuracy"]  # deterministic defence: same verdict
    assert s["eps_calls"]["attack_per_image"] == 0 and s["pipelines"]["transfer"] is False
    config = json.loads((tmp_path / "re" / "config.json").read_text())
    assert config["identity"]["attack"]["source_settings_hash"] == first["settings_hash"]
    assert rescore(out, tmp_path / "re", ["run.seed=5"], given)["images_this_session"] == 0
    with pytest.raises(ConfigError, match="attack settings cannot change"):
        rescore(out, tmp_path / "re2", ["attack.eps=0.1"], given)


def test_combine_takes_the_worst_case_and_refuses_other_defences(tmp_path: Path) -> None:
    weak = dict(PGD, steps=1, step_size=0.001)  # breaks nothing
    run(tmp_path / "weak", weak)
    run(tmp_path / "strong")
    s = combine([tmp_path / "weak", tmp_path / "strong"], tmp_path / "both")
    assert s["robust_accuracy"] == 3 / 6 and s["clean_evaluation_from"] == "weak"
    assert [p["broke"] for p in s["per_attack"]] == [0, 2]
    assert "Combined row" in (tmp_path / "both" / "summary.md").read_text()
    other = brightness_config(tmp_path / "other", PGD)
    other["run"]["worst_case_k"] = 1
    evaluate({**other, "defense": {"method": "none"}, "classifier": {"name": "mnist_cnn"}},
             components=(DATA, Brightness(), None))
    with pytest.raises(ConfigError, match="classifier.name"):
        combine([tmp_path / "weak", tmp_path / "other"], tmp_path / "bad")
    c = compare(tmp_path / "both", tmp_path / "weak")
    assert (c["robust"]["wins"], c["robust"]["losses"]) == (0, 2)


def test_survivors_of_attacks_only_what_is_left(tmp_path: Path) -> None:
    run(tmp_path / "first")
    s = evaluate(brightness_config(tmp_path / "second", {"name": "fgsm", "eps": 8 / 255},
                                   ) | {"data": {"name": "mnist5k", "survivors_of": [str(tmp_path / "first")]}},
                 components=(DATA, Brightness(), None))
    assert s["n"] == 3 and s["conditioned_on"] == ["first"]
    assert sorted(r["index"] for r in read_records(tmp_path / "second" / "records.jsonl")) == [0, 2, 5]


def test_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path / "a")
    run(tmp_path / "b", dict(PGD, steps=1, step_size=0.001))
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["robust"]["losses"] == 2
    assert cli.main(["combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 0
    assert cli.main(["export", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "leaderboard.json").read_text())
    assert record["ensemble_acc"] == 50.0 and record["clean_acc"] == pytest.approx(83.33)
    assert record["ties"] == "wrong" and len(record["per_attack"]) == 2
    assert leaderboard_record(tmp_path / "a")["pgd_acc"] == 50.0
    assert cli.main(["combine", str(tmp_path / "a"), "--out", str(tmp_path / "d")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_first_broken_keeps_the_judged_iterate_and_reports_the_rescore(tmp_path: Path) -> None:
    out = tmp_path / "fb"
    s = run(out, dict(PGD, keep="first_broken", keep_every=1))
    records = {r["index"]: r for r in read_records(out / "records.jsonl")}
    # the deterministic judge breaks the two breakable images at once; the others are never judged wrong
    assert [records[i]["first_broken_at"] >= 0 for i in range(6)] == [False, True, False, True, True, False]
    assert s["per_attack"][0]["first_broken"] == {"kept": 3, "still_wrong_on_rescore": 3, "rate": 1.0}
    assert all(records[i]["judge_passes"] >= 1 for i in range(6))
    assert "still wrong when re-scored" in (out / "summary.md").read_text()


def test_eot_diagnostic_in_the_summary(assets: Path, tmp_path: Path) -> None:
    from conftest import config

    out = tmp_path / "diag"
    s = evaluate(config(assets, out, data={"n": 2}, attack={"eot": 2, "steps": 1}))
    d = s["eot_diagnostic"][0]
    assert d["eot"] == 2 and d["half"] == 1 and d["images"] == 2
    assert -1 <= d["clean"]["cosine_of_halves"] <= 1 and (out / "eot_diagnostic.json").exists()
    assert "EOT diagnostic" in (out / "summary.md").read_text()


def test_combine_a_survivors_run_with_its_sources_counts_every_image(tmp_path: Path) -> None:
    weak = dict(PGD, steps=1, step_size=0.001)  # breaks nothing: survivors 0, 1, 2, 4, 5 (3 is clean-wrong)
    run(tmp_path / "weak", weak)
    second = brightness_config(tmp_path / "second", PGD) | {
        "data": {"name": "mnist5k", "survivors_of": [str(tmp_path / "weak")]}}
    evaluate(second, components=(DATA, Brightness(), None))
    s = combine([tmp_path / "weak", tmp_path / "second"], tmp_path / "both")
    assert s["n"] == 6 and s["robust_accuracy"] == 3 / 6  # every image counted, not only the 5 survivors
    assert [p["attacked"] for p in s["per_attack"]] == [6, 5]
    run(tmp_path / "strong")
    with pytest.raises(ConfigError, match="conditions on"):
        combine([tmp_path / "strong", tmp_path / "second"], tmp_path / "bad")  # without its source
    # a survivor the conditioned run has not attacked yet is left out, never counted robust
    records = (tmp_path / "second" / "records.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "second" / "records.jsonl").write_text("".join(r for r in records if '"index": 0,' not in r))
    s = combine([tmp_path / "weak", tmp_path / "second"], tmp_path / "partial")
    assert s["n"] == 5 and s["left_out_unfinished"] == [0] and s["robust_accuracy"] == 2 / 5


def test_survivors_clean_first_attacks_every_image_the_combined_row_counts(tmp_path: Path) -> None:
    weak = dict(PGD, steps=1, step_size=0.001)  # breaks nothing: survivors 0, 1, 2, 4, 5 (3 is clean-wrong)
    run(tmp_path / "a", weak)
    run(tmp_path / "b", dict(weak, steps=2))
    # b's own clean vote of image 0 is wrong (vote noise), a's is right: combine (a's clean) counts 0 robust
    path = tmp_path / "b" / "records.jsonl"
    records = read_records(path)
    for r in records:
        if r["index"] == 0:
            r["clean_votes"], r["clean_prediction"] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 9
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def chained(name: str, **data: object) -> dict:
        cfg = brightness_config(tmp_path / name, PGD) | {
            "data": {"name": "mnist5k", "survivors_of": [str(tmp_path / "a"), str(tmp_path / "b")], **data}}
        return evaluate(cfg, components=(DATA, Brightness(), None))

    assert chained("each")["n"] == 4  # image 0 is no survivor of a and b each under its own clean vote
    left = combine([tmp_path / "a", tmp_path / "b", tmp_path / "each"], tmp_path / "each-row")
    assert left["left_out_unfinished"] == [0] and left["n"] == 5
    assert chained("first", survivors_clean="first")["n"] == 5  # a's clean vote: 0 is attacked too
    row = combine([tmp_path / "a", tmp_path / "b", tmp_path / "first"], tmp_path / "first-row")
    assert row["n"] == 6 and not row.get("left_out_unfinished") and row["robust_accuracy"] == 3 / 6
    identity = json.loads((tmp_path / "first" / "config.json").read_text())["identity"]["data"]["survivors_of"]
    assert identity["clean"] == "first"
    assert "clean" not in json.loads((tmp_path / "each" / "config.json").read_text())["identity"]["data"][
        "survivors_of"]  # the default keeps the identity of runs made before the key existed
    with pytest.raises(ConfigError, match="first listed run on the full subset"):
        evaluate(brightness_config(tmp_path / "bad", PGD) | {
            "data": {"name": "mnist5k", "survivors_of": [str(tmp_path / "first")], "survivors_clean": "first"}},
            components=(DATA, Brightness(), None))


def test_an_unresolved_replayed_attack_is_never_robust() -> None:
    r = rec(0, 1, [0, 4, 0], [0, 4, 0], attacks=[
        {"name": "saved", "attacked": True, "votes": [0, 4, 0], "worst_case_correct": 1, "worst_case_k": 1},
        {"name": "saved", "attacked": False, "unresolved": True}])
    assert not image_status(r)["robust"] and accuracies([r])["unresolved"] == 1


def test_rescore_paths_votes_and_slots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out)
    given = (DATA, Brightness(), None)
    s = rescore(out, tmp_path / "re", ["defense.runs=3"], given)
    assert s["pipelines"]["transfer"] is False  # more votes is the same defence, not a transfer
    saved = json.loads((tmp_path / "re" / "config.json").read_text())["config"]["attack"]
    assert saved["source"] == "../run"  # portable: relative to the rescoring's folder
    bad = brightness_config(tmp_path / "slot", {"name": "saved", "source": str(out), "slot": 3})
    with pytest.raises(ConfigError, match="slots 0–0"):
        evaluate(bad, components=given)
    survivors = brightness_config(tmp_path / "surv", PGD) | {"data": {"name": "mnist5k", "survivors_of": [str(out)]}}
    evaluate(survivors, components=given)
    with pytest.raises(ConfigError, match="conditional"):
        leaderboard_record(tmp_path / "surv")
