"""Shared fixtures: the ../shared data directory (override with GEMMA4STACK_SHARED)."""
from pathlib import Path

import pytest

from gemma4stack._shared import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    d = shared_dir()
    if not (d / "models").is_dir():
        pytest.fail(f"shared test data not found at {d}; set GEMMA4STACK_SHARED")
    return d


@pytest.fixture(scope="session")
def models(shared) -> Path:
    return shared / "models"


@pytest.fixture(scope="session")
def hwloc_xml(shared) -> Path:
    return shared / "hwloc-xml"
