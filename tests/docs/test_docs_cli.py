"""The ``hetpure …`` commands of README.md and docs/*.md (```bash lines, and ``$ hetpure …`` lines of transcripts)
run through ``hetpure.cli.main`` in a scratch view of the repository root, in order per file, with tiny settings
appended, so a renamed command, flag or config key in the docs fails here. Outputs go to a temporary folder.
A command marked by a ``# needs …`` comment line above it is skipped with that reason."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from markdown_docs import Command, Runners, cli_commands, docs_shared

from hetpure import cli

COMMANDS = cli_commands()

# Appended to a documented command so that it runs in seconds (a later --set or flag wins over the docs' own).
CONFIG_TINY = [f"--set={item}" for item in (
    "data.n=2", "defense.ddim_steps=10", "defense.runs=2", "attack.steps=1", "attack.eot=1",
    "run.worst_case_k=1", "run.sanity_n=2", "run.batch_size=2", "run.save_images=false", "run.progress=false",
)]
TINY: dict[str, list[str]] = {
    "evaluate": CONFIG_TINY,
    "purify": CONFIG_TINY,
    "predict": CONFIG_TINY,
    "tune": CONFIG_TINY,
    "sweep": CONFIG_TINY,
    "list": [],
    # rescore replays its source run's data and attacks (the source ran with CONFIG_TINY); only defence and run keys
    "rescore": [f"--set={item}" for item in (
        "defense.ddim_steps=10", "defense.runs=2", "run.worst_case_k=1", "run.batch_size=2", "run.save_images=false",
        "run.progress=false",
    )],
    "combine": [],  # combine, compare and export read finished run folders: nothing to make tiny
    "compare": [],
    "export": [],
    "demo": ["--quick", "--n", "2"],
    "train-classifier": ["--epochs", "1", "--limit", "64"],
    "train-diffusion": ["--steps", "2", "--limit", "16", "--batch-size", "8", "--checkpoint-every", "2"],
}


def _step(command: Command) -> Callable[[], None]:
    def run() -> None:
        if command.needs:
            pytest.skip(f"{command.label} {command.needs} (marked in the docs)")
        name = command.words[1] if len(command.words) > 1 else ""
        if name not in TINY:
            pytest.fail(f"{command.label}: `hetpure {name}` has no tiny settings; add them to TINY in {__file__}")
        if any(w in ("&&", "||", "|", ";", ">", "<") for w in command.words):
            pytest.fail(f"{command.label}: write one plain command per line, without shell operators")
        argv = [*command.words[1:], *TINY[name]]
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse refused the command line: a renamed or removed flag
            pytest.fail(f"{command.label}: `hetpure {shlex.join(argv)}` was refused (exit {exc.code}); see stderr")
        assert code == 0, f"{command.label}: `hetpure {shlex.join(argv)}` exited with {code}; see stderr"

    return run


def _steps(path: Path) -> tuple[list[Callable[[], None]], list[str]]:
    mine = [c for c in COMMANDS if c.path == path]
    return [_step(c) for c in mine], [c.label for c in mine]


@pytest.fixture(scope="module")
def runners(tmp_path_factory: pytest.TempPathFactory) -> Runners:
    return Runners(tmp_path_factory, docs_shared(tmp_path_factory), _steps)


@pytest.mark.parametrize("index", range(len(COMMANDS)),
                         ids=[f"{c.label} {' '.join(c.words[1:2])}" for c in COMMANDS])
def test_documented_command_runs(index: int, runners: Runners) -> None:
    command = COMMANDS[index]
    mine = [c for c in COMMANDS if c.path == command.path]
    runners[command.path].run(mine.index(command))


def test_the_docs_show_the_everyday_commands() -> None:
    """The extraction finds the README's and docs/commands.md's examples (a changed fence would hide them)."""
    shown = {(c.path.name, c.words[1]) for c in COMMANDS}
    assert {("README.md", "evaluate"), ("commands.md", "purify"), ("commands.md", "predict"),
            ("commands.md", "tune"), ("commands.md", "sweep"), ("commands.md", "list"), ("commands.md", "rescore"),
            ("commands.md", "combine"), ("commands.md", "compare"), ("commands.md", "export")} <= shown
