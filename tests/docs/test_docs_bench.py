"""The ``python bench/SCRIPT.py …`` commands of README.md and docs/*.md parse: every documented row, subcommand
and flag still exists. They are not run (they take hours); the script runs up to its ``parse_args`` and stops
there, so a renamed flag or a removed row fails here instead of on the reader's machine."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
from markdown_docs import REPO, Command, commands, markdown_files

BENCH = [c for path in markdown_files() for c in commands(path)
         if len(c.words) >= 2 and c.words[0] == "python" and c.words[1].startswith("bench/")]


class Parsed(Exception):
    """Raised right after the script's command line was parsed, with the namespace."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse_documented(command: Command, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    script = REPO / command.words[1]
    assert script.is_file(), f"{command.label}: {command.words[1]} does not exist"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> argparse.Namespace:
        raise Parsed(original(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *command.words[2:]])
    monkeypatch.syspath_prepend(str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except Parsed as done:
        return done.namespace
    except SystemExit as exc:  # argparse refused the line: an unknown flag, row or subcommand
        pytest.fail(f"{command.label}: `{' '.join(command.words)}` was refused (exit {exc.code}); see stderr")
    pytest.fail(f"{command.label}: {command.words[1]} never parsed a command line")


def test_the_docs_document_bench_commands() -> None:
    scripts = {c.words[1] for c in BENCH}
    assert "bench/cifar10_robust.py" in scripts and len(BENCH) >= 10


@pytest.mark.parametrize("command", BENCH, ids=[c.label for c in BENCH])
def test_documented_bench_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    namespace = parse_documented(command, monkeypatch)
    if command.words[1] == "bench/cifar10_robust.py" and getattr(namespace, "command", None) == "table":
        script = runpy.run_path(str(REPO / command.words[1]), run_name="docs_check")
        script["shared_dir"] = lambda: tmp_path  # row_config's globals: no ../shared needed, no environment change
        for row in namespace.rows:  # each documented row builds a config (an unknown row exits)
            assert script["row_config"](row, namespace)["defense"]["method"]


def test_a_wrong_flag_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = Command(REPO / "README.md", 1, ("python", "bench/cifar10_robust.py", "table", "--rows", "no-such-row"), None)
    with pytest.raises(pytest.fail.Exception, match="was refused"):
        parse_documented(bad, monkeypatch)
