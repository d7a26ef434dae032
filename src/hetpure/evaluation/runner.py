"""The robustness evaluation harness: ``hetpure evaluate CONFIG.yaml`` and ``hetpure.evaluate(config)``.

One code path for both. A run attacks the defended model batch by batch, appends one JSON record per
sample to ``records.jsonl`` as each batch finishes (resumable: finished samples are skipped), and writes
``summary.json`` / ``summary.md``. Robust accuracy is reported by majority vote (the defended ensemble
prediction) and worst case (correct in every one of K independent defended evaluations).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import attack_kwargs, defended_model, make_attack
from ..devices import freeze
from ..distributed import teardown_on_exit
from ..errors import ConfigError, HetpureError, RecordsError
from ..purify import Purifier, majority_vote
from .components import (
    attacked_purifier,
    build_dataset,
    build_models,
    check_input_size,
    identity_of,
    model_class_names,
)
from .config import resolve_config
from .identity import identity_diff, identity_hash, portable_config
from .records import RunLock, append_records, read_records, repair_tail, write_json_atomic
from .report import running_postfix, summarise, summary_markdown

# --------------------------------------------------------------------------------------------------
# One batch: clean votes, attack, defended votes
# --------------------------------------------------------------------------------------------------


def _attack_kwargs(a: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """The attack's constructor arguments from the ``attack`` section, by parameter name."""
    return attack_kwargs(a["name"], a, generator=generator)


def _batch_generator(seed: int, batch_index: int, salt: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch_index * 7_919 + salt) % 2**63)


