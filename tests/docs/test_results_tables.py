"""docs/RESULTS.md's tables are the renderings of the committed JSON (bench/results_tables.py), never typed in."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_renderer():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("results_tables", REPO / "bench" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_results_tables_match_their_json() -> None:
    tables = load_renderer()
    text = (REPO / "docs" / "RESULTS.md").read_text()
    for name in tables.TABLES:
        assert f"<!-- results:{name} -->" in text and f"<!-- /results:{name} -->" in text, name
    assert tables.render(text) == text, "run python bench/results_tables.py --write"


def test_a_changed_number_is_caught(tmp_path: Path) -> None:
    tables = load_renderer()
    text = (REPO / "docs" / "RESULTS.md").read_text()
    data = json.loads((tables.RESULTS / "cifar10_robust.json").read_text())
    data[0]["clean_accuracy"] = 0.5  # a JSON that says something else must change the rendering
    original = tables.load
    tables.load = lambda name: data if name == "cifar10_robust.json" else original(name)
    assert tables.render(text) != text
