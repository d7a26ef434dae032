"""Mutation check: plant one known bug at a time in a scratch copy of the core and run the tests that guard it.

Each mutant is an exact string replacement in one file under ``src/hetpure`` (the old string must occur
exactly once, or the check stops: a mutant that no longer applies must be updated, not skipped). The script
first snapshots ``src/``, ``tests/`` and ``pyproject.toml`` (edits made while it runs do not mix in); for every
mutant it copies that snapshot to a fresh temporary folder, applies the
replacement, and runs only the mutant's test files with pytest (``-x -q -p no:cacheprovider``), the scratch
``src`` first on ``PYTHONPATH``; the child imports ``hetpure`` and checks it comes from the scratch copy
before pytest starts (the package is installed editable from this checkout). A failing test run means the
mutant is killed (so does a run past ``--timeout``); a passing one means it survived, i.e. the tests miss
that bug.

First a baseline: every test file, unmutated, must pass (a mutant whose files fail unmutated is reported as
an error, never as killed). ``--shared without`` runs with ``../shared`` absent (HETPURE_SHARED unset, and the
scratch folder has no sibling ``shared``), so tests that need fixture files skip; ``--shared both`` runs the
list twice (about 5 minutes per pass on 2 busy cores). Exits non-zero when the kill rate of a pass is below
``--min-rate`` or any mutant errs.

    python bench/mutation_check.py [--shared with|without|both] [--only NAME ...] [--list] [--min-rate 0.9]
                                   [--jobs 1] [--timeout 300]

Add a mutant whenever a bug is found, with the test files that now catch it.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "hetpure"

SCHEDULE_TESTS = ("tests/core/test_schedule.py", "tests/core/test_sampling.py", "tests/core/test_purify.py")
MASK_TESTS = ("tests/core/test_mask.py",)
ATTACK_TESTS = ("tests/attacks/test_attacks_properties.py", "tests/attacks/test_attacks.py")
IDENTITY_TESTS = ("tests/evaluation/test_run_identity.py",)
COVERAGE_TESTS = ("tests/attacks/test_attack_coverage.py",)
REPAINT_TESTS = ("tests/core/test_repaint_resampling.py",)
COUNTING_TESTS = ("tests/evaluation/test_counting.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to src/hetpure
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS: list[Mutant] = [
    # --- the mutants that first survived a light mutation test ------------------------------------------------
    Mutant("binarize-strict-gt", "mask.py",
           "return (energy >= tau).to(energy.dtype)", "return (energy > tau).to(energy.dtype)", MASK_TESTS),
    Mutant("apgd-momentum-0.5", "attacks/apgd.py",
           "x_adv + 0.75 * (z - x_adv) + 0.25 * (x_adv - x_prev)", "x_adv + 0.5 * (z - x_adv) + 0.5 * (x_adv - x_prev)",
           ATTACK_TESTS),
    Mutant("apgd-never-halves", "attacks/apgd.py", "step / 2", "step / 1", ATTACK_TESTS),
    Mutant("eot-first-sample-only", "attacks/base.py",
           "+= g.view(k, *xp.shape).sum(0)", "+= k * g.view(k, *xp.shape)[0]", ATTACK_TESTS),
    Mutant("settings-hash-leaves-out-tau", "evaluation/identity.py",
           'NOT_IN_IDENTITY: dict[str, tuple[str, ...]] = {\n',
           'NOT_IN_IDENTITY: dict[str, tuple[str, ...]] = {\n    "defense": ("tau",),\n', IDENTITY_TESTS),
    Mutant("q-sample-abar-not-sqrt", "schedule.py",
           "return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise(x0)",
           "return a * x0 + math.sqrt(1.0 - a) * noise(x0)", SCHEDULE_TESTS),
    Mutant("forward-step-off-by-one", "schedule.py",
           "a = schedule.alpha(t + 1)", "a = schedule.alpha(t)", SCHEDULE_TESTS),
    Mutant("ddim-eps-coefficient", "schedule.py",
           "math.sqrt(max(1.0 - a_s - sigma**2, 0.0)) * eps", "math.sqrt(max(1.0 - a_t - sigma**2, 0.0)) * eps",
           SCHEDULE_TESTS),
    Mutant("resample-u-minus-1", "sampling.py",
           "for u in range(resample_steps):", "for u in range(resample_steps - 1):", SCHEDULE_TESTS),
    # --- schedule and sampler ----------------------------------------------------------------------------
    Mutant("q-sample-noise-coefficient", "schedule.py",
           "return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise(x0)",
           "return math.sqrt(a) * x0 + (1.0 - a) * noise(x0)", SCHEDULE_TESTS),
    Mutant("ddim-x0-estimate-uses-abar-s", "schedule.py",
           "a_t, a_s = schedule.alpha_bar(t), schedule.alpha_bar(s)\n    x0_hat = (x - math.sqrt(1.0 - a_t) * eps)",
           "a_t, a_s = schedule.alpha_bar(t), schedule.alpha_bar(s)\n    x0_hat = (x - math.sqrt(1.0 - a_s) * eps)",
           SCHEDULE_TESTS),
    Mutant("ddim-sigma-not-subtracted", "schedule.py",
           "max(1.0 - a_s - sigma**2, 0.0)", "max(1.0 - a_s, 0.0)", SCHEDULE_TESTS),
    Mutant("alpha-bar-minus-one-wraps", "schedule.py",
           "return 1.0 if t < 0 else self._alpha_bars[t]", "return self._alpha_bars[t]", SCHEDULE_TESTS),
    Mutant("ddim-timesteps-one-short", "schedule.py",
           "kept = nominal[: int(ddim_steps * t_frac) + 1]", "kept = nominal[: int(ddim_steps * t_frac)]",
           SCHEDULE_TESTS),
    # (adding noise at t = 0 is an equivalent mutant: the posterior variance there is 0)
    Mutant("ddpm-mean-x0-coefficient", "schedule.py",
           "mean = (math.sqrt(a_prev) * beta / (1.0 - a_t)) * x0_hat",
           "mean = (math.sqrt(a_t) * beta / (1.0 - a_t)) * x0_hat", SCHEDULE_TESTS),
    Mutant("ddpm-variance-beta", "schedule.py",
           "var = beta * (1.0 - a_prev) / (1.0 - a_t)", "var = beta", SCHEDULE_TESTS),
    Mutant("eps-at-pre-resample-timestep", "sampling.py",
           "t_up = t + resample_steps\n", "t_up = t\n", SCHEDULE_TESTS),
    Mutant("reset-the-attended-pixels", "sampling.py",
           "x = x + known * (q_sample(schedule, x0, t, noise) - x)  # Alg. 1, line 6",
           "x = x + (1 - known) * (q_sample(schedule, x0, t, noise) - x)  # Alg. 1, line 6",
           SCHEDULE_TESTS),
    Mutant("stage-boundary-excludes-t-s", "sampling.py",
           "return s >= t_s * num_timesteps - _STAGE_TOL", "return s > t_s * num_timesteps + _STAGE_TOL",
           SCHEDULE_TESTS),
    Mutant("start-one-step-low", "sampling.py",
           "x = q_sample(eps_model.schedule, x0, ts[0], noise)", "x = q_sample(eps_model.schedule, x0, ts[1], noise)",
           SCHEDULE_TESTS),
    # --- mask ----------------------------------------------------------------------------------------------
    Mutant("top-p-round-not-ceil", "mask.py",
           "k = max(1, math.ceil(top_p * flat.shape[1] - 1e-9))", "k = max(1, round(top_p * flat.shape[1]))",
           MASK_TESTS),
    Mutant("top-p-keeps-lowest", "mask.py",
           "idx = flat.topk(k, dim=1).indices", "idx = flat.topk(k, dim=1, largest=False).indices", MASK_TESTS),
    Mutant("energy-abs-not-square", "mask.py",
           "energy = act.float().pow(2).sum(dim=1, keepdim=True)",
           "energy = act.float().abs().sum(dim=1, keepdim=True)", MASK_TESTS),
    Mutant("energy-mean-over-layers", "mask.py",
           "return torch.stack(maps, 0).amax(0)\n\n\ndef binarize",
           "return torch.stack(maps, 0).mean(0)\n\n\ndef binarize", MASK_TESTS),
    # --- attacks -------------------------------------------------------------------------------------------
    Mutant("apgd-first-step-eps", "attacks/apgd.py",
           "step = torch.full((b,), 2 * self.eps", "step = torch.full((b,), self.eps", ATTACK_TESTS),
    Mutant("linf-projection-2eps", "attacks/base.py",
           "delta = delta.clamp(-eps, eps)", "delta = delta.clamp(-2 * eps, 2 * eps)", ATTACK_TESTS),
    # --- run identity --------------------------------------------------------------------------------------
    Mutant("identity-leaves-out-run-seed", "evaluation/identity.py",
           '"run": ("out", "progress",', '"run": ("seed", "out", "progress",', IDENTITY_TESTS),
    Mutant("identity-ignores-data-content", "evaluation/identity.py",
           'ident["data"]["fingerprint"] = data_fingerprint', 'ident["data"]["fingerprint"] = None', IDENTITY_TESTS),
    Mutant("identity-ignores-classifier-weights", "evaluation/identity.py",
           'ident["classifier"]["digest"] = classifier_digest', 'ident["classifier"]["digest"] = None',
           IDENTITY_TESTS),
    # --- the gaps of the second fault sweep: APGD's schedule at N where p_j·N is not whole ---------------------
    Mutant("apgd-checkpoints-unrounded", "attacks/apgd.py",
           "math.ceil(round(q * steps, 6))", "math.ceil(q * steps)", COVERAGE_TESTS),
    Mutant("apgd-checkpoints-floor", "attacks/apgd.py",
           "math.ceil(round(q * steps, 6))", "math.floor(round(q * steps, 6))", COVERAGE_TESTS),
    Mutant("apgd-checkpoints-round", "attacks/apgd.py",
           "math.ceil(round(q * steps, 6))", "round(q * steps)", COVERAGE_TESTS),
    Mutant("apgd-halves-one-iteration-late", "attacks/apgd.py",
           "if k + 1 in checkpoints and k + 1 > last_ck:", "if k in checkpoints and k > last_ck:", COVERAGE_TESTS),
    Mutant("apgd-halving-keeps-the-iterate", "attacks/apgd.py",
           "x_adv = torch.where(reduce.view(view), x_best, x_adv)", "x_adv = x_adv", COVERAGE_TESTS),
    # --- the random start covers the whole ball --------------------------------------------------------------
    Mutant("random-start-one-sided", "attacks/base.py",
           "return project(x + (2 * u - 1) * eps, x, eps, norm)", "return project(x + u * eps, x, eps, norm)",
           COVERAGE_TESTS),
    Mutant("random-start-half-width", "attacks/base.py",
           "return project(x + (2 * u - 1) * eps, x, eps, norm)", "return project(x + (u - 0.5) * eps, x, eps, norm)",
           COVERAGE_TESTS),
    Mutant("l2-random-start-on-the-sphere", "attacks/base.py",
           "steepest_step(d, \"l2\") * (eps * r).view(-1, 1, 1, 1)", "steepest_step(d, \"l2\") * eps",
           COVERAGE_TESTS),
    Mutant("pgd-ignores-random-start", "attacks/pgd.py",
           "return random_start(x, self.eps, self.norm, self.generator) if self.random_start else x.clone()",
           "return x.clone()", COVERAGE_TESTS),
    # --- RePaint resampling with attended pixels (an empty mask hides all of these) --------------------------
    Mutant("repaint-resets-the-attended-pixels", "sampling.py",
           "        x = x + known * (q_sample(schedule, x0, t, noise) - x)\n        x = ddim_step(",
           "        x = x + (1 - known) * (q_sample(schedule, x0, t, noise) - x)\n        x = ddim_step(",
           REPAINT_TESTS),
    Mutant("repaint-renoise-drops-the-signal-scale", "sampling.py",
           "x = math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * noise(x)",
           "x = x + math.sqrt(1.0 - ratio) * noise(x)", REPAINT_TESTS),
    Mutant("repaint-renoise-to-the-wrong-level", "sampling.py",
           "ratio = schedule.alpha_bar(t) / schedule.alpha_bar(s)", "ratio = schedule.alpha_bar(t)", REPAINT_TESTS),
    Mutant("repaint-ddim-from-s", "sampling.py",
           "x = ddim_step(schedule, x, eps_model(x, _timestep_tensor(x, t)), t, s, eta, noise)\n        if j",
           "x = ddim_step(schedule, x, eps_model(x, _timestep_tensor(x, s)), t, s, eta, noise)\n        if j",
           REPAINT_TESTS),
    # --- the bugs the second fault sweep found, with the tests that now catch them --------------------------
    Mutant("trust-pickle-truthy", "models/checkpoint.py",
           "    if value is True or value is False:\n        return value",
           "    if True:\n        return bool(value)", ("tests/models/test_trust_pickle.py",)),
    Mutant("yaml-duplicate-keys-last-wins", "yamlio.py",
           "            if first is not None:\n                raise _DuplicateKey(key, first, line)",
           "            if False:\n                raise _DuplicateKey(key, first, line)", ("tests/test_yamlio.py",)),
    Mutant("yaml11-yes-is-true", "yamlio.py",  # keeps YAML 1.1's resolver: yes/on/no/off become booleans again
           "for tag, regexp in resolvers if tag != _BOOL_TAG]", "for tag, regexp in resolvers]",
           ("tests/models/test_trust_pickle.py", "tests/test_yamlio.py")),
    Mutant("nonfinite-logits-voted", "checks.py",
           "if finite and logits.is_floating_point() and not bool(torch.isfinite(logits).all()):",
           "if False:", ("tests/core/test_input_errors.py",)),
    Mutant("image-sizes-from-the-first-image", "evaluation/components.py",
           'probe = getattr(dataset, "image_shapes", None)', "probe = None",
           ("tests/evaluation/test_run_hardening.py",)),
    Mutant("claim-trusts-config-json-only", "evaluation/runner.py",
           "for r in read_records(path)} - {digest})", "for r in read_records(path)} - {digest}) if False else []",
           ("tests/evaluation/test_run_hardening.py",)),
    Mutant("purify-oldest-line-wins", "predict.py",
           'newest[row["file"]] = row', 'newest.setdefault(row["file"], row)', ("tests/test_purify_resume.py",)),
    Mutant("purify-skips-other-settings", "predict.py",
           'if r.get("settings") == key and "image" in r', 'if "image" in r', ("tests/test_purify_resume.py",)),
    # --- the counting rules: the numbers an evaluation tool reports (pinned on asymmetric hand-written records) ---
    Mutant("robust-ignores-the-clean-evaluation", "evaluation/counting.py",
           '"robust": clean and adversarial,', '"robust": adversarial,', COUNTING_TESTS),
    Mutant("robust-from-the-clean-field", "evaluation/counting.py",
           '"robust": clean and adversarial,', '"robust": clean,', COUNTING_TESTS),
    Mutant("ties-go-to-the-label", "evaluation/counting.py",
           "return sum(1 for v in votes if v == top) == 1", "return True", COUNTING_TESTS),
    Mutant("paired-wins-and-losses-swapped", "evaluation/counting.py",
           "wins = sum(x and not y for x, y in zip(ok_a, ok_b))", "wins = sum(y and not x for x, y in zip(ok_a, ok_b))",
           COUNTING_TESTS),
    Mutant("survivors-attack-every-image", "evaluation/batch.py",
           'rows = list(range(len(x))) if j == 0 or cfg["run"]["ensemble"] == "all" else',
           'rows = list(range(len(x))) if True else', COUNTING_TESTS),
    Mutant("survivors-clean-first-uses-each-runs-clean", "evaluation/runs.py",
           'if clean == "first":', 'if False:', COUNTING_TESTS),
    Mutant("saved-example-from-another-shard", "evaluation/shards.py",
           "for i in mine & set(images):", "for i in wanted & set(images):", COUNTING_TESTS),
    Mutant("rescore-keeps-the-first-batch-n", "evaluation/rescore.py",
           'cfg["data"]["n"] = covering_n(cfg, {int(r["index"]) for r in source.records})', "pass", COUNTING_TESTS),
    Mutant("rescore-reads-every-shard-each-batch", "evaluation/batch.py",
           "self._batch_examples = (key, load_adversarial(path, records, set(indices)))",
           "self._batch_examples = (key, load_adversarial(path, records))",
           COUNTING_TESTS),
    Mutant("ranks-never-compare-their-images", "distributed.py",
           "if self._exchange(problem=mine != largest)[1]:", "if self._exchange(problem=False)[1]:",
           ("tests/core/test_ranks.py",)),
]

# The child: import hetpure, check it is the scratch copy, then run pytest in the same interpreter.
BOOT = """
import pathlib, sys
scratch = pathlib.Path(sys.argv[1]).resolve()
import hetpure
where = pathlib.Path(hetpure.__file__).resolve()
if scratch not in where.parents:
    print(f"mutation_check: imported {where}, not the scratch copy under {scratch}", file=sys.stderr)
    sys.exit(97)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""
