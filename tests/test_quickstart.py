"""`gemma4stack quickstart` end to end on the shared TinyStories-656K-Q8_0.gguf.

Reference: ../shared/models/SOURCES.md gives the greedy continuation of TinyStories-656K from
BOS alone: "Once upon a time, there was a little girl named Lily. She had a toy car that she
loved very much. ...". With an empty prompt at temperature 0 the story must read the same.
(A prompt "Once upon a time" tokenizes, as in HF's tokenizer, to pieces the model never emits
itself - '▁', 'On', 'ce▁', 'upon▁a▁tim', 'e' - so its continuation differs.)
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _quickstart(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "gemma4stack", "quickstart", *args],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    return p, time.perf_counter() - t0


@pytest.fixture(scope="module")
def greedy_run(models):
    return _quickstart("--model", str(models / "TinyStories-656K-Q8_0.gguf"),
                       "--prompt", "", "--max-tokens", "24", "--temperature", "0")


def test_hardware_and_tier_table(greedy_run):
    p, _ = greedy_run
    out = p.stdout
    for title in ("== 1. This machine", "== 2. Gemma 4 tiers", "== 3. A short story",
                  "== 4. Next steps"):
        assert title in out, (title, p.stderr)
    assert "Bandwidth  read" in out                       # detect ran with the probe
    assert re.search(r"^\* best: ", out, re.M)
    # one tier-table row per variant x quant
    rows = re.findall(r"^[ *] (E2B|E4B|12B|26B-A4B|31B)\s+(Q4_0|Q4_K_M|Q8_0|BF16)\s", out, re.M)
    assert len(rows) == 20
    assert "gemma4stack pull gemma4:" in out


def test_story_from_the_c_core(greedy_run):
    p, seconds = greedy_run
    assert p.returncode == 0, p.stderr
    story = p.stdout.split("== 3. A short story", 1)[1].split("== 4. Next steps", 1)[0]
    # SOURCES.md's greedy reference (the Q8_0 file may drift later on, not this early)
    assert "Once upon a time, there was a little girl named Lily. She had a toy car" in story
    m = re.search(r"decode ([0-9.]+) tokens/s", story)
    assert m and float(m.group(1)) > 0
    assert seconds < 60


def test_missing_model_is_a_clear_error(tmp_path):
    p, _ = _quickstart("--model", str(tmp_path / "nope.gguf"))
    assert p.returncode == 1
    assert "model not found" in p.stderr and "nope.gguf" in p.stderr
    assert "== 1. This machine" not in p.stdout            # fails before anything slow


def test_default_model_is_gemma3_270m_with_a_base_model_prompt(gemma3_270m_path):
    """Without --model, quickstart runs Google's Gemma 3 270M (testmodels.demo_model) and
    continues the story opening of quickstart.DEFAULT_PROMPT."""
    from gemma4stack.quickstart import DEFAULT_PROMPT
    p, _ = _quickstart("--no-bandwidth", "--max-tokens", "12", "--seed", "1")
    assert p.returncode == 0, p.stderr
    story = p.stdout.split("== 3. A short story", 1)[1].split("== 4. Next steps", 1)[0]
    assert f"({gemma3_270m_path.name})" in story and str(gemma3_270m_path) in story
    assert DEFAULT_PROMPT in story and "generated 12 tokens" in story
