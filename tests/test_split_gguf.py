"""Split GGUFs (llama.cpp's gguf-split layout) opened by the C core, and their failure modes.

Reference: llama.cpp tools/gguf-split and src/llama-model-loader.cpp define the layout: shard i
of n is <prefix>-%05d-of-%05d.gguf (i + 1, n), each a complete GGUF carrying split.no (u16,
0-based) and split.count (u16), shard 0 with all metadata and split.tensors.count (i32).
gguf-py's GGUFWriter(split_max_tensors=...) writes exactly that (tests/quant_mix.py split), so
the shards here come from an independent writer. The payload is the real TinyStories GGUF from
shared/models (llama, 20 tensors), whose single-file logits are the reference.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import gguf

from gemma4stack import GGUFError, Model, _core
import quant_mix

TINY = "TinyStories-656K-Q8_0.gguf"
IDS = [1] + list(range(10, 40))


@pytest.fixture(scope="module")
def tiny(models, tmp_path_factory):
    """(single file, [3 shards], reference logits)."""
    src = models / TINY
    d = tmp_path_factory.mktemp("split")
    shutil.copy(src, d / TINY)
    shards = quant_mix.split(d / TINY, d / "split", 3)
    with Model(src, threads=1) as m:
        ref = m.logits(IDS)
    return src, shards, ref


def _copy_shards(shards, dst):
    dst.mkdir()
    return [shutil.copy(p, dst / p.name) for p in shards]


def test_every_shard_opens_the_whole_model(tiny):
    src, shards, ref = tiny
    single = _core.gguf_read(str(src))
    names = sorted(t["name"] for t in single["tensors"])
    for p in shards:
        r = _core.gguf_read(str(p))
        assert r["shards"] == [str(s) for s in shards]
        assert sorted(t["name"] for t in r["tensors"]) == names
        assert {t["shard"] for t in r["tensors"]} == {0, 1, 2}
        assert r["metadata"]["general.architecture"] == "llama"   # shard 0's metadata
        with Model(p, threads=1) as m:
            assert np.array_equal(m.logits(IDS), ref), p.name
    assert single["shards"] == [str(src)]


def test_missing_shard_is_named(tiny, tmp_path):
    _, shards, _ = tiny
    sh = _copy_shards(shards, tmp_path / "m")
    os.remove(sh[1])
    for p in (sh[0], sh[2]):
        with pytest.raises(FileNotFoundError, match=r"shard 2 of 3 .*-00002-of-00003\.gguf"):
            Model(p)


def test_truncated_shard_is_named(tiny, tmp_path):
    _, shards, _ = tiny
    sh = _copy_shards(shards, tmp_path / "t")
    size = os.path.getsize(sh[2])
    with open(sh[2], "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(GGUFError, match=r"shard 3 of 3 .*-00003-of-00003\.gguf: truncated"):
        Model(sh[0])
    with pytest.raises(GGUFError, match=r"-00003-of-00003\.gguf: truncated"):   # opened itself
        _core.gguf_read(str(sh[2]))


def test_shard_from_another_split_is_refused(tiny, tmp_path):
    """Shard 2's file replaced by a copy of shard 3: split.no says 2, not 1."""
    _, shards, _ = tiny
    sh = _copy_shards(shards, tmp_path / "x")
    shutil.copy(sh[2], sh[1])
    with pytest.raises(GGUFError, match=r"expected shard 2 of 3 \(split.no 1.*says split.no 2"):
        _core.gguf_read(str(sh[0]))


def test_renamed_shard_cannot_find_the_others(tiny, tmp_path):
    _, shards, _ = tiny
    p = tmp_path / "model.gguf"
    shutil.copy(shards[0], p)
    with pytest.raises(GGUFError, match=r"does not end in -00001-of-00003\.gguf"):
        _core.gguf_read(str(p))