class _Evaluator:
    """Per-batch computation shared by the main loop and the sanity checks."""

    def __init__(self, cfg: dict[str, Any], classifier: nn.Module, purifier: Purifier | None,
                 device: torch.device, attacked: Purifier | None = None) -> None:
        self.cfg, self.classifier, self.purifier, self.device = cfg, classifier, purifier, device
        self.attacked = purifier if cfg["attack"]["through"] is None else attacked
        self.runs = purifier.config.runs if purifier is not None else 1
        self.checkpointed: bool | None = None  # exact gradient: whether the last attack checkpointed
        self.forward_passes = 0  # forward passes per image of the last attack (Attack.forward_passes)
        freeze(classifier, purifier, self.attacked)  # attacks need input gradients only, never weight gradients

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

    def checkpointing(self, target: Purifier | None, x: Tensor, attack: Any) -> bool | None:
        """Exact gradient: checkpoint per step unless the whole graph of one differentiated chunk fits in
        ``attack.memory_budget_gb`` (``attack.checkpoint: auto``); records are the same either way."""
        a = self.cfg["attack"]
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

    def attack(self, x: Tensor, y: Tensor, generator: torch.Generator, **changes: Any) -> tuple[Tensor, int]:
        """Adversarial examples and the ε-model calls per forward pass of the attacked model."""
        a = {**self.cfg["attack"], **changes}
        attack = make_attack(a["name"], **_attack_kwargs(a, generator)) if a["name"] != "none" else None
        if attack is None:
            return x, 0
        target = None if changes.get("undefended") else self.attacked
        model = defended_model(target, self.classifier, a["gradient"], a["surrogate_ddim_steps"],
                               checkpoint=self.checkpointing(target, x, attack))
        if hasattr(model, "generator"):
            model.generator = generator
        x_adv = attack(model, x, y)
        self.forward_passes = attack.forward_passes  # per image, every EOT sample and extra evaluation counted
        return x_adv, int(getattr(model, "eps_calls", lambda: 0)())


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@teardown_on_exit  # an exception on one rank stops the others at their next barrier; the group is torn down
def evaluate(config: dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None,
             sanity: bool | None = None, components: tuple[Any, nn.Module, Purifier | None] | None = None
             ) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary dict (also written to ``run.out``).

    ``components`` = (dataset, classifier, purifier) replaces building them from the config's data,
    classifier and diffusion sections (used by the demo with its embedded models).

    Order of work: validate the config; load the dataset and compute the run identity (content digests,
    no model loaded); lock the run folder and check it holds this identity (a folder whose records belong
    to other settings is refused, naming the keys that differ); only then load the models. The identity is
    written with the first batch's records, so a run that fails before then leaves nothing that refuses the
    corrected rerun. A read-only folder whose samples are all finished is summarised without writing.
    """
    from ..distributed import DistContext

    cfg = resolve_config(config, overrides)
    if sanity is not None:
        cfg["run"]["sanity"] = bool(sanity)
    _check_device(cfg["run"]["device"])
    out = Path(cfg["run"]["out"])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.out {out} is a file, not a folder; fix: --out <a new or existing folder>")
    dataset = components[0] if components is not None else build_dataset(cfg)
    if components is None:
        check_input_size(cfg, dataset)
    given = components[1:] if components is not None else (None, None)
    identity = identity_of(cfg, dataset, given[0], given[1].eps_model if given[1] is not None else None)
    digest = identity_hash(identity)

    dist = DistContext.from_env(cfg["run"]["device"], cfg["run"].get("dist_timeout_minutes"))
    positions = list(range(len(dataset)))
    indices = [int(i) for i in getattr(dataset, "indices", positions)]
    if len(indices) != len(positions):
        indices = positions
    bs = cfg["run"]["batch_size"]
    batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
    wanted = set(indices)  # a grown run's folder may hold records beyond this subset
    done = {i: r for i, r in _finished(out, digest).items() if i in wanted}
    if out.is_dir() and len(done) == len(wanted) and not os.access(out, os.W_OK):
        records = [done[i] for i in sorted(done)]  # read-only and finished: summarise, write nothing
        return summarise(cfg, digest, records, {"seconds": 0.0, "images": 0}, None, dist.device, out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist.check_shared_folder(out)  # several nodes: refuse a node-local run.out up front
    lock = RunLock(out) if dist.is_main else contextlib.nullcontext()
    try:
        with lock:
            return _run(cfg, dist, out, dataset, components, identity, digest, batches, indices, wanted)
    except BaseException:
        dist.report_failure()  # the other ranks' next barrier raises instead of waiting for this one
        raise
    finally:
        dist.close()


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"run.device {device!r} is not a device ({exc}); fix: --set run.device=cpu") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda but no CUDA device is available here; fix: --set run.device=cpu")


def _claim_folder(out: Path, identity: dict[str, Any], digest: str) -> None:
    """Refuse a folder whose records belong to other settings, naming what differs (under the lock)."""
    config_file = out / "config.json"
    if not config_file.exists():
        return
    try:
        previous = json.loads(config_file.read_text())
    except ValueError:
        previous = {}
    old = previous.get("settings_hash")
    if old in (None, digest) or not _finished(out, old):
        return  # no records of other settings: this run takes the folder
    if "identity" in previous:
        changes = identity_diff(previous["identity"], identity)
        what = "; ".join(changes[:12]) + (f"; … {len(changes) - 12} more" if len(changes) > 12 else "")
    else:
        what = f"settings hash {old} vs {digest} (a run made before hetpure recorded identities; see migrate_runs)"
    raise RecordsError(
        f"{out} holds records of a run with other settings — {what}. Choose another run.out (--out DIR), "
        "or move the folder aside to start over"
    )


def _run(cfg: dict[str, Any], dist: Any, out: Path, dataset: Any,
         components: tuple[Any, nn.Module, Purifier | None] | None, identity: dict[str, Any], digest: str,
         batches: list[list[int]], indices: list[int], wanted: set[int]) -> dict[str, Any]:
    device = dist.device
    torch.manual_seed(cfg["run"]["seed"])
    my_records = out / ("records.jsonl" if dist.world_size == 1 else f"records.rank{dist.rank}.jsonl")
    if dist.is_main:
        _claim_folder(out, identity, digest)
        for path in sorted(out.glob("records*.jsonl")):
            repair_tail(path)
    dist.barrier()
    done = {i: r for i, r in _finished(out, digest).items() if i in wanted}
    classifier, purifier = components[1:] if components is not None else build_models(cfg, device)
    ev = _Evaluator(cfg, classifier, purifier, device, attacked_purifier(cfg, classifier, purifier, device))
    todo = [b for b in range(len(batches)) if b % dist.world_size == dist.rank
            and not all(indices[p] in done for p in batches[b])]
    stats = {"seconds": 0.0, "images": 0, "attack_calls": 0}
    progress = _progress(len([b for b in range(len(batches)) if b % dist.world_size == dist.rank]),
                         len(batches) - len(todo), cfg["run"]["progress"] and dist.is_main)
    grid_saved = (out / "examples.png").exists()
    config_written = False
    for b in todo:
        start = time.perf_counter()
        x, y = _load_batch(dataset, batches[b], device)
        if b == todo[0]:
            _check_classifier(cfg, classifier, x, y, getattr(dataset, "classes", None))
        pending = [i for i, p in enumerate(batches[b]) if indices[p] not in done]
        records, extras = _evaluate_batch(ev, x, y, b, [indices[batches[b][i]] for i in range(len(x))], digest)
        elapsed = time.perf_counter() - start
        for r in records:
            r["seconds"] = round(elapsed / len(x), 4)  # attack + evaluations, per image of this batch
        if dist.is_main and not config_written:  # once, with the run's first records
            _write_config(out, cfg, identity, digest)
            config_written = True
        append_records(my_records, [records[i] for i in pending])
        stats["seconds"] += elapsed
        stats["images"] += len(x)
        stats["attack_calls"] = extras["attack_calls"]
        stats["checkpointed"] = ev.checkpointed
        for r in records:
            done[r["index"]] = r
        if cfg["run"]["save_images"] and not grid_saved and dist.is_main:
            _save_examples(out / "examples.png", x, extras["x_adv"], purifier)
            grid_saved = True
        progress.update(1)
        progress.set_postfix(running_postfix(done.values()))
    progress.close()
    dist.barrier()
    summary: dict[str, Any] = {}
    if dist.is_main:
        records = [r for r in _merge(out, digest, dist.world_size) if int(r["index"]) in wanted]
        dist.check_merged(len(records), len(wanted), out)  # e.g. other nodes' records not in this folder
        if records:
            _write_config(out, cfg, identity, digest)
        sanity_report = _sanity(ev, dataset, cfg) if cfg["run"]["sanity"] else None
        steps = purifier.eps_model.num_timesteps if purifier is not None else 1000
        summary = summarise(cfg, digest, records, stats, sanity_report, device, out, steps)
        write_json_atomic(out / "summary.json", summary)
        (out / "summary.md").write_text(summary_markdown(summary))
    dist.barrier()
    return summary


def _check_classifier(cfg: dict[str, Any], classifier: nn.Module, x: Tensor, y: Tensor,
                      classes: list[str] | None) -> None:
    """Once per run: finite (B, classes) logits, and labels the classifier can output."""
    from ..models.classifiers import check_logits

    names = model_class_names(cfg["classifier"]["name"]) if cfg["classifier"]["name"] else None
    logits = check_logits(classifier, x, num_classes=len(names) if names else None)
    if int(y.max()) >= logits.shape[1]:
        raise HetpureError(
            f"the data has label {int(y.max())} ({len(classes or [])} classes) but classifier "
            f"{cfg['classifier']['name']} outputs {logits.shape[1]} classes; use data with the model's classes"
        )


def _write_config(out: Path, cfg: dict[str, Any], identity: dict[str, Any], digest: str) -> None:
    """config.json: the identity and the portable config; written once the run has records."""
    file = out / "config.json"
    if file.exists():
        try:
            if json.loads(file.read_text()).get("settings_hash") == digest:
                return
        except ValueError:
            pass
    write_json_atomic(file, {"settings_hash": digest, "identity": identity, "config": portable_config(cfg, out)})


def _load_batch(dataset: Any, positions: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Stack one batch; images of different sizes are refused with the fix."""
    xs, ys = zip(*(dataset[p][:2] for p in positions))
    shapes = sorted({tuple(torch.as_tensor(v).shape) for v in xs})
    if len(shapes) > 1:
        raise HetpureError(
            f"the images of one batch have different sizes {shapes}; give the dataset a common size "
            "(--set 'data.options={resize: [32, 32]}') or use images of one size"
        )
    x = torch.stack([torch.as_tensor(v) for v in xs]).to(device).float()
    return x, torch.as_tensor(ys, dtype=torch.long).to(device)


