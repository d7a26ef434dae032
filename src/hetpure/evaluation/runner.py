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

from ..attacks import attack_kwargs
from ..distributed import teardown_on_exit
from ..errors import ConfigError, HetpureError, RecordsError
from ..purify import Purifier
from .batch import Evaluator, batch_generator, evaluate_batch
from .components import (
    attacked_purifier,
    build_dataset,
    build_models,
    check_input_size,
    identity_of,
    model_class_names,
)
from .config import attack_sections, resolve_config
from .identity import identity_diff, identity_hash, portable_config
from .records import RunLock, append_records, make_folder, read_records, repair_tail, write_json_atomic
from .report import running_postfix, summarise, summary_markdown
from .shards import write_shard


def _attack_kwargs(a: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """The attack's constructor arguments from an ``attack`` section, by parameter name."""
    return attack_kwargs(a["name"], a, generator=generator)


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
    conditioned = None
    if cfg["data"]["survivors_of"]:  # attack only what the listed runs left robust
        from .runs import SurvivorSubset, survivors

        clean = cfg["data"]["survivors_clean"]
        keep, conditioned = survivors(cfg["data"]["survivors_of"], identity, cfg["run"]["ties"], clean)
        identity["data"]["survivors_of"] = {"settings_hashes": [c["settings_hash"] for c in conditioned],
                                            **({"clean": clean} if clean != "each" else {}),
                                            "ties": cfg["run"]["ties"]}
        dataset = SurvivorSubset(dataset, keep)
    sources = {a["source"] for a in attack_sections(cfg) if a["name"] == "saved"}
    if sources:  # a rescoring: the images every source run finished (and saved examples of)
        from .runs import SurvivorSubset, load_run

        finished = [{int(r["index"]) for r in load_run(f, "attack.source").records} for f in sorted(sources)]
        dataset = SurvivorSubset(dataset, set.intersection(*finished))
        if not len(dataset):
            raise ConfigError(f"attack.source {sorted(sources)} holds no finished image of this data subset; "
                              "nothing to rescore")
    digest = identity_hash(identity)

    dist = DistContext.from_env(cfg["run"]["device"], cfg["run"].get("dist_timeout_minutes"))
    positions = list(range(len(dataset)))
    indices = [int(i) for i in getattr(dataset, "indices", positions)]
    if len(indices) != len(positions):
        indices = positions
    bs = cfg["run"]["batch_size"]
    batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
    wanted = set(indices)  # a grown run's folder may hold records beyond this subset
    dist.check_same_images(indices)  # survivors / rescored images are chosen by each rank
    if cfg["data"]["survivors_of"] and not indices:  # after the check: every rank stops here together
        raise ConfigError(f"data.survivors_of: no image is robust in every one of {cfg['data']['survivors_of']}"
                          " (or they share no image); nothing is left to attack")
    done = {i: r for i, r in _finished(out, digest).items() if i in wanted}
    if out.is_dir() and len(done) == len(wanted) and not os.access(out, os.W_OK):
        records = [done[i] for i in sorted(done)]  # read-only and finished: summarise, write nothing
        return summarise(cfg, digest, records, {"seconds": 0.0, "images": 0}, None, dist.device, out)
    if dist.is_main:
        make_folder(out)  # an unwritable parent: the fix (--out DIR), not an OSError traceback
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
    from ..devices import check_run_device

    check_run_device(device)  # not a device, meta, or an accelerator this machine lacks: the fix, before any work


def _claim_folder(out: Path, identity: dict[str, Any], digest: str) -> None:
    """Refuse a folder whose records belong to other settings, naming what differs (under the lock).

    The records' own ``settings_hash`` decides, so a folder whose config.json was deleted (or is stale) never
    ends up holding records of two settings; config.json, when it describes those records, names the keys."""
    config_file = out / "config.json"
    others = sorted({str(r.get("settings_hash")) for path in sorted(out.glob("records*.jsonl"))
                     for r in read_records(path)} - {digest})
    if not others:
        return  # no records of other settings: this run takes the folder
    try:
        previous = json.loads(config_file.read_text()) if config_file.exists() else {}
    except ValueError:
        previous = {}
    old = previous.get("settings_hash") if isinstance(previous, dict) else None
    if old in others and "identity" in previous:
        changes = identity_diff(previous["identity"], identity)
        what = "; ".join(changes[:12]) + (f"; … {len(changes) - 12} more" if len(changes) > 12 else "")
    else:
        state = "missing" if not config_file.exists() else "not about those records"
        what = (f"its records have settings hash {', '.join(others[:3])}, this run {digest} (config.json, which "
                f"would name the keys that differ, is {state}; a run made before hetpure recorded identities: "
                "see migrate_runs)")
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
    ev = Evaluator(cfg, classifier, purifier, device,
                   [attacked_purifier(cfg, classifier, purifier, device, a) for a in attack_sections(cfg)])
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
        batch_indices = [indices[batches[b][i]] for i in range(len(x))]
        records, extras = evaluate_batch(ev, x, y, b, batch_indices, digest)
        elapsed = time.perf_counter() - start
        for r in records:
            r["seconds"] = round(elapsed / len(x), 4)  # attack + evaluations, per image of this batch
        if dist.is_main and not config_written:  # once, with the run's first records
            _write_config(out, cfg, identity, digest)
            config_written = True
        if cfg["run"]["eot_diagnostic"] and dist.is_main and not (out / "eot_diagnostic.json").exists():
            _write_diagnostic(out, ev, x, y, extras, batch_indices, b, digest)
        if cfg["run"]["save_adversarial"]:  # the shard first: a record never names a shard that is not whole
            shard, sha = write_shard(out, b, extras["examples"], {"settings_hash": digest, "batch": str(b)})
            for r in records:
                r.update(adversarial_shard=shard, adversarial_shard_sha256=sha)
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
        progress.set_postfix(running_postfix(done.values(), cfg["run"]["ties"]))
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


def _write_diagnostic(out: Path, ev: Evaluator, x: Tensor, y: Tensor, extras: dict[str, Any],
                      batch_indices: list[int], b: int, digest: str) -> None:
    """The EOT diagnostic (:mod:`hetpure.evaluation.diagnostics`) of each attack on this batch's images it ran
    on, once per run folder, from its own random stream (the records do not change)."""
    from .diagnostics import DIAGNOSTIC_FILE, eot_diagnostic

    results = []
    for j, (x_adv, attacked) in enumerate(extras["examples"]):
        rows = [batch_indices.index(i) for i in attacked]
        if not rows or attack_sections(ev.cfg)[j]["name"] in ("none", "saved") or ev.purifier is None:
            results.append(None)  # nothing stochastic to measure
            continue
        generator = batch_generator(ev.cfg["run"]["seed"], b, 5_000 + j, ev.device)  # salts stay below the batch stride
        results.append(eot_diagnostic(ev, x[rows], y[rows], x_adv, generator, j))
    write_json_atomic(out / DIAGNOSTIC_FILE, {"settings_hash": digest, "batch": b, "attacks": results})


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


def _sanity(ev: Evaluator, dataset: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Carlini et al. 2019 checks on a probe set (the first ``sanity_n`` samples)."""
    n = min(cfg["run"]["sanity_n"], len(dataset))
    xs, ys = zip(*(dataset[i][:2] for i in range(n)))
    x = torch.stack([torch.as_tensor(v) for v in xs]).to(ev.device).float()
    y = torch.as_tensor(ys, dtype=torch.long).to(ev.device)
    seed = cfg["run"]["seed"]
    a = attack_sections(cfg)[0]  # an ensemble: its first attack
    checks: dict[str, dict[str, Any]] = {}
    if a["name"] == "none":
        return {"probe_n": n, "checks": {"attack": {"passed": False, "detail": "attack.name is none"}}}

    def accuracy(x_adv: Tensor, salt: int) -> float:
        label, _ = ev.labels(x_adv, 1, batch_generator(seed, 10_000, salt, ev.device))
        return float((label[0] == y).float().mean())

    x_und, _ = ev.attack(x, y, batch_generator(seed, 10_000, 1, ev.device), undefended=True)
    with torch.no_grad():
        und = float((ev.classifier(x_und).argmax(1) == y).float().mean())
    checks["undefended classifier falls to <= 2%"] = {"passed": und <= 0.02, "detail": f"accuracy {und:.3f}"}
    slack = 1.0 / n
    if a["name"] != "fgsm":
        x_base = ev.attack(x, y, batch_generator(seed, 10_000, 2, ev.device))[0]
        base = accuracy(x_base, 3)
        more = accuracy(ev.attack(x, y, batch_generator(seed, 10_000, 4, ev.device), steps=2 * a["steps"])[0], 5)
        checks["accuracy does not rise when iterations double"] = {
            "passed": more <= base + slack,
            "detail": f"{a['steps']} steps {base:.3f}, {2 * a['steps']} steps {more:.3f}",
        }
    big_eps = 64 / 255 if a["norm"] == "linf" else 8.0
    changes = {"eps": big_eps}
    if a["name"] in ("pgd", "mask-pgd", "lowfreq-pgd"):
        changes["step_size"] = big_eps / 4
    big = accuracy(ev.attack(x, y, batch_generator(seed, 10_000, 6, ev.device), **changes)[0], 7)
    with torch.no_grad():
        num_classes = int(ev.classifier(x[:1]).shape[1])
    chance = 1.0 / num_classes
    checks["large budget drives accuracy to chance or below"] = {
        "passed": big <= chance + slack, "detail": f"eps {big_eps:.4f}: accuracy {big:.3f} (chance {chance:.3f})"
    }
    report: dict[str, Any] = {"probe_n": n, "checks": checks, "all_passed": all(c["passed"] for c in checks.values())}
    if a["name"] != "fgsm" and ev.purifier is not None:  # not a pass/fail check: a measurement with a warning
        from .diagnostics import eot_diagnostic

        report["eot_diagnostic"] = eot_diagnostic(ev, x, y, x_base, batch_generator(seed, 10_000, 8, ev.device))
    return report



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
