"""One batch of an evaluation: clean votes, each attack of the ensemble, defended votes of its examples.

``run.ensemble: survivors`` (AutoAttack's rule, Croce & Hein 2020): the first attack runs on every image, each
later attack only on the images still robust (clean-correct and correct under every earlier attack, counted
with ``run.ties``); ``all`` runs every attack on every image. A single attack mapping is the one-element case
and computes exactly what hetpure computed before ensembles existed (the same random streams and records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import attack_kwargs, defended_model, make_attack
from ..devices import freeze
from ..purify import Purifier, majority_vote
from .config import attack_sections, is_ensemble
from .counting import vote_correct


def batch_generator(seed: int, batch_index: int, salt: int, device: torch.device) -> torch.Generator:
    """The random stream of one batch and purpose (``salt``): the same on every resume and world size."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch_index * 7_919 + salt) % 2**63)


def attack_salts(j: int) -> tuple[int, int]:
    """(attack, evaluation) salts of attack ``j``: 2 and 3 for the first, as before ensembles existed."""
    return (2, 3) if j == 0 else (2 + 100 * j, 3 + 100 * j)


def strict_correct(counts: Tensor, y: Tensor, ties: str) -> Tensor:
    """(…, B) bool: the vote counts (…, B, classes) elect the label, a shared top count wrong under ``ties: wrong``."""
    top = counts.max(-1).values
    mine = counts.gather(-1, y.expand(*counts.shape[:-1])[..., None]).squeeze(-1)
    if ties == "lowest":
        return counts.argmax(-1) == y
    return (mine == top) & ((counts == top[..., None]).sum(-1) == 1)


