"""Grid search over config keys: successive halving (``hetpure tune``) and full sweeps (``hetpure sweep``).

A grid is ``{"defense.t_l": [0.15, 0.2], "defense.tau": [0.9]}`` (``--grid defense.t_l=0.15,0.2``): any keys of
the evaluation config. Every grid point is one resumable ``hetpure.evaluate`` run folder under the output
folder, so an interrupted tune or sweep resumes where it stopped and a larger n extends a point's run
(the subset of n images is a prefix of one seeded permutation). Every point's config is validated with
:func:`~hetpure.evaluation.config.resolve_config` before the first run starts.

:func:`tune` screens every point on ``screen_n`` images of the tuning split (default ``train``; the test
split is refused unless allowed), keeps the best ``keep``, then doubles the images at each rung and keeps
the better half until one point reaches ``n`` (Jamieson & Talwalkar, 2016). Points are ranked by robust
accuracy; clean accuracy breaks ties. :func:`sweep` runs every point on ``n`` images and merges its
points into ``sweep.json`` (re-read under a lock before each write, so several processes can share a grid).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, HetpureError
from .evaluation.config import DEFAULTS, resolve_config, suggest
from .evaluation.records import write_json_atomic
from .tuning_plots import require_pyplot

__all__ = [
    "best_config", "format_results", "grid_points", "halve", "parse_grid", "point_config", "point_folder", "rank",
    "set_values", "sweep", "tune",
]

Runner = Callable[[dict[str, Any], Path], dict[str, Any]]
#: Keys a grid may not vary, and why.
RESERVED = {"data.n": "the number of images is --n (and --screen-n)", "run.out": "each point has its own run folder"}
TEST_SPLITS = ("test",)


# --------------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------------


def _check_key(key: str, where: str) -> None:
    if "." not in key:
        owners = [f"{section}.{key}" for section, keys in DEFAULTS.items() if key in keys]
        hint = f" (did you mean {' or '.join(owners)}?)" if owners else ""
        raise ConfigError(f"{where}: {key!r} is not a config key{hint}; write SECTION.KEY, e.g. defense.tau")
    section, name = key.split(".", 1)
    if section not in DEFAULTS:
        raise ConfigError(f"{where}: {key!r} is not a config key: unknown section {section!r}"
                          f"{suggest(section, list(DEFAULTS))}; sections: {', '.join(DEFAULTS)}")
    if name not in DEFAULTS[section]:
        close = suggest(name, list(DEFAULTS[section])).replace("mean ", f"mean {section}.").replace(
            " or ", f" or {section}.")
        raise ConfigError(f"{where}: {key!r} is not a config key{close}; keys of {section}: "
                          f"{', '.join(DEFAULTS[section])}")


def parse_grid(items: Sequence[str], reserved: dict[str, str] | None = None) -> dict[str, list[Any]]:
    """Parse ``SECTION.KEY=V1,V2,…`` items into ``{key: [values]}`` (values as YAML: numbers, null, text,
    ``{a: 1, b: 2}`` mappings). Unknown keys suggest the closest config keys; types are checked per point by
    :func:`validate_points`."""
    from .yamlio import load_yaml

    reserved = RESERVED if reserved is None else reserved
    grid: dict[str, list[Any]] = {}
    for item in items:
        where = f"--grid {item}"
        if "=" not in item:
            raise ConfigError(f"{where}: expected SECTION.KEY=V1,V2,… (e.g. --grid defense.tau=0.7,0.9)")
        key, raw = (part.strip() for part in item.split("=", 1))
        _check_key(key, where)
        if key in reserved:
            raise ConfigError(f"{where}: {key} cannot be a grid key ({reserved[key]})")
        if key in grid:
            raise ConfigError(f"{where}: {key} is given twice; list all its values in one --grid")
        try:
            values = load_yaml(f"[{raw}]", where)  # only true/false are booleans; a doubled key is refused
        except ConfigError as exc:
            raise ConfigError(f"{where}: the values are not a comma-separated YAML list ({exc})") from exc
        if not values:
            raise ConfigError(f"{where}: no values; e.g. --grid {key}=V1,V2")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"{where}: a value is repeated")
        grid[key] = values
    if not grid:
        raise ConfigError("give at least one --grid SECTION.KEY=V1,V2,…")
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest (``itertools.product`` order)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def set_values(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with dotted ``values`` set; setting ``defense.tau`` without ``defense.top_p``
    clears the config's ``top_p`` (which would otherwise win over τ), as a later ``--set`` does (a preset's
    ``top_p`` is cleared by resolve_config itself, since the config's section sets τ)."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        section, name = key.split(".", 1)
        if out.get(section) is None:
            out[section] = {}
        out[section][name] = copy.deepcopy(value)
    clears_top_p = "defense.tau" in values and "defense.top_p" not in values
    if clears_top_p and (out.get("defense") or {}).get("top_p") is not None:
        out["defense"]["top_p"] = None
    return out


def _flatten(overrides: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in (overrides or {}).items() for k, v in (values or {}).items()}


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value) if isinstance(value, (int, float, str)) else json.dumps(value, sort_keys=True)


def point_label(point: dict[str, Any]) -> str:
    """``defense.t_l=0.15 defense.tau=0.9``: a point as the user wrote it."""
    return " ".join(f"{k}={_text(v)}" for k, v in point.items())


def point_folder(point: dict[str, Any]) -> str:
    """A readable folder name for a point: ``t_l0.15_tau0.9`` (the section is named only where two grid keys
    share a name; long or odd values are shortened with a hash)."""
    names = [k.split(".", 1)[1] for k in point]
    parts = []
    for key, value in point.items():
        name = key.split(".", 1)[1]
        label = key.replace(".", "-") if names.count(name) > 1 else name
        parts.append(f"{label}{_text(value)}")
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(parts)).strip("-") or "point"
    if len(text) > 80 or text.startswith("."):
        digest = hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
        text = f"{text[:60].lstrip('.')}-{digest}"
    return text


def _folders(points: list[dict[str, Any]], folder_name: Callable[[dict[str, Any]], str] | None) -> list[str]:
    names = [(folder_name or point_folder)(p) for p in points]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # distinct points that sanitise to one name get a hash each
        if name in seen:
            for j in (seen[name], i):
                names[j] = f"{name}-{hashlib.sha256(json.dumps(points[j], sort_keys=True).encode()).hexdigest()[:8]}"
        seen[name] = i
    return names


def point_config(config: dict[str, Any], point: dict[str, Any], out: Path, n: int,
                 overrides: dict[str, dict[str, Any]] | None = None, split: str | None = None) -> dict[str, Any]:
    """The evaluate config of one point: ``config`` with ``overrides``, the point's values, ``data.n`` = n,
    ``data.split`` (when given) and ``run.out`` = out."""
    extra: dict[str, Any] = {"data.n": n, "run.out": str(out)}
    if split is not None:
        extra["data.split"] = split
    return set_values(set_values(config, _flatten(overrides)), {**point, **extra})


def validate_points(config: dict[str, Any], points: list[dict[str, Any]], out: Path,
                    overrides: dict[str, dict[str, Any]] | None = None, split: str | None = None
                    ) -> list[dict[str, Any]]:
    """Resolve every point's config (schema types, ranges, rules between keys) before any run starts;
    the error names the point. Returns the resolved configs."""
    from .catalog import check_names, check_preset

    check_preset(config)
    resolved = []
    for point in points:
        try:
            cfg = resolve_config(point_config(config, point, out, 1, overrides, split))
            check_names(cfg)
        except HetpureError as exc:
            message = str(exc)
            for key in point:  # the fix is a grid value, not a --set
                message = message.replace(f"--set {key}=", f"--grid {key}=")
            raise ConfigError(f"grid point {point_label(point)}: {message}") from exc
        resolved.append(cfg)
    return resolved


def _check_data(cfg: dict[str, Any], n: int) -> None:
    """The data split exists and holds n images (cheap: files are listed, not read)."""
    from .evaluation.components import build_dataset

    data = build_dataset({**cfg, "data": {**cfg["data"], "n": None}})
    if len(data) < n:
        raise ConfigError(f"the {cfg['data']['name']} {cfg['data']['split']!r} split has {len(data)} images, fewer "
                          f"than --n {n}; lower --n")


def _evaluate_runner(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    from .evaluation.runner import evaluate

    return evaluate(cfg)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def point_result(point: dict[str, Any], folder: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One evaluated point: settings, n, clean and robust accuracy with 95% intervals, ε-calls, seconds."""
    from .evaluation.stats import wilson_interval

    n = int(summary["n"])

    def ci(key: str) -> list[float]:
        given = summary.get(f"{key}_ci95")
        return list(given) if given is not None else list(wilson_interval(round(summary[key] * n), n))

    return {"settings": dict(point), "folder": folder, "n": n,
            "clean_accuracy": summary["clean_accuracy"], "clean_accuracy_ci95": ci("clean_accuracy"),
            "robust_accuracy": summary["robust_accuracy"], "robust_accuracy_ci95": ci("robust_accuracy"),
            "eps_calls": summary.get("eps_calls"), "seconds_per_image": summary.get("seconds_per_image")}


