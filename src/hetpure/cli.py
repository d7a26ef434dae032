"""The ``hetpure`` command line: evaluate, purify, predict, tune, sweep, list, demo, train-diffusion,
train-classifier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import HetpureError


def _load_yaml(path: str) -> dict[str, Any]:
    """The config file as a mapping; a key written twice, or YAML 1.1's yes/no/on/off, are not read silently
    (see :mod:`hetpure.yamlio`)."""
    from .errors import describe_missing
    from .yamlio import load_yaml

    file = Path(path)
    if not file.exists():
        raise HetpureError(f"config file {path} {describe_missing(file)}")
    if file.is_dir():
        raise HetpureError(f"{path} is a folder; give the YAML config file (e.g. configs/cifar10-hetero.yaml)")
    data = load_yaml(file.read_text(), path)
    if not isinstance(data, dict):
        raise HetpureError(f"{path} must hold a mapping of sections (data, classifier, diffusion, ...)")
    return data


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.config import parse_set
    from .evaluation.runner import evaluate

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


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from .evaluation.config import parse_set

    return parse_set(args.set or [])


def _cmd_purify(args: argparse.Namespace) -> int:
    from .predict import purify_images

    s = purify_images(_load_yaml(args.config), args.input, args.outdir, _overrides(args))
    for file, note in s["notes"].items():
        print(f"note: {file}: {note}")
    print(f"purified {s['written']} image(s), {s['skipped']} already done; outputs in {s['out']} (log {s['log']})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_predictions, predict_images

    rows = predict_images(_load_yaml(args.config), args.input, args.out, _overrides(args))
    print(format_predictions(rows))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import format_results, parse_grid, point_label, tune

    grid = parse_grid(args.grid or [])
    r = tune(_load_yaml(args.config), grid, n=args.n, out=args.out, screen_n=args.screen_n, keep=args.keep,
             split=args.split, allow_test_split=args.allow_test_split, overrides=_overrides(args))
    print(format_results([p for rung in r["rungs"] for p in rung], stage=True))
    best = r["best"]
    print(f"best on the {r['split']} split: {point_label(best['settings'])} (robust {best['robust_accuracy']:.3f}, "
          f"clean {best['clean_accuracy']:.3f}, n={best['n']})")
    print(f"outputs: {args.out}/tune.json, {args.out}/best.yaml (hetpure evaluate {args.out}/best.yaml), "
          f"{args.out}/tune.png")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .tuning import format_results, parse_grid, sweep

    grid = parse_grid(args.grid or [])
    data = sweep(_load_yaml(args.config), grid, n=args.n, out=args.out, overrides=_overrides(args))
    print(format_results(data["points"]))
    print(f"outputs: {args.out}/sweep.json, {args.out}/sweep.png")
    return 0


def _cmd_rescore(args: argparse.Namespace) -> int:
    from .evaluation.rescore import rescore

    s = rescore(args.run_dir, args.out, _overrides(args))
    print(f"rescored {s['n']} images of {args.run_dir} ({s['votes_per_evaluation']} votes, K = {s['worst_case_k']}): "
          f"clean {s['clean_accuracy']:.4f}, robust {s['robust_accuracy']:.4f}; outputs in {args.out}")
    return 0


def _cmd_combine(args: argparse.Namespace) -> int:
    from .evaluation.combine import combine

    s = combine(args.run_dirs, args.out, ties=args.ties)
    print(f"combined {len(args.run_dirs)} runs on {s['n']} images (clean evaluation of {s['clean_evaluation_from']}): "
          f"clean {s['clean_accuracy']:.4f}, robust {s['robust_accuracy']:.4f} (worst case per image); "
          f"outputs in {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from .evaluation.combine import compare, compare_markdown

    c = compare(args.run_a, args.run_b, ties=args.ties)
    print(json.dumps(c, indent=2) if args.json else compare_markdown(c))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .evaluation.export import export

    print(f"wrote {export(args.run_dir, args.out)}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .catalog import catalog, format_catalog

    print(format_catalog(catalog(args.what)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, n=args.n, quick=args.quick)
    return 0


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of a training config dataclass (booleans as --x / --no-x)."""
    for f in cls.__dataclass_fields__.values():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif default is None:
            parser.add_argument(flag, default=None, type=int if f.name == "limit" else str)
        else:
            parser.add_argument(flag, default=default, type=type(default))


def _from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__ if hasattr(args, k)})


