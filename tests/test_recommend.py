"""gemma4stack.recommend: sizes and speeds on fixed hardware reports.

References, independent of recommend.py's own arithmetic:
- HF transformers' Gemma4TextModel built on the meta device (parameter counts, tensor by tensor);
- the Gemma 4 table of issue 2 (parameter totals) and Google's memory table;
- sizes of published GGUF files (data/gemma4_gguf_repos.toml, issue 2);
- KV-cache bytes worked out by hand below;
- /proc/meminfo and the shared hwloc XML topologies (SOURCES.md).
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gemma4stack.hardware import (Bandwidth, CPUInfo, CPUKind, GPUInfo, HardwareReport,
                                  MemoryInfo, detect)

rec = importlib.import_module("gemma4stack.recommend")   # the module (the package name is the function)

GIB = 1 << 30
REPO = Path(__file__).resolve().parent.parent
V = {v.key: v for v in rec.variants()}
Q = {q.name: q for q in rec.quants()}


def report(ram_gib: float, read_gbs: float | None = None, gpus=(), cgroup_gib=None) -> HardwareReport:
    """A fixed machine: `ram_gib` of RAM, optional measured read bandwidth and GPUs."""
    cpu = CPUInfo(model="Test CPU", vendor="Test", arch="x86_64", packages=1, cores=8, threads=16,
                  simd=["AVX2"], caches={"L3": 32 << 20}, cache_counts={"L3": 1},
                  kinds=[CPUKind(pus=16, efficiency=None, core_type=None)])
    mem = MemoryInfo(total_bytes=int(ram_gib * GIB), available_bytes=int(ram_gib * GIB) // 2,
                     numa_nodes=[int(ram_gib * GIB)],
                     cgroup_limit_bytes=int(cgroup_gib * GIB) if cgroup_gib else None)
    bw = Bandwidth(read=read_gbs, triad=read_gbs * 0.8) if read_gbs else None
    return HardwareReport(cpu=cpu, memory=mem, gpus=list(gpus), bandwidth_gbs=bw, source="fixture")


def gpu(name: str, mem_bytes: int | None) -> GPUInfo:
    return GPUInfo(name=name, vendor="NVIDIA", backend="CUDA", memory_bytes=mem_bytes,
                   memory_source="hwloc" if mem_bytes else None, pci_busid="0000:01:00.0")


# ---- parameter counts ----------------------------------------------------------------------

def _hf_text_config(v):
    c = pytest.importorskip("transformers.models.gemma4.configuration_gemma4")
    kw = dict(vocab_size=v.n_vocab, hidden_size=v.n_embd, num_hidden_layers=v.n_layer,
              intermediate_size=v.n_ff, num_attention_heads=v.n_head,
              num_key_value_heads=v.n_head_kv, head_dim=v.head_dim,
              global_head_dim=v.head_dim_global, sliding_window=v.sliding_window,
              num_kv_shared_layers=v.n_kv_shared_layers,
              use_double_wide_mlp=v.n_ff_kv_shared == 2 * v.n_ff,
              hidden_size_per_layer_input=v.n_embd_per_layer,
              attention_k_eq_v=v.k_eq_v_global)
    if v.k_eq_v_global:
        kw["num_global_key_value_heads"] = v.n_head_kv_global
    if v.swa_period != 6:              # HF's default pattern is 5 local : 1 global
        kw["layer_types"] = ["full_attention" if v.is_global(i) else "sliding_attention"
                             for i in range(v.n_layer)]
    if v.n_expert:
        kw.update(enable_moe_block=True, num_experts=v.n_expert, top_k_experts=v.n_expert_used,
                  moe_intermediate_size=v.n_ff_exp)
    return c.Gemma4TextConfig(**kw)


@pytest.mark.parametrize("key", list(V))
def test_param_count_equals_transformers_model(key):
    """Our tensor list holds exactly as many parameters as HF's Gemma4TextModel."""
    torch = pytest.importorskip("torch")
    m = pytest.importorskip("transformers.models.gemma4.modeling_gemma4")
    v = V[key]
    cfg = _hf_text_config(v)
    # the layer pattern and KV sharing HF derives agree with ours
    assert [t == "full_attention" for t in cfg.layer_types] == [v.is_global(i) for i in range(v.n_layer)]
    assert [s == "reuse" for s in cfg.kv_sharing_modes] == [v.is_kv_shared(i) for i in range(v.n_layer)]
    with torch.device("meta"):
        model = m.Gemma4TextModel(cfg)
    hf = dict(model.named_parameters())
    assert sum(p.numel() for p in hf.values()) == v.n_params()
    if v.n_embd_per_layer:
        ple = hf["embed_tokens_per_layer.weight"].numel()
        assert v.n_params() - v.n_params_effective() == ple


