"""Hardening regressions: what fuzzing found, model files whose metadata contradicts their
tensors, and the context cap.

- tests/data/fuzz-regress/<harness>/: inputs that crashed a harness in csrc/fuzz/ (minimized by
  hand to a few lines). They are replayed through the harness itself, built without libFuzzer
  (`make tests/c/build/replay_<harness>`), and the hwloc ones also through the public API,
  gemma4stack.detect(topology_xml=...), in a child process so that a crash fails the test
  instead of killing pytest. The malformed-GGUF corpus goes through the GGUF harness too: its
  checks (every pointer inside the file, lookups by name, nested arrays) run on each file.
- tests/data/bad-gguf/MODEL_MANIFEST.txt: valid GGUF files (the reader opens them) that
  gemma4stack.Model must refuse, naming the key or tensor at fault (written by
  tests/data/make_bad_gguf.py with gguf-py's GGUFWriter, so each contradiction is by
  construction).
- The context cap: a huge context is a LimitError naming GEMMA4STACK_MAX_CONTEXT before the KV
  cache is allocated; the variable moves the cap.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gemma4stack
from gemma4stack import LimitError, Model
from gemma4stack.gguf import read_gguf

REPO = Path(__file__).resolve().parents[1]
REGRESS = REPO / "tests/data/fuzz-regress"
CORPUS = REPO / "tests/data/bad-gguf"


# ---- model files whose metadata contradicts their tensors ---------------------------------------

def model_manifest() -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in (CORPUS / "MODEL_MANIFEST.txt").read_text().splitlines()]


@pytest.mark.parametrize("fname,exc,keyword", model_manifest(), ids=[m[0] for m in model_manifest()])
def test_model_refuses_contradicting_metadata(fname, exc, keyword):
    path = CORPUS / fname
    read_gguf(path)   # a well-formed GGUF: only the model may refuse it
    if exc == "OK":
        with Model(path, threads=1) as m:
            assert m.n_vocab == 16
            assert len(m.tokenize("ab cd")) >= 2
        return
    with pytest.raises(Exception) as ei:
        Model(path, threads=1)
    assert type(ei.value).__name__ == exc, (fname, ei.value)
    assert isinstance(ei.value, ValueError)
    msg = str(ei.value)
    assert keyword in msg and fname in msg, msg


def test_model_manifest_is_complete():
    listed = {m[0] for m in model_manifest()}
    assert listed == {p.name for p in CORPUS.glob("model_*.gguf")} | {"valid_tiny_llama.gguf"}
    assert len(listed) >= 8


# ---- the context cap ---------------------------------------------------------------------------

def test_huge_context_is_a_limit_error_naming_the_cap(models):
    path = models / "TinyStories-656K-Q8_0.gguf"
    for ctx in (2**20 + 1, 10**12):
        with pytest.raises(LimitError, match="GEMMA4STACK_MAX_CONTEXT") as ei:
            Model(path, context=ctx, threads=1)
        assert "1048576" in str(ei.value)


def test_context_cap_moves_with_the_environment(models, monkeypatch):
    path = models / "TinyStories-656K-Q8_0.gguf"
    monkeypatch.setenv("GEMMA4STACK_MAX_CONTEXT", "100")
    with pytest.raises(LimitError, match="cap of 100 tokens"):
        Model(path, context=101, threads=1)
    with Model(path, context=100, threads=1) as m:
        assert m.n_ctx == 100
    monkeypatch.setenv("GEMMA4STACK_MAX_CONTEXT", "lots")
    with pytest.raises(ValueError, match="GEMMA4STACK_MAX_CONTEXT='lots'"):
        Model(path, context=10, threads=1)


# ---- hwloc XML that crashed hwloc 2.9 ------------------------------------------------------------

HWLOC_CASES = sorted(p.name for p in (REGRESS / "hwloc").glob("*.xml"))


@pytest.mark.parametrize("libxml", ["0", "1"], ids=["minimal-parser", "libxml2"])
@pytest.mark.parametrize("name", HWLOC_CASES)
def test_hwloc_crashers_are_value_errors(name, libxml):
    """Each file made hwloc 2.9 dereference NULL (SIGSEGV) before hw.c checked the sets."""
    code = ("import gemma4stack, sys\n"
            "try:\n"
            f"    gemma4stack.detect(bandwidth=False, topology_xml={str(REGRESS / 'hwloc' / name)!r})\n"
            "except ValueError as e:\n"
            "    print(e); sys.exit(3)\n")
    env = dict(os.environ, HWLOC_LIBXML_IMPORT=libxml)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr[-2000:])
    assert name in r.stdout and "line" in r.stdout, r.stdout


def test_valid_topologies_still_load(hwloc_xml):
    """The set check must not refuse what lstopo writes."""
    for p in sorted(hwloc_xml.glob("*.xml")):
        assert gemma4stack.detect(bandwidth=False, topology_xml=p).cpu.threads > 0, p


# ---- the harnesses themselves over the committed inputs -------------------------------------------

def _replay_binary(harness: str) -> Path:
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    target = f"tests/c/build/replay_{harness}"
    r = subprocess.run(["make", "-s", target], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return REPO / target


@pytest.mark.parametrize("harness,inputs", [
    ("gguf", [CORPUS]),
    ("hwloc", [REGRESS / "hwloc"]),
] + [(h.name, [h]) for h in sorted(REGRESS.iterdir()) if h.is_dir() and h.name not in ("gguf", "hwloc")]
  + ([("gguf", [REGRESS / "gguf"])] if (REGRESS / "gguf").is_dir() else []))
def test_harness_replays_cleanly(harness, inputs, shared):
    exe = _replay_binary(harness)
    env = dict(os.environ, GEMMA4STACK_SHARED=str(shared))
    r = subprocess.run([str(exe), *map(str, inputs)], cwd=REPO, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    n = sum(1 for d in inputs for p in d.iterdir() if p.is_file())
    assert f"{n} inputs replayed" in r.stderr, r.stderr[-500:]
