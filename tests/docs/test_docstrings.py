"""Every public function and class of ``hetpure.__all__`` has a docstring with a short ``>>>`` example, and
every docstring example in the package runs as a doctest (the stdlib's, with ELLIPSIS and
NORMALIZE_WHITESPACE). Examples use the small models embedded in the package (``hetpure.demo``), random
weights or tensors; a line that needs a large file (the paper's checkpoints, ../shared) is marked
``# doctest: +SKIP``."""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
import pkgutil
from pathlib import Path

import pytest

import hetpure

PUBLIC = sorted(name for name in hetpure.__all__ if not name.startswith("_"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _doctests() -> list[doctest.DocTest]:
    """The docstrings with examples of every hetpure module (``__main__`` would run the CLI)."""
    found = []
    for info in pkgutil.walk_packages(hetpure.__path__, "hetpure."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [t for t in doctest.DocTestFinder().find(module) if t.examples]
    return sorted(found, key=lambda t: t.name)


DOCTESTS = _doctests()


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_a_docstring_with_an_example(name: str) -> None:
    obj = getattr(hetpure, name)
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        pytest.skip(f"hetpure.{name} is a {type(obj).__name__}, not a function or class")
    doc = obj.__doc__ or ""  # its own docstring: a class's __doc__ is not inherited
    assert doc.strip(), f"hetpure.{name} has no docstring"
    assert ">>>" in doc, f"hetpure.{name}'s docstring has no example (a few >>> lines that run as a doctest)"


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_example_runs(test: doctest.DocTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.write, clear_globs=True)
    assert result.failed == 0, f"{test.name} ({test.filename}:{test.lineno}):\n{report.getvalue()}"


def test_the_public_examples_are_found() -> None:
    """The finder sees the examples of the public names (a module it could not import would hide them)."""
    names = {t.name.rsplit(".", 1)[-1] for t in DOCTESTS}
    assert {"majority_vote", "HeterogeneousPurifier", "PurifyConfig"} <= names
