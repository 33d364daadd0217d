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


def resolve_shared_path(path: str | os.PathLike) -> Path:
    """`path` as given when it exists (relative to the working directory), else the same file in
    the shared data directory: "../shared/hwloc-xml/x.xml" (the README's spelling, relative to
    the repository root) and "hwloc-xml/x.xml" both name shared_dir() / "hwloc-xml/x.xml", so
    examples work from any directory and follow $GEMMA4STACK_SHARED. Returns `path` unchanged
    when neither exists (the caller reports the missing file)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    parts = p.parts
    rest = Path(*parts[2:]) if parts[:2] == ("..", "shared") and len(parts) > 2 else p
    candidate = shared_dir() / rest
    return candidate if candidate.exists() else p