def test_param_totals_match_published_table():
    """Issue 2's totals: text decoder (+ vision/audio encoders for E2B/E4B) within 3%."""
    for v in V.values():
        total = v.n_params() + v.ref["encoder_params"]
        assert total == pytest.approx(v.ref["ref_params_total"], rel=0.03), v.name
    # "effective" = without the per-layer-embedding table: 2.3B and 4.5B
    assert V["e2b"].n_params_effective() == pytest.approx(2.3e9, rel=0.03)
    assert V["e4b"].n_params_effective() == pytest.approx(4.5e9, rel=0.05)
    # MoE: 3.8B active of 25.2B (8 of 128 experts, with the embeddings)
    assert V["26b-a4b"].n_params_active() == pytest.approx(3.8e9, rel=0.03)
    assert V["31b"].n_params_active() == V["31b"].n_params()


# ---- weights bytes ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(V))
def test_weights_vs_google_memory_table(key):
    """Google's table (ai.google.dev/gemma/docs/core) is "memory to run inference", not file size.

    Its 8-bit column is exactly BF16/2 and Q4_0 exactly BF16/4, and for every variant, even the
    encoder-free 12B whose decoder is all we count, BF16 is 1.12-1.14 x (all parameters x 2 bytes):
    it adds the vision/audio encoders (E2B/E4B) and a ~12% runtime allowance. A Q4_0 file is 4.5
    bits per weight (= 1.125 x 4), so Q4_0 lands within 10%; our 8-bit (Q8_0, 8.5 bits) and BF16
    text-decoder bytes sit below Google's figures by 5-20%, never above.
    """
    v = V[key]
    g = v.ref["google_gb"]
    assert rec.weights_bytes(v, Q["Q4_0"]) / 1e9 == pytest.approx(g["Q4_0"], rel=0.10)
    for ours, theirs in ((Q["Q8_0"], g["SFP8"]), (Q["BF16"], g["BF16"])):
        ratio = theirs / (rec.weights_bytes(v, ours) / 1e9)
        assert 1.0 <= ratio <= 1.25, (v.name, ours.name, ratio)


def test_weights_vs_published_gguf_files():
    """Sizes of GGUF files on the Hub (ggml-org, unsloth) and in issue 2, within 10%."""
    checked = 0
    for v in V.values():
        for qname, size in v.ref.get("published_gguf_bytes", {}).items():
            assert rec.weights_bytes(v, Q[qname]) == pytest.approx(size, rel=0.10), (v.name, qname)
            checked += 1
    assert checked >= 8
    # the two exact byte counts are matched far closer than 10%
    assert rec.weights_bytes(V["e2b"], Q["Q8_0"]) == pytest.approx(4967494592, rel=0.015)
    assert rec.weights_bytes(V["31b"], Q["Q4_0"]) == pytest.approx(17992313088, rel=0.03)


# ---- KV cache --------------------------------------------------------------------------------

def test_kv_bytes_by_hand_e2b():
    """E2B: 35 layers, global every 5th (4, 9, ..., 34); layers 15..34 share KV (none of their own).
    Own KV: layers 0..14 = 12 sliding + 3 global (4, 9, 14). 1 KV head; head_dim 256 / 512; f16.
    The C core's paged cache, blocks of 32 positions, 128 tokens per engine step:
    sliding: 12 layers x (ceil((512 + 127) / 32) + 1 = 21 blocks = 672 cells)
             x (K+V = 2 x 1 x 256 x 2 bytes = 1024)                       =  8,257,536
    global:   3 layers x 4096 cells x (2 x 1 x 512 x 2 bytes = 2048)      = 25,165,824
    """
    v = V["e2b"]
    assert rec.kv_cache_bytes(v, 4096) == 8_257_536 + 25_165_824
    b = rec.kv_cache_breakdown(v, 4096)
    assert (b["sliding"]["layers"], b["global"]["layers"], b["kv_shared_layers"]) == (12, 3, 20)
    assert (b["sliding"]["cells"], b["global"]["cells"]) == (672, 4096)
    # below the window every layer holds the whole context, in whole blocks: 300 -> 320 cells
    assert rec.kv_cache_bytes(v, 300) == 12 * 320 * 1024 + 3 * 320 * 2048
    # q8_0: 34 bytes per 32 values
    assert rec.kv_cache_bytes(v, 4096, "q8_0") == (8_257_536 + 25_165_824) // 64 * 34


