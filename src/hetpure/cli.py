"""The ``hetpure`` command line: evaluate, demo, train-diffusion, train-classifier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import HetpureError


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    file = Path(path)
    if not file.exists():
        raise HetpureError(f"config file {path} does not exist")
    if file.is_dir():
        raise HetpureError(f"{path} is a folder; give the YAML config file (e.g. configs/cifar10-hetero.yaml)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise HetpureError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HetpureError(f"{path} must hold a mapping of sections (data, classifier, diffusion, ...)")
    return data


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, parse_set

    overrides = parse_set(args.set or [])
    if args.out:
        overrides.setdefault("run", {})["out"] = args.out
    summary = evaluate(_load_yaml(args.config), overrides, sanity=True if args.sanity else None)
    if not summary:  # a non-zero rank of a distributed run
        return 0
    out = overrides.get("run", {}).get("out") or summary["config"]["run"]["out"]
    pipes = summary.get("pipelines", {})
    if pipes.get("transfer"):
        calls = summary["eps_calls"]
        print(f"TRANSFER EVALUATION — attacked: {pipes['attacked']} ({calls['attack_per_forward_pass']} ε-calls); "
              f"evaluated: {pipes['evaluated']} ({calls['defence_per_purification']} ε-calls)")
    print(f"clean accuracy {summary['clean_accuracy']:.4f}, robust accuracy {summary['robust_accuracy']:.4f} "
          f"(worst case of {summary['worst_case_k']}: {summary['robust_accuracy_worst_case']:.4f}), n={summary['n']}")
    print(f"outputs: {out}/summary.md, {out}/summary.json, {out}/records.jsonl")
    sanity = summary.get("sanity")
    if sanity is not None and not sanity.get("all_passed", False):
        print("!!! SANITY CHECKS FAILED: the evaluation may be broken; see summary.md !!!", file=sys.stderr)
        for name, check in sanity["checks"].items():
            if not check["passed"]:
                print(f"!!! {name}: {check['detail']}", file=sys.stderr)
        if args.strict:
            return 3
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, n=args.n, quick=args.quick)
    return 0


def _cmd_train_diffusion(args: argparse.Namespace) -> int:
    from .train import train_diffusion_from_args

    train_diffusion_from_args(args)
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from .train import train_classifier_from_args

    train_classifier_from_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hetpure", description="Diffusion purification with heterogeneous noise, and honest evaluation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="clean and robust accuracy of a (defended) classifier")
    ev.add_argument("config", help="YAML config with sections data, classifier, diffusion, defense, attack, run")
    ev.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value")
    ev.add_argument("--out", help="output folder (same as --set run.out=...)")
    ev.add_argument("--sanity", action="store_true", help="run the Carlini et al. sanity checks on a probe set")
    ev.add_argument("--strict", action="store_true", help="exit non-zero when a sanity check fails")
    ev.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser("demo", help="offline MNIST demo with the embedded models (CPU, about 5 minutes)")
    demo.add_argument("--out", default="hetpure-demo", help="output folder")
    demo.add_argument("--n", type=int, default=32, help="held-out digits to attack")
    demo.add_argument("--quick", action="store_true", help="a smaller attack budget (for tests)")
    demo.set_defaults(func=_cmd_demo)

    from .train import add_train_parsers

    add_train_parsers(sub, _cmd_train_diffusion, _cmd_train_classifier)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HetpureError as exc:
        print(f"hetpure {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