def _evaluate_batch(ev: _Evaluator, x: Tensor, y: Tensor, b: int, indices: list[int],
                    digest: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = ev.cfg
    seed = cfg["run"]["seed"]
    k = cfg["run"]["worst_case_k"]
    clean_label, clean_counts = ev.labels(x, 1, _batch_generator(seed, b, 1, ev.device))
    ev.forward_passes = 0
    x_adv, attack_calls = ev.attack(x, y, _batch_generator(seed, b, 2, ev.device))
    adv_label, adv_counts = ev.labels(x_adv, k, _batch_generator(seed, b, 3, ev.device))
    records, c = [], clean_counts.shape[-1]
    diff = x_adv - x  # every per-image number as float64 (exact), one device-to-host copy per batch
    per_image = [y, clean_label[0], adv_label[0], (adv_label == y).sum(0), torch.stack([d.abs().max() for d in diff]),
                 torch.stack([d.norm() for d in diff])]
    host = torch.cat([torch.stack([t.double() for t in per_image], 1), clean_counts[0].double(),
                      adv_counts[0].double()], 1)
    for i, row in enumerate(host.cpu().tolist()):
        records.append({
            "index": indices[i],
            "label": int(row[0]),
            "clean_prediction": int(row[1]),
            "adversarial_prediction": int(row[2]),
            "clean_votes": [int(v) for v in row[6 : 6 + c]],
            "adversarial_votes": [int(v) for v in row[6 + c :]],
            "worst_case_correct": int(row[3]),
            "worst_case_k": k,
            "perturbation_linf": row[4],
            "perturbation_l2": row[5],
            "batch": b,
            "attack_forward_passes": ev.forward_passes,
            "settings_hash": digest,
        })
    return records, {"x_adv": x_adv, "attack_calls": attack_calls}


def _finished(out: Path, digest: str) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for path in sorted(out.glob("records*.jsonl")):
        for r in read_records(path):
            if r.get("settings_hash") == digest:
                done.setdefault(int(r["index"]), r)
    return done


def _merge(out: Path, digest: str, world_size: int) -> list[dict[str, Any]]:
    """All finished records, one per sample in dataset order; with several ranks, rewrite records.jsonl."""
    done = _finished(out, digest)
    records = [done[i] for i in sorted(done)]
    rank_files = sorted(out.glob("records.rank*.jsonl"))
    if rank_files:
        tmp = out / "records.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, out / "records.jsonl")
        for f in rank_files:
            f.unlink()
    return records


def _progress(total: int, initial: int, enabled: bool):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="evaluate", unit="batch")