def test_kv_bytes_by_hand_31b_k_eq_v():
    """31B: 60 layers, 10 global (K=V projection, 4 KV heads x 512), 50 sliding (16 x 256, window
    1024). K=V shares the weight, not the cache: K is normed and rotated, V only normed, so both
    are stored.
    sliding: 50 x (ceil((1024 + 127) / 32) + 1 = 37 blocks = 1184 cells)
                x (2 x 16 x 256 x 2 = 16384)               =   969,932,800
    global:  10 x 100000 cells x (2 x 4 x 512 x 2 = 8192)  = 8,192,000,000
    """
    assert rec.kv_cache_bytes(V["31b"], 100_000) == 969_932_800 + 8_192_000_000


def test_kv_grows_only_in_global_layers_past_the_window():
    v = V["26b-a4b"]
    a, b = rec.kv_cache_breakdown(v, 2048), rec.kv_cache_breakdown(v, 4096)
    assert a["sliding"]["bytes"] == b["sliding"]["bytes"]
    assert b["global"]["bytes"] == 2 * a["global"]["bytes"]


# ---- bytes per token -------------------------------------------------------------------------

def test_dense_model_reads_all_its_weights_per_token():
    """Dense 31B: every tensor is streamed (the tied embedding as output head), so bytes per
    token at a 1-token context exceed the weights by one embedding row plus a few KV cells."""
    v, q = V["31b"], Q["Q4_0"]
    extra = rec.bytes_per_token(v, q, 1) - rec.weights_bytes(v, q)
    assert 0 < extra < 2_000_000


def test_moe_bytes_per_token_far_below_total():
    """26B-A4B streams 8 of 128 experts: bytes per token ~ the 3.8B/25.2B active share."""
    v, q = V["26b-a4b"], Q["Q4_0"]
    share = rec.bytes_per_token(v, q, 1) / rec.weights_bytes(v, q)
    assert share < 0.25
    assert share == pytest.approx(3.8 / 25.2, rel=0.20)


def test_per_layer_embeddings_are_gathered_not_streamed():
    v, q = V["e2b"], Q["Q4_0"]
    ple = next(t for t in v.tensors() if t.kind == "per_layer_token_embd")
    ple_bytes = ple.n * q.per_layer_token_embd_bits / 8
    assert rec.bytes_per_token(v, q, 1) < rec.weights_bytes(v, q) - ple_bytes + 1_000_000


# ---- fitting and speed on fixed reports --------------------------------------------------------

def test_16gb_machine():
    r = rec.recommend(report(16, read_gbs=60), context=8192)
    assert not r.row("31B", "BF16").fits and r.row("31B", "BF16").placement is None
    e2b = r.row("E2B", "Q4_0")
    assert e2b.fits and e2b.placement == "ram" and e2b.max_context == 131072
    # budget: 16 GiB - max(2 GiB, 1.6 GiB) = 14 GiB
    assert r.targets[-1].budget_bytes == 14 * GIB


def test_ram_headroom_and_cgroup_limit():
    assert rec.recommend(report(64), context=1).targets[-1].budget_bytes == 64 * GIB - int(0.1 * 64 * GIB)
    # a container limited to 8 GiB on a 64 GiB host: 8 - 2 GiB
    assert rec.recommend(report(64, cgroup_gib=8), context=1).targets[-1].budget_bytes == 6 * GIB


