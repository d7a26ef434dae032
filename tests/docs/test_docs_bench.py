"""The ``python bench/SCRIPT.py …`` commands of README.md and docs/*.md parse: every documented row, subcommand
and flag still exists. They are not run (they take hours); the script runs up to its ``parse_args`` and stops
there, so a renamed flag or a removed row fails here instead of on the reader's machine."""

from __future__ import annotations

import argparse
import os
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


def needs_shared(exc: SystemExit, command: Command) -> None:
    """A script that stopped because ../shared is absent: skip, as every test does, unless HETPURE_SHARED is set
    (CI), where a missing ../shared is a failure (the convention of conftest.shared_file)."""
    if "../shared" not in str(exc.code):
        return
    if os.environ.get("HETPURE_SHARED"):
        pytest.fail(f"HETPURE_SHARED is set but {command.words[1]} found no ../shared: {exc.code}")
    pytest.skip(f"{command.words[1]} needs ../shared, which is not present (set HETPURE_SHARED to require it)")


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
        needs_shared(exc, command)
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
        row_config = script["row_config"]
        # run_path returns a copy of the script's globals: patch the ones row_config reads, so that it needs no
        # ../shared (its paths are only joined, never opened) and the environment is not changed
        monkeypatch.setitem(row_config.__globals__, "shared_dir", lambda: tmp_path)
        for row in namespace.rows:  # each documented row builds a config (an unknown row exits)
            try:
                cfg = row_config(row, namespace)
                assert cfg["defense"]["method"] and cfg["data"]["root"].startswith(str(tmp_path)), row
            except SystemExit as exc:
                needs_shared(exc, command)
                raise


def test_a_wrong_flag_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = Command(REPO / "README.md", 1, ("python", "bench/cifar10_robust.py", "table", "--rows", "no-such-row"), None)
    with pytest.raises(pytest.fail.Exception, match="was refused"):
        parse_documented(bad, monkeypatch)


def test_a_script_that_needs_shared_skips_unless_hetpure_shared_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    command = Command(REPO / "README.md", 1, ("python", "bench/cifar10_robust.py", "figures"), None)
    stop = SystemExit("benchmarks read models and data from ../shared; /x/shared is missing (set HETPURE_SHARED)")
    monkeypatch.delenv("HETPURE_SHARED", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs ../shared"):
        needs_shared(stop, command)
    monkeypatch.setenv("HETPURE_SHARED", "/x/shared")
    with pytest.raises(pytest.fail.Exception, match="HETPURE_SHARED is set"):
        needs_shared(stop, command)
    needs_shared(SystemExit(2), command)  # argparse's refusal is not about ../shared: the caller fails it
