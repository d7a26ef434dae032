"""The layout rules of ARCHITECTURE.md, checked on the source: module size, one-way imports, no cycles,
and a public API that only grows."""

from __future__ import annotations

import ast
from pathlib import Path

import hetpure

SRC = Path(__file__).resolve().parents[1] / "src" / "hetpure"
CORE = {"schedule", "mask", "config", "sampling", "purify", "sde", "gdmp", "methods", "checks", "devices", "errors"}
SHELLS = {"attacks", "evaluation", "evaluate", "data", "cli", "train", "demo", "predict", "tuning", "tuning_plots",
          "catalog", "distributed", "viz", "images", "graph_memory", "presets"}
#: hetpure.__all__ before the redesign: names may be added, never removed.
PUBLIC_API_0_1 = {
    "ActivationRecorder", "AdmEps", "CheckpointError", "ConfigError", "DiffusersEps", "EpsModel",
    "HeterogeneousPurifier", "HetpureError", "NcsnppEps", "NoiseSchedule", "PurifiedClassifier", "Purifier",
    "PurifyConfig", "UniformPurifier", "__version__", "as_classifier", "binarize", "check_logits", "energy_map",
    "list_classifiers", "list_presets", "load_classifier", "load_dataset", "load_eps_model", "load_state_dict_file",
    "majority_vote", "preset_purify_config", "sample_heterogeneous", "sample_uniform",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every hetpure module this file imports, at module level or inside a function (lazy imports count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hetpure"):
            found.add(node.module)
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_no_module_over_500_lines() -> None:
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"


def test_the_core_imports_no_shell() -> None:
    bad = {}
    for name, targets in GRAPH.items():
        top = name.split(".")[1] if "." in name else ""
        shells = {t for t in targets if "." in t and t.split(".")[1] in SHELLS}
        if top in CORE and shells:
            bad[name] = sorted(shells)
    assert not bad, f"core modules importing shells: {bad}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in GRAPH[node]:
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_public_api_only_grows() -> None:
    assert PUBLIC_API_0_1 <= set(hetpure.__all__), PUBLIC_API_0_1 - set(hetpure.__all__)
    assert all(hasattr(hetpure, name) for name in hetpure.__all__)