def test_max_context_monotone_in_memory():
    prev = {}
    for ram in (8, 12, 16, 20, 24, 32, 48, 64, 128):
        r = rec.recommend(report(ram, read_gbs=50), context=8192)
        for row in r.rows:
            k = (row.variant, row.quant)
            assert row.max_context >= prev.get(k, 0), (k, ram)
            assert row.max_context <= rec.get_variant(row.variant).context_length
            prev[k] = row.max_context
    assert prev[("31B", "Q4_0")] == 262144
    # on 24 GiB 31B Q4_0 fits, but not its full 256K context (22 GB of KV at 256K)
    mid = rec.recommend(report(24, read_gbs=50), context=8192).row("31B", "Q4_0")
    assert 8192 < mid.max_context < 262144
    assert rec.weights_bytes(V["31b"], Q["Q4_0"]) + rec.kv_cache_bytes(V["31b"], mid.max_context) \
        <= int(24 * GIB * 0.9) < rec.weights_bytes(V["31b"], Q["Q4_0"]) \
        + rec.kv_cache_bytes(V["31b"], mid.max_context + 1)


def test_predicted_tps_scales_linearly_with_bandwidth():
    a = rec.recommend(report(64, read_gbs=20), context=4096)
    b = rec.recommend(report(64, read_gbs=80), context=4096)
    for ra, rb in zip(a.rows, b.rows):
        assert rb.predicted_decode_tps == pytest.approx(4 * ra.predicted_decode_tps, rel=1e-9)
    # the roofline itself: 80 GB/s x efficiency / bytes per token; a CPU vendor with no
    # measurement of our core takes the catalog's fallback, the lowest measured fraction
    row = b.row("E4B", "Q8_0")
    fallback = rec.load_catalog().efficiency["ram"]
    assert fallback == min(m["fraction"] for m in rec.load_catalog().efficiency["ram_measured"])
    assert row.predicted_decode_tps == pytest.approx(80e9 * fallback / row.bytes_per_token)


def test_unmeasured_bandwidth_gives_no_speed():
    r = rec.recommend(report(64), context=4096)
    assert all(row.predicted_decode_tps is None for row in r.rows)
    assert any("not measured" in n for n in r.notes)
    assert r.best is None                              # no guess: the largest row may be slow
    assert "* best: none chosen: no speed is known" in r.to_text()


def test_best_is_largest_fitting_with_usable_speed():
    r = rec.recommend(report(24, read_gbs=50), context=8192)
    b = r.best
    assert b.fits and b.best and b.predicted_decode_tps >= rec.USABLE_TPS
    rank = {v.name: v.rank for v in V.values()}
    for row in r.rows:
        if row.fits and row.predicted_decode_tps >= rec.USABLE_TPS:
            assert rank[row.variant] <= rank[b.variant]
    assert sum(row.best for row in r.rows) == 1


def test_context_beyond_training_is_capped():
    r = rec.recommend(report(512, read_gbs=50), context=1_000_000)
    row = r.row("E2B", "Q4_0")
    assert row.context == 131072 and "capped" in row.note
    with pytest.raises(ValueError):
        rec.recommend(report(16), context=0)


def test_gpu_placement_with_known_and_unknown_bandwidth():
    r4090 = gpu("NVIDIA GeForce RTX 4090", 24 * GIB)
    other = gpu("Mystery Accelerator 9000", 48 * GIB)
    r = rec.recommend(report(64, read_gbs=50, gpus=[other, r4090]), context=8192)
    # the GPU with a known bandwidth is tried first
    row = r.row("E4B", "Q8_0")
    assert row.placement == "gpu:NVIDIA GeForce RTX 4090"
    assert row.predicted_decode_tps == pytest.approx(1008e9 * 0.75 / row.bytes_per_token)
    # 31B Q8_0 (32.6 GB) does not fit 24 GiB but does fit the 48 GiB card: no speed there
    big = r.row("31B", "Q8_0")
    assert big.placement == "gpu:Mystery Accelerator 9000" and big.predicted_decode_tps is None