WRONG_IMPORT = 97


@dataclass
class Outcome:
    name: str
    status: str  # killed, survived, error
    detail: str
    seconds: float


def find_shared() -> Path | None:
    env = os.environ.get("HETPURE_SHARED")
    root = Path(env) if env else REPO.parent / "shared"
    if not root.is_absolute():
        root = (REPO / root).resolve()
    return root if root.is_dir() else None


def apply(mutant: Mutant, src: Path) -> None:
    """Replace the mutant's old string (which must occur exactly once) in the scratch copy ``src``."""
    path = src / "hetpure" / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: the old string occurs {count} times in src/hetpure/{mutant.file} "
                         f"(expected exactly once); update the mutant:\n{mutant.old}")
    path.write_text(text.replace(mutant.old, mutant.new))
    py_compile.compile(str(path), doraise=True)


def check_list(mutants: list[Mutant], package: Path = PACKAGE) -> None:
    """Unique names, each old string exactly once in ``package``, every test file present."""
    names = [m.name for m in mutants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SystemExit(f"duplicate mutant names: {dupes}")
    for m in mutants:
        text = (package / m.file).read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"mutant {m.name}: the old string occurs {text.count(m.old)} times in "
                             f"src/hetpure/{m.file} (expected exactly once); update the mutant")
        for t in m.tests:
            if not (package.parents[1] / t).is_file():
                raise SystemExit(f"mutant {m.name}: test file {t} does not exist")


