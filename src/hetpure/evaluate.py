"""The robustness evaluation harness: ``hetpure evaluate CONFIG.yaml`` and ``hetpure.evaluate(config)``.

One code path for both. A run attacks the defended model batch by batch, appends one JSON record per
sample to ``records.jsonl`` as each batch finishes (resumable: finished samples are skipped), and writes
``summary.json`` / ``summary.md``. Robust accuracy is reported by majority vote (the defended ensemble
prediction) and worst case (correct in every one of K independent defended evaluations).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import defended_model, make_attack
from .config_schema import DEFAULTS, parse_set, purify_config, resolve_config
from .devices import freeze
from .distributed import teardown_on_exit
from .errors import ConfigError, HetpureError, RecordsError
from .identity import (
    dataset_fingerprint,
    identity_diff,
    identity_hash,
    module_digest,
    path_digest,
    portable_config,
    run_identity,
)
from .purify import Purifier, eps_calls, purifier_from_config
from .records import RunLock, append_records, read_records, repair_tail, write_json_atomic

__all__ = [
    "DEFAULTS", "append_records", "attacked_purifier", "build_components", "build_dataset", "build_models",
    "describe_pipeline", "evaluate", "identity_of", "mcnemar_p", "paired_comparison", "parse_set", "purify_config",
    "read_records", "resolve_config", "settings_hash", "wilson_interval",
]



def settings_hash(cfg: dict[str, Any], dataset: Any = None, classifier: nn.Module | None = None,
                  eps_model: nn.Module | None = None) -> str:
    """The run identity's hash (:mod:`hetpure.identity`) of a resolved config.

    Reads the dataset's files and the checkpoints' bytes (digests are cached); in-memory ``dataset``,
    ``classifier`` or ``eps_model`` replace what the config names. ``data.n`` is not part of it: the subset
    of ``n`` images is the first ``n`` of one seeded permutation and each batch's random streams depend only
    on the batch index, so a run can grow (``n`` 64 → 256) and keep its finished images.
    """
    return identity_hash(identity_of(cfg, dataset, classifier, eps_model))


def identity_of(cfg: dict[str, Any], dataset: Any = None, classifier: nn.Module | None = None,
                eps_model: nn.Module | None = None) -> dict[str, Any]:
    """The run identity of a resolved config (see :func:`hetpure.identity.run_identity`)."""
    if dataset is None:  # the whole split: its fingerprint does not depend on n
        dataset = build_dataset({**cfg, "data": {**cfg["data"], "n": None}})
    diffusion = cfg["diffusion"]
    config_file = diffusion.get("config")
    return run_identity(
        cfg, dataset_fingerprint(dataset),
        module_digest(classifier) if classifier is not None else path_digest(cfg["classifier"]["path"]),
        module_digest(eps_model) if eps_model is not None else path_digest(diffusion["path"]),
        path_digest(config_file) if isinstance(config_file, str) else None,
    )


# --------------------------------------------------------------------------------------------------
# Statistics and records
# --------------------------------------------------------------------------------------------------


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


def paired_comparison(records: Iterable[dict[str, Any]], reference: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Compare two evaluations image by image on the images both hold (same data, ideally the same attack).

    For clean and robust (majority-vote) correctness: ``wins`` = images only ``records`` gets right,
    ``losses`` = images only ``reference`` gets right, ``difference`` = (wins − losses) / n and the exact
    McNemar p-value. Pairing removes the between-image variance that two independent intervals carry.

    When both hold the R votes of each image (``clean_votes`` / ``adversarial_votes``), also the mean
    paired difference of the true class's vote share, ``vote_share_difference`` = mean_i (v_a,i − v_b,i)
    with v = votes for the label / R, and its standard error ``vote_share_se`` (sample sd / √n). It sees
    what the majority vote rounds away: a change of a few votes per image, which flips only near-ties.
    """
    a = {int(r["index"]): r for r in records}
    b = {int(r["index"]): r for r in reference}
    common = sorted(set(a) & set(b))
    result: dict[str, Any] = {"n": len(common)}
    for key, field, votes in (("clean", "clean_prediction", "clean_votes"),
                              ("robust", "adversarial_prediction", "adversarial_votes")):
        ok_a = [a[i][field] == a[i]["label"] for i in common]
        ok_b = [b[i][field] == b[i]["label"] for i in common]
        wins = sum(x and not y for x, y in zip(ok_a, ok_b))
        losses = sum(y and not x for x, y in zip(ok_a, ok_b))
        result[key] = {"wins": wins, "losses": losses, "difference": (wins - losses) / len(common) if common else 0.0,
                       "p_value": mcnemar_p(wins, losses)}
        if common and all(votes in a[i] and votes in b[i] for i in common):
            d = [_vote_share(a[i], votes) - _vote_share(b[i], votes) for i in common]
            mean = sum(d) / len(d)
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
            result[key].update(vote_share_difference=mean, vote_share_se=sd / math.sqrt(len(d)))
    return result