def test_ple_table_stays_in_host_ram_on_gpu():
    """E4B BF16 is 14.9 GB, but its 5.6 GB per-layer-embedding table stays in host RAM, so the
    GPU part fits a 12 GiB card; with 8 GiB of host RAM (6 GiB budget) it no longer does."""
    g = gpu("NVIDIA Tesla K40m", 12 * GIB)
    v, q = V["e4b"], Q["BF16"]
    assert rec.weights_bytes(v, q) > 12 * GIB > rec.gpu_resident_bytes(v, q) + GIB
    assert rec.recommend(report(64, gpus=[g]), context=4096).row("E4B", "BF16").placement.startswith("gpu:")
    small_host = rec.recommend(report(8, gpus=[g]), context=4096).row("E4B", "BF16")
    assert not small_host.placement or not small_host.placement.startswith("gpu:")


def test_gpu_placement_on_32em64t_topology(hwloc_xml):
    """SOURCES.md: one Tesla K40m (CUDA, 11796032 KiB) and a Radeon R9 200 (OpenCL, 3087360 KiB);
    bandwidth is not measured for an XML, but the K40's 288 GB/s is in data/machines.toml."""
    hw = detect(bandwidth=False, topology_xml=hwloc_xml / "32em64t-2n8c2t-pci-wholeio.xml")
    r = rec.recommend(hw, context=8192)
    k40 = next(t for t in r.targets if "K40m" in t.placement)
    assert k40.memory_bytes == 11796032 * 1024
    assert k40.budget_bytes == 11796032 * 1024 - GIB
    for name in ("E2B", "E4B"):
        for q in ("Q4_0", "Q4_K_M", "Q8_0"):
            row = r.row(name, q)
            assert row.placement == "gpu:Tesla K40m", (name, q)
            assert row.predicted_decode_tps == pytest.approx(288e9 * 0.75 / row.bytes_per_token)
    # too big for the K40m: system RAM, speed unknown (not measured)
    row = r.row("31B", "Q8_0")
    assert row.placement == "ram" and row.predicted_decode_tps is None
    assert r.best.placement == "gpu:Tesla K40m"


def test_dgx2_identical_gpus_are_one_target(hwloc_xml):
    hw = detect(bandwidth=False, topology_xml=hwloc_xml / "nvidiaDGX2.xml")
    r = rec.recommend(hw, context=8192)
    gpus = [t for t in r.targets if t.kind == "gpu"]
    assert len(gpus) == 1 and "16 such GPUs" in gpus[0].budget_rule
    assert r.row("26B-A4B", "Q4_0").placement == gpus[0].placement


def test_this_machine_ram_budget_from_proc_meminfo():
    kib = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
               if l.startswith("MemTotal:"))
    hw = detect(bandwidth=False)
    r = rec.recommend(hw, context=8192)
    total = kib * 1024
    if hw.memory.cgroup_limit_bytes:
        total = min(total, hw.memory.cgroup_limit_bytes)
    ram = r.targets[-1]
    assert ram.placement == "ram"
    assert ram.budget_bytes == total - max(2 * GIB, int(0.1 * total))


# ---- what-if machines ------------------------------------------------------------------------

def test_machine_catalog_lists_the_machines_people_consider():
    ms = {m["key"]: m for m in rec.machines()}
    for key in ("mac-mini-m4-16gb", "mac-mini-m4-24gb", "mac-mini-m4-pro-24gb",
                "mac-mini-m4-pro-48gb", "mac-studio-m4-max-36gb", "mac-studio-m4-max-128gb",
                "mac-studio-m3-ultra-96gb", "mac-studio-m3-ultra-512gb", "rtx-4090", "rtx-5090",
                "nvidia-l4", "h100-sxm", "h100-pcie", "h200"):
        assert key in ms and ms[key]["source"].strip(), key
    assert ms["mac-mini-m4-16gb"]["bandwidth_gbs"] == 120
    assert ms["mac-mini-m4-pro-24gb"]["bandwidth_gbs"] == 273
    assert ms["mac-studio-m4-max-128gb"]["bandwidth_gbs"] == 546
    assert ms["mac-studio-m3-ultra-96gb"]["bandwidth_gbs"] == 819
    assert (ms["rtx-4090"]["bandwidth_gbs"], ms["rtx-5090"]["bandwidth_gbs"]) == (1008, 1792)
    assert ms["nvidia-l4"]["bandwidth_gbs"] == 300
    assert (ms["h100-sxm"]["bandwidth_gbs"], ms["h100-pcie"]["bandwidth_gbs"]) == (3350, 2000)
    assert ms["h200"]["bandwidth_gbs"] == 4800
    with pytest.raises(ValueError):
        rec.recommend(machine="cray-1")