class Evaluator:
    """Per-batch computation shared by the main loop and the sanity checks."""

    def __init__(self, cfg: dict[str, Any], classifier: nn.Module, purifier: Purifier | None,
                 device: torch.device, attacked: list[Purifier | None] | None = None) -> None:
        self.cfg, self.classifier, self.purifier, self.device = cfg, classifier, purifier, device
        sections = attack_sections(cfg)
        attacked = attacked if attacked is not None else [None] * len(sections)
        self.attacked = [purifier if a["through"] is None else t for a, t in zip(sections, attacked)]
        self.runs = purifier.config.runs if purifier is not None else 1
        self.checkpointed: bool | None = None  # exact gradient: whether the last attack checkpointed
        self.forward_passes = 0  # forward passes per image of the last attack (Attack.forward_passes)
        self.judge_passes = 0  # defended evaluations per image the last attack asked for (keep: first_broken)
        self._saved: dict[str, tuple[Path, list[dict[str, Any]]]] = {}  # source run → (its folder, records)
        self._batch_examples: tuple[Any, dict[int, dict[int, Tensor]]] = (None, {})  # (source, batch) → examples
        self.broken_at: list[int] | None = None  # keep: first_broken, per attacked image (−1: never judged wrong)
        self.backward_passes: int | None = None
        freeze(classifier, purifier, *self.attacked)  # attacks need input gradients only, never weight gradients

    def labels(self, x: Tensor, evaluations: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(majority label (E, B), vote counts (E, B, classes)) of ``evaluations`` defended evaluations."""
        if self.purifier is None:
            with torch.no_grad():
                logits = self.classifier(x)
            counts = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1])[None]
            counts = counts.expand(evaluations, -1, -1)
            return counts.argmax(2), counts
        run_labels, num_classes = self.purifier.run_labels(x, self.runs * evaluations, generator)
        grouped = run_labels.view(evaluations, self.runs, x.shape[0])
        votes = [majority_vote(g, num_classes) for g in grouped]  # one vote of R runs per evaluation
        return torch.stack([w for w, _ in votes]), torch.stack([c for _, c in votes])

    def checkpointing(self, a: dict[str, Any], target: Purifier | None, x: Tensor, attack: Any) -> bool | None:
        """Exact gradient: checkpoint per step unless the whole graph of one differentiated chunk fits in
        ``attack.memory_budget_gb`` (``attack.checkpoint: auto``); records are the same either way."""
        if target is None or a["gradient"] != "exact":
            return None
        from ..graph_memory import use_checkpointing

        eps = target.eps_model
        images = x.shape[0] * max(1, int(getattr(attack, "eot", 1)))
        chunk = getattr(attack, "eot_batch", None)
        images = min(images, chunk) if chunk else images
        shape = (eps.in_channels, eps.image_size or x.shape[-2], eps.image_size or x.shape[-1])
        self.checkpointed = use_checkpointing(a["checkpoint"], a["memory_budget_gb"], eps, shape, target.eps_calls(),
                                              images, x.device)
        return self.checkpointed

    def saved(self, j: int, indices: list[int]) -> dict[int, Tensor]:
        """Attack ``j`` of a ``saved`` section: its source run's examples of the dataset ``indices`` (this batch).

        At the first call every shard of the source is checked against the digest its records name (a torn or
        altered shard stops the run before any record is written); then each batch reads only the shards that
        hold its images, so memory does not grow with the source run.
        """
        a = attack_sections(self.cfg)[j]
        if a["source"] not in self._saved:
            from .runs import load_run
            from .shards import read_shard, shard_index

            source = load_run(a["source"], "attack.source")
            for name, digest in sorted(set(shard_index(source.path, source.records).values())):
                read_shard(source.path, name, digest)
            self._saved[a["source"]] = (source.path, source.records)
        from .shards import load_adversarial

        key = (a["source"], tuple(indices))
        if self._batch_examples[0] != key:  # the saved sections of one source share this batch's read
            path, records = self._saved[a["source"]]
            self._batch_examples = (key, load_adversarial(path, records, set(indices)))
        examples = self._batch_examples[1]
        return {i: e[a["slot"]] for i, e in examples.items() if a["slot"] in e}

    def build(self, x: Tensor, generator: torch.Generator, j: int = 0, **changes: Any) -> tuple[Any, nn.Module]:
        """(attack, the module it differentiates) of attack ``j`` of the ensemble (``changes`` override keys)."""
        a = {**attack_sections(self.cfg)[j], **changes}
        attack = make_attack(a["name"], **attack_kwargs(a["name"], a, generator=generator))
        target = None if changes.get("undefended") else self.attacked[j]
        model = defended_model(target, self.classifier, a["gradient"], a["surrogate_ddim_steps"],
                               checkpoint=self.checkpointing(a, target, x, attack))
        if hasattr(model, "generator"):
            model.generator = generator
        return attack, model

    def attack(self, x: Tensor, y: Tensor, generator: torch.Generator, j: int = 0,
               judge_generator: torch.Generator | None = None, **changes: Any) -> tuple[Tensor, int]:
        """Adversarial examples of attack ``j`` and the ε-model calls per forward pass of the attacked model."""
        if {**attack_sections(self.cfg)[j], **changes}["name"] == "none":
            return x, 0
        attack, model = self.build(x, generator, j, **changes)
        if hasattr(attack, "judge") and judge_generator is not None:
            ties = self.cfg["run"]["ties"]
            attack.judge = lambda xa, ya: strict_correct(self.labels(xa, 1, judge_generator)[1][0], ya, ties)
        x_adv = attack(model, x, y)
        self.forward_passes = attack.forward_passes  # per image, every EOT sample and extra evaluation counted
        self.judge_passes = int(getattr(attack, "judge_calls", 0))
        self.backward_passes = getattr(attack, "backward_passes", None)  # per image (DiffHammer: 1 per iteration)
        broken_at = getattr(attack, "broken_at", None)  # keep: first_broken, the iteration each image was kept at
        self.broken_at = None if broken_at is None else [int(v) for v in broken_at.cpu()]
        return x_adv, int(getattr(model, "eps_calls", lambda: 0)())


def evaluate_batch(ev: Evaluator, x: Tensor, y: Tensor, b: int, indices: list[int],
                   digest: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of one batch (one per image) and extras: the adversarial examples of each attack with the
    positions they belong to (``examples``), the last attack's ε-calls, the first attack's x_adv (for the grid)."""
    cfg = ev.cfg
    seed, k, ties = cfg["run"]["seed"], cfg["run"]["worst_case_k"], cfg["run"]["ties"]
    sections = attack_sections(cfg)
    clean_label, clean_counts = ev.labels(x, 1, batch_generator(seed, b, 1, ev.device))
    alive = strict_correct(clean_counts[0], y, ties)  # survivors: clean-correct and unbroken so far
    c = clean_counts.shape[-1]
    outcomes: list[list[dict[str, Any]]] = [[] for _ in range(len(x))]
    examples: list[tuple[Tensor, list[int]]] = []
    attack_calls, first_adv = 0, x
    for j, a in enumerate(sections):
        rows = list(range(len(x))) if j == 0 or cfg["run"]["ensemble"] == "all" else \
            [i for i in range(len(x)) if bool(alive[i])]
        saved = ev.saved(j, indices) if a["name"] == "saved" else None
        unresolved: set[int] = set()
        if saved is not None:  # a replayed attack scores every example its source saved (whatever came before)
            unresolved = {i for i in rows if indices[i] not in saved}  # never faced this attack in the source
            rows = [i for i in range(len(x)) if indices[i] in saved]
        for i in sorted(set(range(len(x))) - set(rows)):
            skipped = {"unresolved": True} if i in unresolved else {}
            outcomes[i].append({"name": a["name"], "attacked": False, **skipped})
        if not rows:
            examples.append((x[:0], []))
            continue
        salt_attack, salt_eval = attack_salts(j)
        ev.forward_passes, ev.judge_passes, ev.broken_at, ev.backward_passes = 0, 0, None, None
        xs, ys = x[rows], y[rows]
        if saved is not None:
            x_adv, attack_calls = torch.stack([saved[indices[i]] for i in rows]).to(x), 0
            _check_budget(x_adv, xs, a, [indices[i] for i in rows])
        else:
            x_adv, attack_calls = ev.attack(xs, ys, batch_generator(seed, b, salt_attack, ev.device), j,
                                            judge_generator=batch_generator(seed, b, salt_attack + 50, ev.device))
        if j == 0:
            first_adv = x_adv
        examples.append((x_adv, [indices[i] for i in rows]))
        adv_label, adv_counts = ev.labels(x_adv, k, batch_generator(seed, b, salt_eval, ev.device))
        strict = strict_correct(adv_counts, ys, "wrong")  # (K, N)
        diff = x_adv - xs  # every per-image number as float64 (exact), one device-to-host copy per attack
        per_image = [adv_label[0], (adv_label == ys).sum(0), strict.sum(0), torch.stack([d.abs().max() for d in diff]),
                     torch.stack([d.norm() for d in diff])]
        host = torch.cat([torch.stack([t.double() for t in per_image], 1), adv_counts[0].double()], 1).cpu().tolist()
        for n, (row, i) in enumerate(zip(host, rows)):
            outcomes[i].append({
                "name": a["name"], "attacked": True, "prediction": int(row[0]),
                "votes": [int(v) for v in row[5: 5 + c]], "worst_case_correct": int(row[1]),
                "worst_case_correct_strict": int(row[2]), "worst_case_k": k, "perturbation_linf": row[3],
                "perturbation_l2": row[4], "forward_passes": ev.forward_passes,
                **({"backward_passes": int(ev.backward_passes)} if ev.backward_passes is not None else {}),
                **({"judge_passes": ev.judge_passes} if ev.judge_passes else {}),
                **({"first_broken_at": ev.broken_at[n]} if ev.broken_at is not None else {}),
            })
        alive[rows] &= strict_correct(adv_counts[0], ys, ties)
    clean_host = torch.cat([y[:, None].double(), clean_label[0][:, None].double(), clean_counts[0].double()], 1)
    records = []
    for i, row in enumerate(clean_host.cpu().tolist()):
        records.append(_record(indices[i], row, c, outcomes[i], k, b, digest, is_ensemble(cfg), ties))
    return records, {"examples": examples, "attack_calls": attack_calls, "x_adv": first_adv}


def _check_budget(x_adv: Tensor, x: Tensor, a: dict[str, Any], indices: list[int]) -> None:
    """Replayed examples must lie in the source attack's threat model around these very images."""
    from ..errors import RecordsError

    eps = a["eps"] if a["eps"] is not None else (8 / 255 if a["norm"] == "linf" else 0.5)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if a["norm"] == "linf" else d.norm(dim=1)
    bad = [i for i, s in zip(indices, size.tolist()) if s > eps + 1e-5]
    if bad or float(x_adv.min()) < 0 or float(x_adv.max()) > 1:
        raise RecordsError(f"saved examples of {a['source']} for images {bad[:5]} leave the {a['norm']} ball of radius "
                           f"{eps:.6g} around the images (or [0, 1]): they were not made for these images; rescore "
                           "with the source run's own data")


def _record(index: int, clean: list[float], c: int, outcomes: list[dict[str, Any]], k: int, b: int, digest: str,
            ensemble: bool, ties: str) -> dict[str, Any]:
    """One image's record. The top-level adversarial fields are those of a single attack, or in an ensemble of
    the attack that broke the image first (else the last one that ran on it); ``attacks`` lists every outcome."""
    label = int(clean[0])
    ran = [o for o in outcomes if o["attacked"]]
    broken = [o for o in ran if not vote_correct(o["votes"], label, ties)]
    shown = broken[0] if broken else (ran[-1] if ran else None)
    record: dict[str, Any] = {
        "index": index, "label": label, "clean_prediction": int(clean[1]),
        "clean_votes": [int(v) for v in clean[2: 2 + c]], "worst_case_k": k, "batch": b, "settings_hash": digest,
    }
    if shown is not None:
        record.update({
            "adversarial_prediction": shown["prediction"], "adversarial_votes": shown["votes"],
            "worst_case_correct": shown["worst_case_correct"],
            "worst_case_correct_strict": shown["worst_case_correct_strict"],
            "perturbation_linf": shown["perturbation_linf"], "perturbation_l2": shown["perturbation_l2"],
            "attack_forward_passes": sum(o["forward_passes"] for o in ran),
        })
        for key in ("judge_passes", "first_broken_at"):
            if key in shown:
                record[key] = shown[key]
    if ensemble:
        record["attacks"] = outcomes
        record["broken_by"] = broken[0]["name"] if broken else None
    return record
