"""Where the shared test and demo data lives (models/, hwloc-xml/).

$GEMMA4STACK_SHARED when set, else ../shared beside the repository root
(the layout CI uses: a clone with shared/ next to it).
"""
from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    env = os.environ.get("GEMMA4STACK_SHARED")
    if env:
        return Path(env)
    return _REPO_ROOT.parent / "shared"


def default_model() -> Path:
    """The small demo model: TinyStories-656K at Q8_0 (see shared/models/SOURCES.md)."""
    return shared_dir() / "models" / "TinyStories-656K-Q8_0.gguf"