def test_mac_mini_16gb_uses_metal_working_set():
    """Budget = 75% of 16 GiB = 12.0 GiB (12.9 GB). 26B-A4B Q4_0 (14.4 GB) would fit in the
    whole 16 GiB but not in the working set; 12B Q8_0 fits only a short context."""
    r = rec.recommend(machine="mac-mini-m4-16gb", context=8192)
    (t,) = r.targets
    assert t.placement == "unified" and t.budget_bytes == int(0.75 * 16 * GIB)
    moe = r.row("26B-A4B", "Q4_0")
    assert rec.weights_bytes(V["26b-a4b"], Q["Q4_0"]) < 16 * GIB and not moe.fits
    row = r.row("12B", "Q8_0")
    assert not row.fits and 0 < row.max_context < 8192
    e2b = r.row("E2B", "Q4_0")
    assert e2b.placement == "unified"
    assert e2b.predicted_decode_tps == pytest.approx(120e9 * 0.75 / e2b.bytes_per_token)
    assert r.best is not None and r.best.fits


def test_bigger_machines_fit_more():
    def fitting(m):
        return {(r.variant, r.quant) for r in rec.recommend(machine=m).rows if r.fits}
    assert fitting("mac-mini-m4-16gb") < fitting("mac-mini-m4-24gb") < fitting("mac-studio-m3-ultra-96gb")
    assert ("31B", "BF16") in fitting("h100-sxm") and ("31B", "BF16") not in fitting("rtx-5090")


# ---- output forms ----------------------------------------------------------------------------

def test_dict_text_and_html_forms():
    r = rec.recommend(report(32, read_gbs=40), context=8192)
    d = json.loads(json.dumps(r.to_dict()))
    assert len(d["rows"]) == len(V) * len(Q) and d["best"]["best"] is True
    assert d["assumptions"]["efficiency"]["ram"] == rec.load_catalog().efficiency["ram"]
    text = r.to_text()
    assert "* best:" in text and "26B-A4B" in text
    h = r._repr_html_()
    assert h.count("<tr") == 1 + len(r.rows) and "font-weight:bold" in h


def test_package_level_recommend_is_callable_after_module_import():
    import gemma4stack as g4
    assert g4.recommend(machine="rtx-4090").best is not None