def snapshot(source: Path, dest: Path) -> Path:
    """src/, tests/ and pyproject.toml of ``source`` copied to ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")
    shutil.copytree(source / "src", dest / "src", ignore=ignore)
    shutil.copytree(source / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(source / "pyproject.toml", dest / "pyproject.toml")
    return dest


def child_env(repo: Path, shared: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    src = str(repo / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HETPURE_CACHE"] = str(repo / "digest-cache.json")  # content-digest cache: private to this scratch copy
    env.pop("HETPURE_SHARED", None)
    if shared is not None:
        env["HETPURE_SHARED"] = str(shared)
    return env


def run_tests(pristine: Path, mutant: Mutant | None, tests: tuple[str, ...], shared: Path | None,
              timeout: float) -> Outcome:
    """Run ``tests`` against a fresh copy of ``pristine`` with ``mutant`` applied (None: the baseline).

    The copy is ``<tmp>/repo``, so the tests' ``../shared`` is ``<tmp>/shared``, which never exists.
    """
    name = mutant.name if mutant else "baseline"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hetpure-mutant-") as tmp:
        repo = snapshot(pristine, Path(tmp) / "repo")
        if shared is None:
            assert not (repo.parent / "shared").exists()
        if mutant is not None:
            apply(mutant, repo / "src")
        cmd = [sys.executable, "-c", BOOT, str(repo / "src"), "-x", "-q", "-p", "no:cacheprovider", *tests]
        try:
            proc = subprocess.run(cmd, cwd=repo, env=child_env(repo, shared), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(name, "killed", f"timeout after {timeout:.0f} s", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == WRONG_IMPORT:
        return Outcome(name, "error", proc.stderr.strip(), seconds)
    if proc.returncode == 0:
        return Outcome(name, "survived", tail, seconds)
    if proc.returncode in (1, 2):  # tests failed, or collection failed (the mutant broke an import)
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        return Outcome(name, "killed", (failed[0] if failed else tail)[:110], seconds)
    return Outcome(name, "error", f"pytest exit {proc.returncode}: {tail or proc.stderr.strip()[-200:]}", seconds)


def run_pass(pristine: Path, mutants: list[Mutant], shared: Path | None, jobs: int,
             timeout: float) -> tuple[list[Outcome], bool]:
    label = f"with ../shared ({shared})" if shared else "without ../shared"
    print(f"\n== {label} ==", flush=True)
    files = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        base = list(pool.map(lambda f: run_tests(pristine, None, (f,), shared, timeout), files))
    broken = {f for f, o in zip(files, base) if o.status != "survived"}
    for f, o in zip(files, base):
        state = "ok" if f not in broken else f"FAILS UNMUTATED ({o.status}: {o.detail})"
        print(f"baseline {f}: {state} [{o.seconds:.1f} s]", flush=True)

    def one(m: Mutant) -> Outcome:
        bad = [t for t in m.tests if t in broken]
        if bad:
            return Outcome(m.name, "error", f"baseline fails: {', '.join(bad)}", 0.0)
        out = run_tests(pristine, m, m.tests, shared, timeout)
        print(f"  {m.name}: {out.status} [{out.seconds:.1f} s]", flush=True)
        return out

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(one, mutants))
    width = max(len(m.name) for m in mutants)
    print(f"\n{'mutant':<{width}}  {'file':<16}  {'result':<8}  {'s':>5}  detail")
    for m, o in zip(mutants, outcomes):
        print(f"{m.name:<{width}}  {m.file:<16}  {o.status:<8}  {o.seconds:5.1f}  {o.detail}")
    killed = sum(o.status == "killed" for o in outcomes)
    errors = sum(o.status == "error" for o in outcomes)
    print(f"\nkill rate {label}: {killed}/{len(outcomes)} = {killed / len(outcomes):.0%}"
          + (f" ({errors} errors)" if errors else ""))
    return outcomes, errors == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    parser.add_argument("--shared", choices=("with", "without", "both"), default="with",
                        help="run with ../shared, with it absent, or both (default: with, if present)")
    parser.add_argument("--min-rate", type=float, default=0.9, help="minimum kill rate (default 0.9)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per test run (default 300)")
    args = parser.parse_args()

    check_list(MUTANTS)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<38} src/hetpure/{m.file:<16} {' '.join(m.tests)}")
        return
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            raise SystemExit(f"unknown mutant(s) {unknown}; see --list")
        chosen = [m for m in MUTANTS if m.name in args.only]

    shared = find_shared()
    modes = {"with": [shared], "without": [None], "both": [shared, None]}[args.shared]
    if args.shared != "without" and shared is None:
        print("note: ../shared is not present (set HETPURE_SHARED); every pass runs without it")
        modes = [None]
    start = time.perf_counter()
    ok = True
    with tempfile.TemporaryDirectory(prefix="hetpure-pristine-") as tmp:
        # one snapshot of the checkout for the baseline and every mutant, so edits made meanwhile don't mix in
        pristine = snapshot(REPO, Path(tmp) / "repo")
        check_list(chosen, pristine / "src" / "hetpure")
        for mode in modes:
            outcomes, clean = run_pass(pristine, chosen, mode, max(1, args.jobs), args.timeout)
            rate = sum(o.status == "killed" for o in outcomes) / len(outcomes)
            ok = ok and clean and rate >= args.min_rate
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if not ok:
        sys.exit(f"mutation check failed: kill rate below {args.min_rate:.0%} or errors (see above)")


if __name__ == "__main__":
    main()
