"""Figures of :mod:`hetpure.tuning`: ``tune.png`` (each point's accuracy across the halving rungs) and
``sweep.png`` (accuracy against the swept value, one line per value of the other keys).

matplotlib is optional (``pip install 'hetpure[viz]'``); it is imported only here, with the Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError

__all__ = ["MissingDependency", "plot_sweep", "plot_tune", "pyplot", "require_pyplot"]

_INSTALL = "pip install 'hetpure[viz]'"


MissingDependency = MissingDependencyError  # the name this module used before the hierarchy


def require_pyplot() -> None:
    """Raise :class:`MissingDependency` (naming ``pip install 'hetpure[viz]'``) when matplotlib is missing;
    imports nothing, so commands check before their first run."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependency(f"the figures (tune.png, sweep.png) need matplotlib, which is not installed: "
                                f"{_INSTALL}")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or :class:`MissingDependency` naming the install command."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependency(f"the figures need matplotlib, which is not installed: {_INSTALL}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _value(v: Any) -> str:
    return json.dumps(v) if v is None or isinstance(v, (bool, dict, list)) else str(v)


def _errorbar(ax: Any, xs: list[float], ys: list[float], cis: list[list[float]], **kw: Any) -> None:
    lo = [100 * (y - c[0]) for y, c in zip(ys, cis)]
    hi = [100 * (c[1] - y) for y, c in zip(ys, cis)]
    ax.errorbar(xs, [100 * y for y in ys], yerr=[lo, hi], capsize=3, marker="o", **kw)


def plot_tune(result: dict[str, Any], png: str | Path) -> Path:
    """Clean and robust accuracy (95% intervals) of every point against the images of each rung."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    by_point: dict[str, list[dict[str, Any]]] = {}
    for rung in result["rungs"]:
        for r in rung:
            by_point.setdefault(json.dumps(r["settings"], sort_keys=True), []).append(r)
    best = json.dumps((result.get("selected") or {}).get("settings"), sort_keys=True)
    for ax, key in zip(axes, ("clean_accuracy", "robust_accuracy")):
        for i, (name, rows) in enumerate(by_point.items()):
            rows = sorted(rows, key=lambda r: r["n"])
            label = " ".join(f"{k.split('.', 1)[1]}={_value(v)}" for k, v in rows[0]["settings"].items())
            shift = 1 + 0.04 * (i - (len(by_point) - 1) / 2) / max(1, len(by_point))  # keep the bars apart
            _errorbar(ax, [r["n"] * shift for r in rows], [r[key] for r in rows], [r[f"{key}_ci95"] for r in rows],
                      label=label + (" (selected)" if name == best else ""), linewidth=2.5 if name == best else 1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"images of the {result['split']} split (rung)")
        ax.set_title(f"{key.split('_')[0]} accuracy", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy % (95% CI)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"successive halving: screen n={result['screen_n']}, keep {result['keep']}, up to n={result['n']}",
                 fontsize=10)
    fig.tight_layout()
    path = Path(png)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(data: dict[str, Any], png: str | Path) -> Path:
    """Clean and robust accuracy (95% intervals) against the first numeric grid key; one line per value of
    the other keys."""
    plt = pyplot()
    keys = list(data["grid"])
    numeric = [k for k in keys if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      for v in data["grid"][k])]
    x_key = numeric[0] if numeric else keys[0]
    others = [k for k in keys if k != x_key]
    categories = [_value(v) for v in data["grid"][x_key]]

    def x_of(v: Any) -> float:
        return float(v) if x_key in numeric else float(categories.index(_value(v)))

    lines: dict[str, list[dict[str, Any]]] = {}
    for p in data["points"]:
        name = ", ".join(f"{k.split('.', 1)[1]}={_value(p['settings'].get(k))}" for k in others) or "all"
        lines.setdefault(name, []).append(p)
    xs_all = [x_of(v) for v in data["grid"][x_key]]
    span = (max(xs_all) - min(xs_all)) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key in zip(axes, ("clean_accuracy", "robust_accuracy")):
        for i, (name, pts) in enumerate(lines.items()):
            pts = sorted(pts, key=lambda p: x_of(p["settings"][x_key]))
            shift = 0.012 * span * (i - (len(lines) - 1) / 2)  # keep equal lines and their bars apart
            _errorbar(ax, [x_of(p["settings"][x_key]) + shift for p in pts], [p[key] for p in pts],
                      [p[f"{key}_ci95"] for p in pts], label=name)
        if x_key not in numeric:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(x_key)
        ax.set_title(f"{key.split('_')[0]} accuracy, n = {data['n']}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy % (95% CI)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = Path(png)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