def _vote_share(record: dict[str, Any], votes: str) -> float:
    counts = record[votes]
    return counts[int(record["label"])] / max(1, sum(counts))


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


def build_dataset(cfg: dict[str, Any]) -> Any:
    """The dataset (subset) of a resolved config: cheap, no model is loaded."""
    from .data import load_dataset

    d = cfg["data"]
    extra = dict(d["options"] or {})
    if d["download"]:
        extra["download"] = True
    names = model_class_names(cfg["classifier"]["name"])
    if d["name"] == "imagefolder" and names is not None and "class_names" not in extra:
        extra["class_names"] = names  # label folders by the model's class names, not sorted position
    return load_dataset(d["name"], root=d["root"], split=d["split"], n=d["n"], seed=d["seed"], **extra)


def model_class_names(classifier: str) -> list[str] | None:
    """The class names a registered classifier's outputs stand for, when known (CIFAR-10, MNIST)."""
    from .data import CIFAR10_CLASSES, MNIST_CLASSES
    from .models.registry import describe_classifier

    label_set = describe_classifier(classifier).label_set
    return {"cifar10": CIFAR10_CLASSES, "mnist": MNIST_CLASSES}.get(label_set or "")


def check_input_size(cfg: dict[str, Any], dataset: Any) -> None:
    """Refuse data whose image size is not the one the classifier's weights expect (before any model is
    loaded). A classifier without weights (``classifier.path`` null, random init) expects nothing."""
    from .models.registry import describe_classifier

    if cfg["classifier"]["path"] is None:
        return

    expected = describe_classifier(cfg["classifier"]["name"]).input_shape
    shape = tuple(torch.as_tensor(dataset[0][0]).shape)
    if expected is not None and shape != tuple(expected):
        c, h, w = expected
        mode = f", mode: {'L' if c == 1 else 'RGB'}" if shape[0] != c else ""
        raise ConfigError(
            f"the data's images are {'×'.join(map(str, shape))} but classifier {cfg['classifier']['name']} takes "
            f"{c}×{h}×{w}; fix: --set 'data.options={{resize: [{h}, {w}]{mode}}}'"
        )


def build_models(cfg: dict[str, Any], device: torch.device) -> tuple[nn.Module, Purifier | None]:
    """Classifier and purifier of a resolved config, on ``device``, parameters frozen."""
    from .models.registry import load_classifier

    c = cfg["classifier"]
    classifier = load_classifier(c["name"], path=c["path"], trust_pickle=c["trust_pickle"], **(c["options"] or {}))
    classifier = classifier.to(device).eval()
    purifier = None
    if cfg["defense"]["method"] != "none":
        from .models.fast import accelerate

        eps_model = _load_eps(cfg["diffusion"]).to(device).eval()
        eps_model = accelerate(eps_model, **(cfg["diffusion"]["accelerate"] or {}))
        purifier = purifier_from_config(
            eps_model, classifier, cfg["defense"]["method"], purify_config(cfg["defense"]), c["mask_layers"]
        )
    return classifier, purifier


def build_components(cfg: dict[str, Any], device: torch.device) -> tuple[Any, nn.Module, Purifier | None]:
    """Dataset, classifier and purifier of a resolved config."""
    return (build_dataset(cfg), *build_models(cfg, device))


