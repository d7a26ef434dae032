"""The Markdown documentation as tests: the ```python blocks and the ``hetpure`` commands of README.md and
docs/*.md, run in order in a scratch view of the repository root.

Python blocks are found and executed by Sybil (``PythonCodeBlockParser``: each file's blocks share one namespace
and tracebacks point at the Markdown line). A block or a command that needs what no test machine has (the
paper's checkpoints, a hub id, a GPU, the internet) says so to the reader in a first-line comment
``# needs …``; the tests skip it with that reason, and test_docs_examples.py still compiles every block.
CONTRIBUTING.md, "Docs examples", explains how to write and mark examples.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import SkipTest

import pytest
from sybil import Document, Example
from sybil.parsers.markdown import PythonCodeBlockParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

REPO = Path(__file__).resolve().parents[1]
MARKER = "# needs "
# fences whose lines are shell commands; in transcripts (text, console) only the lines after a "$ " prompt
SHELL = ("bash", "sh", "shell", "console", "text", "")
TRANSCRIPT = ("console", "text", "")
# outputs that a run of the examples from the repository root may leave there; never linked into a scratch view
OUTPUTS = ("runs", "my-images", "my-demo", "hetpure-demo", "build", "dist")
# what the examples read from ../shared: when it is absent the docs tests skip (and fail when HETPURE_SHARED is set)
SHARED_NEEDED = ("data/cifar10", "models/resnet20-cifar10/model.safetensors", "models/ddpm-cifar10-tiny")


def markdown_files() -> list[Path]:
    """README.md and docs/*.md (docs/results/ holds data, not documentation).

    Only files that exist: a copy of ``tests/`` without the docs (e.g. to run ``-k golden`` elsewhere) still
    collects; in a checkout, test_the_docs_show_the_everyday_commands fails if README.md or docs/ is missing.
    """
    return [path for path in (REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))) if path.is_file()]


def where(path: Path, line: int) -> str:
    """``docs/x.md:12``: a block or command as a test id and in messages."""
    return f"{path.relative_to(REPO).as_posix()}:{line}"


def needs(source: str) -> str | None:
    """What a block needs that no test machine has (its first line ``# needs …``), or None."""
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    return lines[0][2:] if lines and lines[0].startswith(MARKER) else None


# --------------------------------------------------------------------------------------------------
# Python blocks
# --------------------------------------------------------------------------------------------------


def parse_python(path: Path) -> Document:
    """The Sybil document of ``path`` with its ```python blocks as examples (a fresh, empty namespace)."""
    document = Document.parse(str(path), PythonCodeBlockParser())
    document.namespace["__name__"] = "__docs__"
    return document


def python_source(example: Example) -> str:
    """The code of a block (a block written as a doctest: its examples' source)."""
    return getattr(example.parsed, "source", None) or str(example.parsed)


def python_blocks() -> list[tuple[Path, int, int]]:
    """(file, index among its python blocks, line) of every ```python block, for parametrising."""
    return [(path, i, example.line) for path in markdown_files()
            for i, example in enumerate(parse_python(path).examples())]


def fences(path: Path) -> Iterator[tuple[str, str, int]]:
    """(language, source, line of the source's first line) of every fenced block of ``path``."""
    document = Document(path.read_text(encoding="utf-8"), str(path))
    for region in FencedCodeBlockLexer(language=r"[\w+-]*")(document):
        first = document.text.count("\n", 0, region.start) + 2
        yield region.lexemes["language"], str(region.lexemes["source"]), first


# --------------------------------------------------------------------------------------------------
# Shell commands
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command line of a shell block (continuation lines joined, comments removed)."""

    path: Path
    line: int
    words: tuple[str, ...]
    needs: str | None

    @property
    def label(self) -> str:
        return where(self.path, self.line)


def commands(path: Path) -> list[Command]:
    """Every command of the shell blocks of ``path``, in order. A comment line ``# needs …`` marks the command
    right below it."""
    found: list[Command] = []
    for language, source, first in fences(path):
        if language not in SHELL:
            continue
        lines = source.splitlines()
        pending: str | None = None
        i = 0
        while i < len(lines):
            line_no, text = first + i, lines[i]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            text = text.strip()
            if language in TRANSCRIPT:
                if not text.startswith("$ "):
                    continue
                text = text[2:].strip()
            if text.startswith(MARKER):
                pending = text[2:]
                continue
            try:
                words = tuple(shlex.split(text, comments=True))
            except ValueError:  # unbalanced quotes: a hetpure command then fails visibly when it runs
                words = tuple(text.split())
            if words:
                found.append(Command(path, line_no, words, pending))
                pending = None
    return found


def cli_commands() -> list[Command]:
    """The ``hetpure …`` commands of every Markdown file."""
    return [c for path in markdown_files() for c in commands(path) if c.words[0] == "hetpure"]


def run_setup(command: Command, cwd: Path) -> None:
    """The docs' own preparation commands, ``mkdir`` and ``cp`` (e.g. docs/commands.md's image folder)."""
    name, *rest = command.words
    args = [w for w in rest if not w.startswith("-")]
    if name == "mkdir":
        for folder in args:
            (cwd / folder).mkdir(parents=True, exist_ok=True)
    elif name == "cp":
        *sources, dest = args
        for source in sources:
            shutil.copy(cwd / source, cwd / dest)


# --------------------------------------------------------------------------------------------------
# A scratch view of the repository root, and running a file's steps in order
# --------------------------------------------------------------------------------------------------


def _tracked_entries() -> list[str]:
    """The top-level names of the checkout that git tracks (else every name but hidden ones and outputs)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
        names = {p.split("/", 1)[0] for p in listed.stdout.split("\0") if p}
    except (OSError, subprocess.CalledProcessError):
        names = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
    return sorted(n for n in names if n not in OUTPUTS and (REPO / n).exists())


def scratch_checkout(tmp: Path, shared: Path) -> Path:
    """``tmp/checkout`` links the checkout's tracked entries (configs/, docs/, …) and ``tmp/shared`` the shared
    folder (e.g. :func:`small_shared`), so the docs' relative paths (``configs/…``, ``../shared/…``) resolve
    as from the repository root while everything the examples write (``runs/``, ``my-images/``) stays under
    ``tmp``."""
    (tmp / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    root = tmp / "checkout"
    root.mkdir()
    for name in _tracked_entries():
        (root / name).symlink_to(REPO / name, target_is_directory=(REPO / name).is_dir())
    return root


def small_shared(dest: Path, shared: Path, per_class: int = 4) -> Path:
    """The shared folder with its models (and everything else) linked, but CIFAR-10 cut to the first
    ``per_class`` images of each class and split, plus every image the docs name: the examples' tiny settings
    for the data. (A run fingerprints its whole split, 50,000 files for the train split of ``tune``.)"""
    named = {m.group(1) for path in markdown_files()
             for m in re.finditer(r"\.\./shared/(data/cifar10/[^\s'\"`)]+)", path.read_text(encoding="utf-8"))}
    dest.mkdir(parents=True, exist_ok=True)
    for entry in shared.resolve().iterdir():
        if entry.name != "data":
            (dest / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for entry in (shared.resolve() / "data").iterdir():
        if entry.name != "cifar10":
            (dest / "data").mkdir(exist_ok=True)
            (dest / "data" / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    cifar = shared.resolve() / "data" / "cifar10"
    (dest / "data" / "cifar10").mkdir(parents=True)
    for entry in sorted(cifar.iterdir()):
        if not entry.is_dir():  # README.md and the like
            (dest / "data" / "cifar10" / entry.name).symlink_to(entry)
            continue
        for folder in sorted(p for p in entry.iterdir() if p.is_dir()):
            files = sorted(folder.iterdir())
            keep = files[:per_class] + [f for f in files[per_class:]
                                        if f"data/cifar10/{entry.name}/{folder.name}/{f.name}" in named]
            target = dest / "data" / "cifar10" / entry.name / folder.name
            target.mkdir(parents=True)
            for f in keep:
                (target / f.name).symlink_to(f)
    return dest


def prepare(root: Path, path: Path) -> None:
    """Run the ``mkdir`` / ``cp`` commands of ``path``'s shell blocks in ``root``."""
    for command in commands(path):
        if command.words[0] in ("mkdir", "cp") and command.needs is None:
            run_setup(command, root)


def docs_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :func:`small_shared` folder of the examples; skips (or fails) like ``conftest.shared_file``."""
    from conftest import shared_file, shared_root

    for relative in SHARED_NEEDED:
        shared_file(relative)
    root = shared_root()
    assert root is not None
    return small_shared(tmp_path_factory.mktemp("shared"), root)


class InOrder:
    """Runs the steps of one Markdown file once each and in order, from its scratch checkout: asking for step
    i first runs the steps before it that have not run. After a failure the later steps are skipped (their
    state would be missing), naming the step that failed."""

    def __init__(self, root: Path, steps: list[Callable[[], None]], labels: list[str]) -> None:
        self.root = root
        self.steps = steps
        self.labels = labels
        self.done = 0
        self.failed: str | None = None

    def run(self, index: int) -> None:
        previous = Path.cwd()
        os.chdir(self.root)
        try:
            while self.done < index:
                self._step(self.done, quiet=True)
            if self.failed is not None:
                pytest.skip(f"{self.labels[index]}: not run because {self.failed} failed")
            if self.done == index:
                self._step(index, quiet=False)
        finally:
            os.chdir(previous)

    def _step(self, i: int, quiet: bool) -> None:
        self.done = i + 1
        try:
            self.steps[i]()
        except (SkipTest, pytest.skip.Exception):
            if not quiet:
                raise
        except (Exception, pytest.fail.Exception):
            self.failed = self.labels[i]
            if not quiet:
                raise


Steps = Callable[[Path], tuple[list[Callable[[], None]], list[str]]]


class Runners(dict):
    """One scratch checkout (with the file's ``mkdir`` / ``cp`` commands run) and one :class:`InOrder` per
    Markdown file, made when a step of that file is first asked for; ``steps_of(path)`` gives its steps."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, shared: Path, steps_of: Steps) -> None:
        super().__init__()
        self.tmp_path_factory = tmp_path_factory
        self.shared = shared
        self.steps_of = steps_of

    def __missing__(self, path: Path) -> InOrder:
        root = scratch_checkout(self.tmp_path_factory.mktemp(path.stem), self.shared)
        prepare(root, path)
        steps, labels = self.steps_of(path)
        self[path] = InOrder(root, steps, labels)
        return self[path]