def _sanity(ev: _Evaluator, dataset: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Carlini et al. 2019 checks on a probe set (the first ``sanity_n`` samples)."""
    n = min(cfg["run"]["sanity_n"], len(dataset))
    xs, ys = zip(*(dataset[i][:2] for i in range(n)))
    x = torch.stack([torch.as_tensor(v) for v in xs]).to(ev.device).float()
    y = torch.as_tensor(ys, dtype=torch.long).to(ev.device)
    seed = cfg["run"]["seed"]
    a = cfg["attack"]
    checks: dict[str, dict[str, Any]] = {}
    if a["name"] == "none":
        return {"probe_n": n, "checks": {"attack": {"passed": False, "detail": "attack.name is none"}}}

    def accuracy(x_adv: Tensor, salt: int) -> float:
        label, _ = ev.labels(x_adv, 1, _batch_generator(seed, 10_000, salt, ev.device))
        return float((label[0] == y).float().mean())

    x_und, _ = ev.attack(x, y, _batch_generator(seed, 10_000, 1, ev.device), undefended=True)
    with torch.no_grad():
        und = float((ev.classifier(x_und).argmax(1) == y).float().mean())
    checks["undefended classifier falls to <= 2%"] = {"passed": und <= 0.02, "detail": f"accuracy {und:.3f}"}
    slack = 1.0 / n
    if a["name"] != "fgsm":
        base = accuracy(ev.attack(x, y, _batch_generator(seed, 10_000, 2, ev.device))[0], 3)
        more = accuracy(ev.attack(x, y, _batch_generator(seed, 10_000, 4, ev.device), steps=2 * a["steps"])[0], 5)
        checks["accuracy does not rise when iterations double"] = {
            "passed": more <= base + slack,
            "detail": f"{a['steps']} steps {base:.3f}, {2 * a['steps']} steps {more:.3f}",
        }
    big_eps = 64 / 255 if a["norm"] == "linf" else 8.0
    changes = {"eps": big_eps}
    if a["name"] in ("pgd", "mask-pgd", "lowfreq-pgd"):
        changes["step_size"] = big_eps / 4
    big = accuracy(ev.attack(x, y, _batch_generator(seed, 10_000, 6, ev.device), **changes)[0], 7)
    with torch.no_grad():
        num_classes = int(ev.classifier(x[:1]).shape[1])
    chance = 1.0 / num_classes
    checks["large budget drives accuracy to chance or below"] = {
        "passed": big <= chance + slack, "detail": f"eps {big_eps:.4f}: accuracy {big:.3f} (chance {chance:.3f})"
    }
    return {"probe_n": n, "checks": checks, "all_passed": all(c["passed"] for c in checks.values())}


def _save_examples(path: Path, x: Tensor, x_adv: Tensor, purifier: Purifier | None, count: int = 8) -> None:
    from ..viz import save_grid

    x, x_adv = x[:count].detach().cpu(), x_adv[:count].detach().cpu()
    rows = {"original": x, "adversarial": x_adv, "perturbation x10": ((x_adv - x) * 10 + 0.5).clamp(0, 1)}
    if purifier is not None:
        dev_x = x_adv.to(next(purifier.eps_model.parameters()).device)
        with torch.no_grad():
            if hasattr(purifier, "mask"):
                rows["mask"] = purifier.mask(dev_x).cpu().expand_as(x)
            rows["purified"] = purifier.purify(dev_x, generator=torch.Generator(dev_x.device).manual_seed(0)).cpu()
    save_grid(rows, path)