def attacked_purifier(cfg: dict[str, Any], classifier: nn.Module, purifier: Purifier | None,
                      device: torch.device) -> Purifier | None:
    """The purifier the attack differentiates: ``purifier`` itself unless ``attack.through`` names another
    pipeline (a transfer evaluation: craft the examples on one defence, score them on another)."""
    through = cfg["attack"]["through"]
    if through is None:
        return purifier
    if through["method"] == "none":
        return None
    if purifier is not None:
        eps_model = purifier.eps_model
    else:
        from .models.fast import accelerate

        eps_model = accelerate(_load_eps(cfg["diffusion"]).to(device).eval(), **(cfg["diffusion"]["accelerate"] or {}))
    return purifier_from_config(eps_model, classifier, through["method"], purify_config(through),
                                cfg["classifier"]["mask_layers"])


def describe_pipeline(defense: dict[str, Any], ddim_steps: int | None = None) -> str:
    """One line naming a defence's method and levels, e.g. ``heterogeneous t_s 0.1 / t_l 0.2, τ 0.9, U 3, S = 10``."""
    method = defense["method"]
    if method == "none":
        return "none (the bare classifier)"
    steps = ddim_steps or defense["ddim_steps"]
    if method == "uniform":
        sampler = "" if defense.get("sampler", "ddim") == "ddim" else f", {defense['sampler']}"
        return f"uniform t* = {defense['t_star']}{sampler}, S = {steps}"
    if defense.get("levels") == "graded":
        select = f"graded τ {defense['tau_lo']}–{defense['tau_hi']}"
    else:
        select = f"top-p {defense['top_p']}" if defense.get("top_p") is not None else f"τ {defense['tau']}"
    return (f"heterogeneous t_s {defense['t_s']} / t_l {defense['t_l']}, {select}, "
            f"U {defense['resample_steps']}, S = {steps}")


def _load_eps(diffusion: dict[str, Any]) -> nn.Module:
    from .models.loading import load_eps_model

    kwargs = {k: diffusion[k] for k in ("config", "dtype", "trust_pickle") if diffusion.get(k) is not None}
    return load_eps_model(diffusion["kind"], diffusion["path"], **kwargs)