def _cmd_train_diffusion(args: argparse.Namespace) -> int:
    from .train import DiffusionTrainConfig, train_diffusion

    train_diffusion(_from_args(DiffusionTrainConfig, args))
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from .train import ClassifierTrainConfig, train_classifier

    train_classifier(_from_args(ClassifierTrainConfig, args))
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

    set_help = "override one config value (repeatable)"
    pur = sub.add_parser("purify", help="purify an image or a folder of images (writes images, masks, purify.jsonl)")
    pur.add_argument("config", help="YAML config (sections classifier, diffusion, defense, run)")
    pur.add_argument("input", help="an image file or a folder (recursive; PNG, JPEG, WebP)")
    pur.add_argument("outdir", help="output folder; mirrors INPUT's relative paths")
    pur.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=set_help)
    pur.set_defaults(func=_cmd_purify)

    pre = sub.add_parser("predict", help="defended prediction (majority vote of defense.runs) of each image")
    pre.add_argument("config", help="YAML config (sections classifier, diffusion, defense, run)")
    pre.add_argument("input", help="an image file or a folder (recursive; PNG, JPEG, WebP)")
    pre.add_argument("--out", metavar="FILE.jsonl|FILE.csv", help="also write the rows (format by suffix)")
    pre.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=set_help)
    pre.set_defaults(func=_cmd_predict)

    grid_help = "a config key and its values, e.g. defense.tau=0.7,0.9 (repeatable: the grid is their product)"
    tun = sub.add_parser("tune", help="successive halving over config keys on a tuning split; writes best.yaml")
    tun.add_argument("config", help="YAML config, as for evaluate")
    tun.add_argument("--grid", action="append", required=True, metavar="SECTION.KEY=V1,V2,...", help=grid_help)
    tun.add_argument("--n", type=int, required=True, help="images the winning point is evaluated on")
    tun.add_argument("--screen-n", type=int, default=32, help="images of the screening stage (0: none; default 32)")
    tun.add_argument("--keep", type=int, default=2, help="points kept after screening; later rungs keep half")
    tun.add_argument("--split", default="train", help="the tuning split (default train)")
    tun.add_argument("--allow-test-split", action="store_true", help="allow tuning on the test split")
    tun.add_argument("--out", required=True, metavar="DIR", help="folder of the point runs and outputs")
    tun.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=set_help)
    tun.set_defaults(func=_cmd_tune)

    swp = sub.add_parser("sweep", help="every grid point on n images; sweep.json and sweep.png")
    swp.add_argument("config", help="YAML config, as for evaluate")
    swp.add_argument("--grid", action="append", required=True, metavar="SECTION.KEY=V1,V2,...", help=grid_help)
    swp.add_argument("--n", type=int, required=True, help="images per point")
    swp.add_argument("--out", required=True, metavar="DIR", help="folder of the point runs and outputs")
    swp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help=set_help)
    swp.set_defaults(func=_cmd_sweep)

    res = sub.add_parser("rescore", help="score a run's saved adversarial examples again (fresh noise, any R, K, "
                                         "or another defence)")
    res.add_argument("run_dir", help="a run folder made by hetpure evaluate with run.save_adversarial on")
    res.add_argument("--out", required=True, metavar="DIR", help="output folder of the rescoring (resumable)")
    res.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="defense.* or run.* override, e.g. defense.runs=32 (repeatable)")
    res.set_defaults(func=_cmd_rescore)

    ties_help = "a majority vote whose top count the true label shares: wrong (default) or lowest (the label argmax)"
    com = sub.add_parser("combine", help="per-image worst case over run folders of the same data and defence")
    com.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders; the first one's clean evaluation")
    com.add_argument("--out", required=True, metavar="DIR", help="output folder of the combined row")
    com.add_argument("--ties", choices=["wrong", "lowest"], default="wrong", help=ties_help)
    com.set_defaults(func=_cmd_combine)

    cmp_ = sub.add_parser("compare", help="paired comparison of two rows: wins/losses, McNemar p, vote share")
    cmp_.add_argument("run_a", help="the row")
    cmp_.add_argument("run_b", help="the reference row (same data)")
    cmp_.add_argument("--ties", choices=["wrong", "lowest"], default="wrong", help=ties_help)
    cmp_.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    cmp_.set_defaults(func=_cmd_compare)

    exp = sub.add_parser("export", help="a leaderboard record (RobustBench model_info fields and more)")
    exp.add_argument("run_dir", help="a run, combined or rescored folder")
    exp.add_argument("--out", default=None, metavar="FILE.json", help="default RUN_DIR/leaderboard.json")
    exp.set_defaults(func=_cmd_export)

    lst = sub.add_parser("list", help="classifiers, datasets, eps-models, methods, attacks and presets by name")
    lst.add_argument("what", nargs="?", default=None,
                     help="classifiers, datasets, eps-models, methods, attacks or presets")
    lst.set_defaults(func=_cmd_list)

    demo = sub.add_parser("demo", help="offline MNIST demo with the embedded models (CPU, about 5 minutes)")
    demo.add_argument("--out", default="hetpure-demo", help="output folder")
    demo.add_argument("--n", type=int, default=32, help="held-out digits to attack")
    demo.add_argument("--quick", action="store_true", help="a smaller attack budget (for tests)")
    demo.set_defaults(func=_cmd_demo)

    from .train import ClassifierTrainConfig, DiffusionTrainConfig

    td = sub.add_parser("train-diffusion", help="train or continue a diffusers DDPM (ε-prediction)")
    _add_dataclass_args(td, DiffusionTrainConfig)
    td.set_defaults(func=_cmd_train_diffusion)
    tc = sub.add_parser("train-classifier", help="train a CIFAR ResNet or the MNIST CNN")
    _add_dataclass_args(tc, ClassifierTrainConfig, skip=("options",))
    tc.set_defaults(func=_cmd_train_classifier)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else argv
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if words and not words[0].startswith("-") and words[0] not in commands:
        from .evaluation.config import suggest

        print(f"hetpure: error: unknown command {words[0]!r}{suggest(words[0], list(commands))}; commands: "
              f"{', '.join(commands)}", file=sys.stderr)
        return 2
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