def rank(result: dict[str, Any]) -> tuple[float, float]:
    """Robust accuracy first; clean accuracy breaks ties."""
    return (result["robust_accuracy"], result["clean_accuracy"])


def halve(results: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The ``keep`` best results by :func:`rank`, in their original (grid) order; ties keep grid order."""
    order = sorted(range(len(results)), key=lambda i: rank(results[i]), reverse=True)[:keep]
    return [results[i] for i in sorted(order)]


def best_config(config: dict[str, Any], settings: dict[str, Any],
                overrides: dict[str, dict[str, Any]] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """The input config with ``overrides`` and the winning ``settings``; the data split and ``data.n`` stay as
    the config (and overrides) had them, so ``hetpure evaluate`` runs it as it is. ``out`` sets ``run.out``
    (tune gives ``DIR/evaluate``: the config's own run folder may hold a run of the untuned settings)."""
    best = set_values(set_values(config, _flatten(overrides)), settings)
    return best if out is None else set_values(best, {"run.out": str(out)})


# --------------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------------


def tune(config: dict[str, Any], grid: dict[str, list[Any]], *, n: int, out: str | Path,
         screen_n: int | None = 32, keep: int = 2, split: str = "train", allow_test_split: bool = False,
         overrides: dict[str, dict[str, Any]] | None = None, run: Runner | None = None,
         folder_name: Callable[[dict[str, Any]], str] | None = None, write: bool = True,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Successive halving over ``grid`` on the tuning ``split``; returns the result (also ``out/tune.json``).

    Every point runs on ``screen_n`` images (``0`` or None: straight at ``n``), the ``keep`` best go on; then
    each rung doubles the images (capped at ``n``) and keeps the better half (rounded up) until the rung at
    ``n``. The best point of the last rung wins. Each point is an evaluate run in ``out/<folder>`` (resumable).

    Args:
        config: an evaluate config (dict, as read from YAML); ``overrides`` are ``--set`` values.
        grid: ``{key: [values]}`` (:func:`parse_grid`).
        run: ``run(config, folder) -> summary``; default :func:`hetpure.evaluate.evaluate`.
        folder_name: ``point -> folder name`` (default :func:`point_folder`).
        write: write ``out/tune.json`` after every run, and ``best.yaml`` and ``tune.png`` at the end.

    Returns:
        ``{"split", "screen_n", "n", "keep", "grid", "rungs": [[result, …], …], "best", "selected", "finished"}``;
        rung 0 is the screening stage; each result is :func:`point_result`.
    """
    if n < 1 or (screen_n or 0) < 0 or keep < 1:
        raise ConfigError(f"--n and --keep must be at least 1 and --screen-n at least 0 (0 = no screening stage); "
                          f"got --n {n} --screen-n {screen_n} --keep {keep}")
    if split.lower() in TEST_SPLITS and not allow_test_split:
        raise ConfigError(f"tune refuses the {split!r} split: settings chosen on the images you report are "
                          "optimistic. Tune on train (--split train) or a held-out split; --allow-test-split "
                          "overrides this")
    out = Path(out).expanduser()
    if write:
        require_pyplot()  # tune.png is an output: refuse before any run, not after the last
    points = grid_points(grid)
    folders = _folders(points, folder_name)
    resolved = validate_points(config, points, out, overrides, split)
    screen = min(screen_n or n, n)
    if run is None:
        _check_data(resolved[0], n)
    runner = run or _evaluate_runner
    result: dict[str, Any] = {"split": split, "screen_n": screen, "n": n, "keep": keep, "grid": grid, "rungs": [],
                              "best": None, "selected": None, "finished": False}
    if write:
        out.mkdir(parents=True, exist_ok=True)

    def run_point(i: int, size: int, rung: int) -> dict[str, Any]:
        log(f"== tune rung {rung} (n={size}): {point_label(points[i])} → {folders[i]} ==")
        cfg = point_config(config, points[i], out / folders[i], size, overrides, split)
        r = point_result(points[i], folders[i], runner(cfg, out / folders[i]))
        r["rung"] = rung
        result["rungs"][rung].append(r)
        if write:
            write_json_atomic(out / "tune.json", result)  # an interrupted tune keeps every finished point
        return r

    index = {json.dumps(p, sort_keys=True): i for i, p in enumerate(points)}
    result["rungs"].append([])
    field = halve([run_point(i, screen, 0) for i in range(len(points))], max(1, keep))
    size = screen
    while size < n:
        size = min(2 * size, n)
        result["rungs"].append([])
        rung = [run_point(index[json.dumps(r["settings"], sort_keys=True)], size, len(result["rungs"]) - 1)
                for r in field]
        field = halve(rung, (len(rung) + 1) // 2)
    best = max(result["rungs"][-1], key=rank)
    result.update(best=best, selected={"settings": best["settings"], "n": best["n"]}, finished=True)
    if write:
        write_json_atomic(out / "tune.json", result)
        _write_best(out / "best.yaml", best_config(config, best["settings"], overrides, out / "evaluate"), best)
        from .tuning_plots import plot_tune

        plot_tune(result, out / "tune.png")
    return result


def _write_best(path: Path, config: dict[str, Any], best: dict[str, Any]) -> None:
    import yaml

    header = (f"# written by `hetpure tune`: the input config with the winning values "
              f"({point_label(best['settings'])}: robust {best['robust_accuracy']:.3f}, clean "
              f"{best['clean_accuracy']:.3f} on n={best['n']} tuning images).\n"
              "# Relative paths are as in the input config (run.out: the tune folder's evaluate/). Run it with: "
              "hetpure evaluate <this file>\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------------


def _sort_key(settings: dict[str, Any], keys: list[str]) -> tuple[Any, ...]:
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, _text(v))
                 for v in (settings.get(k) for k in keys))


def _base_key(cfg: dict[str, Any], keys: list[str]) -> str:
    """What the points of one sweep share: the resolved config without the grid keys and without what never
    changes a number (paths, output, display, device index: :data:`hetpure.evaluation.identity.NOT_IN_IDENTITY`), so
    processes on machines with other paths merge into one sweep."""
    from .evaluation.identity import NOT_IN_IDENTITY

    flat = {f"{s}.{k}": v for s, values in cfg.items() for k, v in values.items()}
    flat["run.device"] = str(cfg["run"]["device"]).split(":")[0]  # the device type changes the random streams
    for key in [*keys, *(f"{s}.{k}" for s, ks in NOT_IN_IDENTITY.items() for k in ks if f"{s}.{k}" != "run.device")]:
        flat.pop(key, None)
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _merge_sweep(path: Path, point: dict[str, Any], n: int, base: str, grid: dict[str, list[Any]],
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Merge one point into sweep.json under a lock, re-reading it first (other processes add points too)."""
    from filelock import FileLock

    with FileLock(str(path.with_name(".sweep.lock"))):
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            data = {}
        if data and (data.get("n") != n or data.get("base") != base):
            log(f"{path} held a sweep at other settings (n or the settings outside the grid); starting it anew")
            data = {}
        merged_grid = {k: list(v) for k, v in (data.get("grid") or {}).items()}
        for key, values in grid.items():
            have = merged_grid.setdefault(key, [])
            have += [v for v in values if v not in have]
        points = {json.dumps(p["settings"], sort_keys=True): p for p in data.get("points", [])}
        points[json.dumps(point["settings"], sort_keys=True)] = point
        keys = list(merged_grid)
        data = {"n": n, "base": base, "split": point.get("split"), "grid": merged_grid,
                "points": sorted(points.values(), key=lambda p: _sort_key(p["settings"], keys))}
        write_json_atomic(path, data)
    return data


def sweep(config: dict[str, Any], grid: dict[str, list[Any]], *, n: int, out: str | Path,
          overrides: dict[str, dict[str, Any]] | None = None, run: Runner | None = None,
          folder_name: Callable[[dict[str, Any]], str] | None = None, write: bool = True,
          on_point: Callable[[dict[str, Any]], None] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every grid point on ``n`` images of the config's split; returns ``{"n", "split", "grid", "points"}``.

    Each point is a resumable evaluate run in ``out/<folder>``. With ``write``, each finished point is merged
    into ``out/sweep.json`` (other processes sweeping the same base config and n into ``out`` merge theirs)
    and ``out/sweep.png`` is drawn at the end. ``on_point(result)`` is called after each point.
    """
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    out = Path(out).expanduser()
    if write:
        require_pyplot()
    points = grid_points(grid)
    folders = _folders(points, folder_name)
    resolved = validate_points(config, points, out, overrides)
    if run is None:
        _check_data(resolved[0], n)
    runner = run or _evaluate_runner
    split = resolved[0]["data"]["split"]
    base = _base_key(resolved[0], list(grid))
    if write:
        out.mkdir(parents=True, exist_ok=True)
    results, data = [], {}
    for point, folder in zip(points, folders):
        log(f"== sweep (n={n}): {point_label(point)} → {folder} ==")
        r = point_result(point, folder, runner(point_config(config, point, out / folder, n, overrides), out / folder))
        r["split"] = split
        results.append(r)
        if write:
            data = _merge_sweep(out / "sweep.json", r, n, base, grid, log)
        if on_point is not None:
            on_point(r)
    if not write:
        return {"n": n, "split": split, "grid": grid, "points": results}
    from .tuning_plots import plot_sweep

    plot_sweep(data, out / "sweep.png")
    return data


def format_results(rows: list[dict[str, Any]], stage: bool = False) -> str:
    """Results (:func:`point_result`) as a Markdown table: settings, n, clean and robust % with 95% CIs, s/image."""
    def pct(r: dict[str, Any], key: str) -> str:
        lo, hi = r[f"{key}_ci95"]
        return f"{100 * r[key]:.1f} ({100 * lo:.0f}–{100 * hi:.0f})"

    head = (["stage"] if stage else []) + ["settings", "n", "clean % (95% CI)", "robust % (95% CI)", "s/image"]
    body = [([("screen" if r.get("rung", 0) == 0 else f"rung {r['rung']}")] if stage else [])
            + [point_label(r["settings"]), str(r["n"]), pct(r, "clean_accuracy"), pct(r, "robust_accuracy"),
               "–" if r.get("seconds_per_image") is None else f"{r['seconds_per_image']:.1f}"] for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in [head, *body]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