def _attack_kwargs(a: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    kw: dict[str, Any] = {"norm": a["norm"], "eot": a["eot"], "eot_batch": a["eot_batch"], "generator": generator}
    if a["eps"] is not None:
        kw["eps"] = float(a["eps"])
    if a["name"] in ("pgd", "mask-pgd", "lowfreq-pgd"):
        kw.update(steps=a["steps"], step_size=a["step_size"], random_start=a["random_start"])
    if a["name"] == "mask-pgd":
        kw.update(mode=a["mask_mode"], attention_weight=float(a["attention_weight"]))
    elif a["name"] == "lowfreq-pgd":
        kw.update(grid=int(a["grid"]), upsample=a["upsample"])
    elif a["name"].startswith("apgd"):
        kw.update(steps=a["steps"], random_start=a["random_start"])
    return kw


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
        counts = torch.nn.functional.one_hot(grouped.long(), num_classes).sum(1)
        return counts.argmax(2), counts

    def checkpointing(self, target: Purifier | None, x: Tensor, attack: Any) -> bool | None:
        """Exact gradient: checkpoint per step unless the whole graph of one differentiated chunk fits in
        ``attack.memory_budget_gb`` (``attack.checkpoint: auto``); records are the same either way."""
        a = self.cfg["attack"]
        if target is None or a["gradient"] != "exact":
            return None
        from .graph_memory import use_checkpointing

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
        return attack(model, x, y), int(getattr(model, "eps_calls", lambda: 0)())


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
    from .distributed import DistContext

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
        return _summarise(cfg, digest, records, {"seconds": 0.0, "images": 0}, None, dist.device, out)
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
        raise ConfigError(f"run.device {device!r} is not a device ({exc}); fix: --set run.device=cpu") from None
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
        if dist.is_main:
            _write_config(out, cfg, identity, digest)
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
        progress.set_postfix(_running(done.values()))
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
        summary = _summarise(cfg, digest, records, stats, sanity_report, device, out, steps)
        write_json_atomic(out / "summary.json", summary)
        (out / "summary.md").write_text(_summary_markdown(summary))
    dist.barrier()
    return summary


def _check_classifier(cfg: dict[str, Any], classifier: nn.Module, x: Tensor, y: Tensor,
                      classes: list[str] | None) -> None:
    """Once per run: finite (B, classes) logits, and labels the classifier can output."""
    from .models.classifiers import check_logits

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


def _running(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    rs = list(records)
    if not rs:
        return {}
    clean = sum(r["clean_prediction"] == r["label"] for r in rs) / len(rs)
    robust = sum(r["adversarial_prediction"] == r["label"] for r in rs) / len(rs)
    return {"n": str(len(rs)), "clean": f"{clean:.3f}", "robust": f"{robust:.3f}"}


def _progress(total: int, initial: int, enabled: bool):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="evaluate", unit="batch")


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    mem = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        mem["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return mem


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pipeline_calls(defense: dict[str, Any], num_timesteps: int, ddim_steps: int | None = None) -> int:
    """ε-model calls of one pass through a pipeline (a resolved defense section)."""
    if defense["method"] == "none":
        return 0
    config = purify_config(defense)
    if ddim_steps is not None:
        config = config.replace(ddim_steps=ddim_steps)
    return eps_calls(config, num_timesteps, uniform=defense["method"] == "uniform")


def _summarise(cfg: dict[str, Any], digest: str, records: list[dict[str, Any]], stats: dict[str, Any],
               sanity_report: dict[str, Any] | None, device: torch.device, out: Path,
               num_timesteps: int = 1000) -> dict[str, Any]:
    from . import __version__

    n = len(records)
    clean = sum(r["clean_prediction"] == r["label"] for r in records)
    robust = sum(r["adversarial_prediction"] == r["label"] for r in records)
    worst = sum(r["worst_case_correct"] == r["worst_case_k"] for r in records)
    a = cfg["attack"]
    through = a["through"] or cfg["defense"]
    attacked_steps = a["surrogate_ddim_steps"] if a["gradient"] == "surrogate" else None
    defence_calls = _pipeline_calls(cfg["defense"], num_timesteps)
    attack_calls = 0 if a["gradient"] == "bpda" else _pipeline_calls(through, num_timesteps, attacked_steps)
    passes = 0 if a["name"] == "none" else (1 if a["name"] == "fgsm" else a["steps"]) * a["eot"]
    summary = {
        "n": n,
        "clean_accuracy": clean / n if n else math.nan,
        "clean_accuracy_ci95": wilson_interval(clean, n),
        "robust_accuracy": robust / n if n else math.nan,
        "robust_accuracy_ci95": wilson_interval(robust, n),
        "robust_accuracy_worst_case": worst / n if n else math.nan,
        "robust_accuracy_worst_case_ci95": wilson_interval(worst, n),
        "worst_case_k": cfg["run"]["worst_case_k"],
        "pipelines": {
            "attacked": describe_pipeline(through, attacked_steps if through["method"] != "none" else None),
            "evaluated": describe_pipeline(cfg["defense"]),
            "transfer": a["through"] is not None,
        },
        "votes_per_evaluation": cfg["defense"]["runs"] if cfg["defense"]["method"] != "none" else 1,
        "eps_calls": {
            "attack_per_forward_pass": attack_calls,
            "defence_per_purification": defence_calls,
            "attack_per_image": attack_calls * passes,
            "attack_gradient": a["gradient"] if through["method"] != "none" else "classifier",
            **({"attack_checkpointed": stats["checkpointed"]} if stats.get("checkpointed") is not None else {}),
        },
        "seconds_per_image": _mean([r["seconds"] for r in records if "seconds" in r]),
        "seconds_per_image_this_session": stats["seconds"] / stats["images"] if stats["images"] else None,
        "images_this_session": stats["images"],
        "memory": _peak_memory_mb(device),
        "settings_hash": digest,
        "config": portable_config(cfg, out),
        "version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {cpu_model()} threads={torch.get_num_threads()}",
        "device": str(device),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if sanity_report is not None:
        summary["sanity"] = sanity_report
    return summary


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``): timings are only
    comparable on one CPU model, so every time is recorded with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def _summary_markdown(s: dict[str, Any]) -> str:
    ci = s["robust_accuracy_ci95"]
    wci = s["robust_accuracy_worst_case_ci95"]
    cci = s["clean_accuracy_ci95"]
    calls = s["eps_calls"]
    spi = s["seconds_per_image"]
    lines = ["# hetpure evaluation summary", ""]
    pipes = s.get("pipelines")
    if pipes and pipes["transfer"]:
        lines += [
            "**Transfer evaluation: the attack differentiated another pipeline than the one evaluated.** "
            "Robust accuracy here is that of transferred examples, not of an adaptive attack on the defence.",
            "",
            f"- attacked: {pipes['attacked']} ({calls['attack_per_forward_pass']} ε-calls per forward pass)",
            f"- evaluated: {pipes['evaluated']} ({calls['defence_per_purification']} ε-calls per purification)",
            "",
        ]
    lines += [
        "| metric | value | 95% CI |",
        "|---|---|---|",
        f"| n | {s['n']} | |",
        f"| clean accuracy | {_pct(s['clean_accuracy'])} | {_pct(cci[0])} – {_pct(cci[1])} |",
        f"| robust accuracy (majority vote of {s['votes_per_evaluation']}) | {_pct(s['robust_accuracy'])} | "
        f"{_pct(ci[0])} – {_pct(ci[1])} |",
        f"| robust accuracy (worst case of K = {s['worst_case_k']}) | {_pct(s['robust_accuracy_worst_case'])} | "
        f"{_pct(wci[0])} – {_pct(wci[1])} |",
        f"| time per image (attack + evaluation) | {'n/a' if spi is None else f'{spi:.2f} s'} | |",
        f"| peak memory | {', '.join(f'{k} {v:.0f}' for k, v in s['memory'].items())} | |",
        "",
        "## ε-model calls",
        "",
        f"- attack: {calls['attack_per_forward_pass']} per forward pass through the defence "
        f"(gradient: {calls['attack_gradient']}), {calls['attack_per_image']} per image in total",
        f"- defence: {calls['defence_per_purification']} per purification, "
        f"× {s['votes_per_evaluation']} votes per evaluation",
    ]
    if calls["attack_per_forward_pass"] != calls["defence_per_purification"]:
        lines.append(
            f"- **the attacked pipeline differs from the evaluated one**: "
            f"{calls['attack_per_forward_pass']} vs {calls['defence_per_purification']} ε-model calls"
        )
    if "sanity" in s:
        lines += ["", "## Sanity checks (Carlini et al. 2019)", ""]
        for name, check in s["sanity"]["checks"].items():
            mark = "PASS" if check["passed"] else "**FAILED**"
            lines.append(f"- {mark} {name}: {check['detail']}")
    lines += [
        "",
        f"hetpure {s['version']}, torch {s['torch']}, {s['machine']}, device {s['device']}, "
        f"settings hash `{s['settings_hash']}`, finished {s['finished']}",
        "",
        "## Resolved config",
        "",
        "```json",
        json.dumps(s["config"], indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Sanity checks and figures
# --------------------------------------------------------------------------------------------------


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
    from .viz import save_grid

    x, x_adv = x[:count].detach().cpu(), x_adv[:count].detach().cpu()
    rows = {"original": x, "adversarial": x_adv, "perturbation x10": ((x_adv - x) * 10 + 0.5).clamp(0, 1)}
    if purifier is not None:
        dev_x = x_adv.to(next(purifier.eps_model.parameters()).device)
        with torch.no_grad():
            if hasattr(purifier, "mask"):
                rows["mask"] = purifier.mask(dev_x).cpu().expand_as(x)
            rows["purified"] = purifier.purify(dev_x, generator=torch.Generator(dev_x.device).manual_seed(0)).cpu()
    save_grid(rows, path)