def _cli(*args):
    p = subprocess.run([sys.executable, "-m", "gemma4stack", "recommend", *args],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_cli_json_has_documented_keys(hwloc_xml):
    keys = {"variant", "quant", "fits", "placement", "weights_bytes", "kv_bytes", "max_context",
            "predicted_decode_tps"}
    rows = json.loads(_cli("--json", "--no-bandwidth", "--context", "4096"))
    assert len(rows) == len(V) * len(Q)
    for row in rows:
        assert keys <= set(row)
        assert isinstance(row["fits"], bool) and row["predicted_decode_tps"] is None
        assert row["kv_bytes"] == rec.kv_cache_bytes(rec.get_variant(row["variant"]), 4096)
    rows = json.loads(_cli("--json", "--topology-xml",
                           str(hwloc_xml / "32em64t-2n8c2t-pci-wholeio.xml")))
    assert {r["placement"] for r in rows if r["variant"] == "E2B"} == {"gpu:Tesla K40m"}
    rows = json.loads(_cli("--json", "--machine", "mac-mini-m4-16gb"))
    assert all(r["placement"] in ("unified", None) for r in rows)
    assert "mac-mini-m4-16gb" in _cli("--list-machines")


def test_custom_machine_dict():
    """A 32 GiB unified-memory machine of your own: budget 24 GiB, so 31B Q4_0 (17.6 GB) fits."""
    r = rec.recommend(machine={"kind": "unified", "memory_gib": 32, "bandwidth_gbs": 120})
    assert r.targets[0].budget_bytes == 24 * GIB and r.row("31B", "Q4_0").fits
    g = rec.recommend(machine={"kind": "gpu", "host_ram_gib": 32,
                               "gpu": {"name": "My GPU", "memory_gib": 16, "bandwidth_gbs": 448}})
    row = g.row("E4B", "Q4_0")
    assert row.placement == "gpu:My GPU"
    assert row.predicted_decode_tps == pytest.approx(448e9 * 0.75 / row.bytes_per_token)
    with pytest.raises(ValueError):
        rec.recommend(machine={"kind": "abacus"})


# ---- measured efficiency of our core, engines, gateway config -------------------------------

def _with_vendor(r: HardwareReport, vendor: str) -> HardwareReport:
    r.cpu.vendor = vendor
    return r


def test_ram_speed_uses_our_measured_efficiency_for_the_cpu_kind():
    """benchmarks/RESULTS.md: our core's tg128 reached 69.9% (Q4_0) / 63.8% (Q4_K_M) / 84.4%
    (Q8_0) of the measured read bandwidth on Zen 4, 83.4% / 71.2% / 92.5% on the Intel Xeon."""
    for vendor, want in (("AuthenticAMD", {"Q4_0": 0.699, "Q4_K_M": 0.638, "Q8_0": 0.844}),
                         ("GenuineIntel", {"Q4_0": 0.834, "Q4_K_M": 0.712, "Q8_0": 0.925})):
        r = rec.recommend(_with_vendor(report(64, read_gbs=50), vendor), context=4096)
        for q, f in want.items():
            row = r.row("E2B", q)
            assert row.predicted_decode_tps == pytest.approx(50e9 * f / row.bytes_per_token)
        bf16 = r.row("E2B", "BF16")            # not measured: the kind's lowest figure
        assert bf16.predicted_decode_tps == pytest.approx(50e9 * min(want.values()) / bf16.bytes_per_token)
        ram = next(t for t in r.targets if t.placement == "ram")
        assert "benchmarks/RESULTS.md" in ram.efficiency_source
    # the caller's figure wins over the measurement
    r = rec.recommend(_with_vendor(report(64, read_gbs=50), "AuthenticAMD"), context=4096,
                      efficiency={"ram": 0.5})
    row = r.row("E2B", "Q4_0")
    assert row.predicted_decode_tps == pytest.approx(50e9 * 0.5 / row.bytes_per_token)


def test_every_fitting_row_names_its_engine():
    cpu = rec.recommend(report(32, read_gbs=40), context=8192)
    for r in cpu.rows:
        assert (r.engine == "gemma4stack") == r.fits
        if r.fits:
            assert r.engine_command.startswith("gemma4stack serve --model ")
            assert r.gateway_tier["backend"] == "local"
    g = rec.recommend(report(64, read_gbs=40, gpus=[gpu("NVIDIA GeForce RTX 4090", 24 * GIB)]),
                      context=8192)
    e4b = g.row("E4B", "Q4_K_M")
    assert e4b.placement == "gpu:NVIDIA GeForce RTX 4090" and e4b.engine == "llama.cpp"
    from gemma4stack.pull import resolve
    src = resolve("gemma4:e4b:q4_k_m")          # the same file `gemma4stack pull` fetches
    assert f"-hf {src.repo} -hff {src.file} -ngl 99 -c 8192" in e4b.engine_command
    assert e4b.gateway_tier == {"backend": "openai", "url": "http://127.0.0.1:8081/v1",
                                "model": "gemma-4-e4b-q4_k_m", "id": "gemma-4-e4b-q4_k_m"}
    assert "ollama" in {a["engine"] for a in e4b.alternatives}
    assert "vllm" not in {a["engine"] for a in e4b.alternatives}     # vLLM: original checkpoint only
    bf16 = g.row("E2B", "BF16")
    assert any(a["engine"] == "vllm" and a["command"].startswith("vllm serve google/gemma-4-e2b-it ")
               for a in bf16.alternatives)
    mac = rec.recommend(machine="mac-mini-m4-pro-24gb", context=8192)
    r = mac.row("E4B", "Q4_K_M")
    assert r.placement == "unified" and r.engine == "llama.cpp"
    mlx = next(a for a in r.alternatives if a["engine"] == "mlx-lm")
    assert "mlx_lm.convert --hf-path google/gemma-4-e4b-it -q --q-bits 4" in mlx["command"]


def test_unified_gpu_from_sysctl_is_a_unified_target():
    m4 = GPUInfo(name="Apple M4 Pro", vendor="Apple", backend="Metal", memory_bytes=24 * GIB,
                 memory_source="driver", pci_busid=None, unified=True)
    r = rec.recommend(report(24, read_gbs=100, gpus=[m4]), context=8192)
    t = next(t for t in r.targets if t.placement == "unified")
    assert t.budget_bytes == int(0.75 * 24 * GIB) and t.bandwidth_gbs == 273
    assert r.row("E4B", "Q4_K_M").placement == "unified"


def test_emit_config_loads_with_the_gateway_loader(tmp_path):
    from gemma4stack.gateway.config import load_config
    from gemma4stack._shared import default_model
    model = default_model()
    r = rec.recommend(report(64, read_gbs=40, gpus=[gpu("NVIDIA GeForce RTX 4090", 24 * GIB)]),
                      context=8192)
    cfg = rec.gateway_config(r, model_path=str(model))
    path = tmp_path / "gateway.toml"
    path.write_text(rec.gateway_toml(cfg, header="test"))
    loaded = load_config(path)
    assert set(loaded.tiers) == set(cfg["tiers"]) and len(loaded.tiers) == 2
    gpu_tier = loaded.tiers[loaded.routing.order[0]]   # the bigger tier first
    local = [t for t in loaded.tiers.values() if t.is_local]
    assert len(local) == 1 and local[0].model == str(model.resolve())
    remote = [t for t in loaded.tiers.values() if not t.is_local]
    assert remote and remote[0].url == "http://127.0.0.1:8081/v1"
    assert gpu_tier in local + remote
    assert "# start the engine first: llama-server " in path.read_text()
    # a CPU-only machine without the file: a clear error naming the pull command
    with pytest.raises(ValueError, match="gemma4stack pull"):
        rec.gateway_config(rec.recommend(report(32, read_gbs=40), context=8192))


def test_emit_config_cli(tmp_path):
    from gemma4stack.cli import main
    from gemma4stack.gateway.config import load_config
    out = tmp_path / "g.toml"
    assert main(["recommend", "--machine", "rtx-4090", "--emit-config", str(out)]) == 0
    cfg = load_config(out)
    assert [t.backend for t in cfg.tiers.values()] == ["openai"]
    assert cfg.routing.default in cfg.tiers


def test_speculative_prediction():
    """Leviathan et al. 2023 eq. 1 and the measured verification cost (RESULTS.md)."""
    import pytest as _pytest

    from gemma4stack import recommend as R
    assert R.expected_tokens_per_step(0.0, 4) == 1.0
    assert R.expected_tokens_per_step(1.0, 4) == 5.0
    a = 0.6
    assert R.expected_tokens_per_step(a, 4) == _pytest.approx(sum(a ** i for i in range(5)))
    # k=4 at the measured 2.46x: break-even needs 2.46 tokens per step
    assert R.speculative_speedup(0.49) == _pytest.approx((1 - 0.49 ** 5) / 0.51 / 2.46)
    assert R.speculative_speedup(1.0, k=4, verify_cost=2.46) == _pytest.approx(5 / 2.46)
    assert R.speculative_speedup(0.7, draft_cost=0.25) == _pytest.approx(
        R.expected_tokens_per_step(0.7, 4) / (2.46 + 1.0))
    with _pytest.raises(ValueError):
        R.speculative_speedup(0.5, k=3)
    with _pytest.raises(ValueError):
        R.expected_tokens_per_step(1.5, 4)
    r = R.recommend(machine="mac-mini-m4-16gb")
    row = r.row("E4B", "Q4_0")
    small = min(R.variants(), key=lambda v: v.rank).name
    assert row.draft_variant == small and r.row(small, "Q4_0").draft_variant is None
    assert row.predicted_tps_ngram == _pytest.approx(row.predicted_decode_tps * R.speculative_speedup(0.49))
    c = R.bytes_per_token(R.get_variant(small), R.get_quant("Q4_0"), row.context) / row.bytes_per_token
    assert row.predicted_tps_draft == _pytest.approx(
        row.predicted_decode_tps * R.speculative_speedup(0.7, draft_cost=c))
    assert "speculative decoding (k=4)" in r.to_text()
    assert r.to_dict()["assumptions"]["speculative"]["verify_cost"][4] == 2.46
