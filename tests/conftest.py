"""Test helpers: locating ../shared (skip when absent, fail when CI says it must be there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path | None:
    env = os.environ.get("HETPURE_SHARED")
    if env:
        root = Path(env)
        if not root.is_absolute():
            root = (REPO / root).resolve()
        return root
    default = (REPO.parent / "shared").resolve()
    return default if default.is_dir() else None


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared; skip if ../shared is absent, fail if HETPURE_SHARED is set."""
    root = shared_root()
    if root is None:
        pytest.skip("../shared is not present (set HETPURE_SHARED to require it)")
    path = root / relative
    if not path.exists():
        if os.environ.get("HETPURE_SHARED"):
            pytest.fail(f"HETPURE_SHARED is set but {path} is missing")
        pytest.skip(f"{path} is not present")
    return path


FIXTURES = REPO / "tests" / "fixtures"


def fixture_file(name: str) -> Path:
    """A golden file: the copy in tests/fixtures (so golden tests run without ../shared), else ../shared."""
    local = FIXTURES / name
    return local if local.exists() else shared_file(f"fixtures/{name}")


@pytest.fixture
def shared():
    """Fixture form: ``shared("fixtures/x.safetensors") -> Path``."""
    return shared_file
