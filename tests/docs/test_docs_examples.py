"""The ```python blocks of README.md and docs/*.md run, in order and in one namespace per file, from (a scratch
view of) the repository root with the shared CIFAR-10 models; every block compiles, also those marked
``# needs …`` (what no test machine has), which are skipped with that reason. See tests/markdown_docs.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from markdown_docs import (
    REPO,
    Runners,
    docs_shared,
    fences,
    markdown_files,
    needs,
    parse_python,
    python_blocks,
    python_source,
    where,
)
from sybil import Example

BLOCKS = python_blocks()
# languages that look like Python to a reader but that the docs test would not run
PYTHON_ALIASES = ("py", "python3", "pycon", "ipython", "Python")


def _step(example: Example, label: str) -> Callable[[], None]:
    def run() -> None:
        reason = needs(python_source(example))
        if reason:
            pytest.skip(f"{label} {reason} (marked in the docs)")
        example.evaluate()

    return run


def _steps(path: Path) -> tuple[list[Callable[[], None]], list[str]]:
    examples = list(parse_python(path).examples())  # one document: one namespace for all its blocks
    labels = [where(path, e.line) for e in examples]
    return [_step(e, label) for e, label in zip(examples, labels)], labels


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory) -> Runners:
    return Runners(tmp_path_factory, docs_shared(tmp_path_factory), _steps)


@pytest.mark.parametrize(("path", "index"), [(p, i) for p, i, _ in BLOCKS],
                         ids=[where(p, line) for p, _, line in BLOCKS])
def test_python_block_runs(path: Path, index: int, runners: Runners) -> None:
    runners[path].run(index)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_python_block_compiles(path: Path) -> None:
    """Also the blocks marked ``# needs …``: a signature or pseudo-code belongs in a ```text block."""
    errors = []
    for example in parse_python(path).examples():
        try:
            compile(python_source(example), where(path, example.line), "exec")
        except SyntaxError as exc:
            errors.append(f"{where(path, example.line)}: {exc.msg} (block line {exc.lineno}): {exc.text!r}")
    assert not errors, "python blocks that do not compile:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_python_blocks_are_fenced_as_python(path: Path) -> None:
    """A ```py or ```python3 block would look like an example to the reader and never run."""
    wrong = [f"{where(path, line - 1)}: ```{language}" for language, _, line in fences(path)
             if language in PYTHON_ALIASES]
    assert not wrong, "fence Python examples as ```python (or ```text if they are not code):\n" + "\n".join(wrong)