def _rewrite_split_keys(src, dst, **keys):
    """src with split.* keys replaced: {name: value} (u16 / i32 as gguf-split writes them)."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents()
                        if "general.architecture" in r.fields else "llama")
    quant_mix.copy_keys(r, w, set(keys))
    for name, (v, vt) in keys.items():
        w.add_key_value(name, v, vt)
    for t in r.tensors:
        quant_mix._add_raw(w, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tensor_count_mismatch_and_duplicates(tiny, tmp_path):
    _, shards, _ = tiny
    sh = _copy_shards(shards, tmp_path / "c")
    _rewrite_split_keys(shards[0], sh[0], **{"split.tensors.count": (21, gguf.GGUFValueType.INT32)})
    with pytest.raises(GGUFError, match=r"split.tensors.count is 21 but the 3 shards hold 20 tensors"):
        _core.gguf_read(str(sh[2]))
    # shard 3 = shard 2's tensors under shard 3's split keys: its names repeat
    sh = _copy_shards(shards, tmp_path / "d")
    r = gguf.GGUFReader(str(shards[1]))
    n_total = len(r.tensors) * 2 + len(gguf.GGUFReader(str(shards[0])).tensors)
    _rewrite_split_keys(shards[0], sh[0], **{"split.tensors.count": (n_total, gguf.GGUFValueType.INT32)})
    _rewrite_split_keys(shards[1], sh[2], **{"split.no": (2, gguf.GGUFValueType.UINT16)})
    with pytest.raises(GGUFError, match=r"tensor '.*' is in shard 2 and again in shard 3"):
        _core.gguf_read(str(sh[0]))


def test_bad_split_keys(tiny, tmp_path):
    _, shards, _ = tiny
    p = tmp_path / "m-00001-of-00003.gguf"
    _rewrite_split_keys(shards[0], p, **{"split.no": (3, gguf.GGUFValueType.UINT16)})
    with pytest.raises(GGUFError, match=r"split.no 3 is not below split.count 3"):
        _core.gguf_read(str(p))
    _rewrite_split_keys(shards[0], p, **{"split.count": ("three", gguf.GGUFValueType.STRING)})
    with pytest.raises(GGUFError, match=r"split.count must be an integer"):
        _core.gguf_read(str(p))


# ---- pull: every shard of a split file ------------------------------------------------------

PULL_CATALOG = """
[defaults]
quant = "q8_0"
publishers = ["test-org"]

[[file]]
variant = "tiny"
quant = "q8_0"
repo = "test-org/tiny-split-GGUF"
file = "TinyStories-656K-Q8_0-00001-of-00003.gguf"
confirmed = true

[[file]]
variant = "tiny"
quant = "q4_0"
repo = "test-org/tiny-split-GGUF"
file = "tiny-Q4_0.gguf"
confirmed = false
"""


@pytest.fixture
def split_hub(tiny, tmp_path, monkeypatch):
    """A loopback stand-in for the Hub (tests/test_pull.py FakeHub) serving the 3 shards under
    their gguf-split names, and a Q4_0 split that is only found through the repo listing."""
    import huggingface_hub.constants as C
    from test_pull import FakeHub
    _, shards, _ = tiny
    files = {p.name: p.read_bytes() for p in shards}
    files.update({p.name.replace("TinyStories-656K-Q8_0", "tiny-q4_0"): p.read_bytes() for p in shards[:2]})
    hub = FakeHub({"test-org/tiny-split-GGUF": files})
    monkeypatch.setattr(C, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    cat = tmp_path / "repos.toml"
    cat.write_text(PULL_CATALOG)
    yield hub, files, {"cache_dir": tmp_path / "hub", "catalog": cat, "token": False, "progress": False}
    hub.close()


def test_pull_downloads_every_shard(tiny, split_hub):
    import hashlib
    import importlib
    P = importlib.import_module("gemma4stack.pull")
    _, _, ref = tiny
    hub, files, env = split_hub
    res = P.download("gemma4:tiny", **env)
    names = sorted(n for n in files if n.startswith("TinyStories"))
    assert [p.name for p in res.shards] == names and res.path == res.shards[0]
    assert len({p.parent for p in res.shards}) == 1              # one snapshot folder
    for p in res.shards:                                         # each shard's bytes, checked
        assert hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(files[p.name]).hexdigest()
    assert res.checksum == "verified sha256" and res.downloaded
    assert res.size == sum(len(files[n]) for n in names)
    with Model(res.path, threads=1) as m:
        assert np.array_equal(m.logits(IDS), ref)
    again = P.download("gemma4:tiny", **env)                     # cached: no new transfers
    assert not again.downloaded and again.shards == res.shards


def test_pull_split_missing_shard_and_listing(split_hub):
    import importlib
    P = importlib.import_module("gemma4stack.pull")
    _, _, env = split_hub
    # the catalog's name is off; the listing has tiny-q4_0-00001-of-00003 but not shard 3
    with pytest.raises(FileNotFoundError, match=r"not tiny-q4_0-00003-of-00003\.gguf \(shard 3 of 3"):
        P.download("gemma4:tiny:q4_0", **env)
    assert P.shard_names("a/b-00002-of-00003.gguf") == [f"a/b-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert P.shard_names("x.gguf") == ["x.gguf"]
    with pytest.raises(ValueError):
        P.shard_names("b-00004-of-00003.gguf")
