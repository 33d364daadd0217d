"""The stumbling blocks a first-time user hit following README.md (issue 18), one test each.

The README's examples themselves run in test_readme.py; these check the behaviour behind them
where an example alone would not fail: import order, stop markers, a network that is not there,
a terminal's newline, temporary files left behind, the shared data found from elsewhere, and
cost()'s messages.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from gateway_fakes import FakeModel

REPO = Path(__file__).resolve().parent.parent
HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def _py(code: str, cwd: Path = REPO, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(REPO), **env)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=e, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


# 2. gemma4stack.recommend.machines() after g4.recommend(...) (a fresh interpreter: the bug
#    depended on which of the two was touched first)
def test_recommend_machines_reachable_in_either_order():
    with open(REPO / "gemma4stack" / "data" / "machines.toml", "rb") as f:
        n = len(tomllib.load(f)["machine"])
    for first in ("g4.recommend(machine='rtx-4090')", "import gemma4stack.recommend"):
        p = _py(f"import gemma4stack as g4; {first}; import gemma4stack; "
                "print(len(gemma4stack.recommend.machines()), len(g4.recommend.machines()), "
                "type(g4.recommend(machine='rtx-4090')).__name__)")
        assert p.stdout.split() == [str(n), str(n), "Recommendation"]


def test_package_functions_callable_after_their_module_is_imported():
    """`from gemma4stack.cost import load_prices` (or any import of the module) used to turn
    g4.cost into the module, so g4.cost(...) raised TypeError."""
    p = _py("import gemma4stack.cost, gemma4stack.pull, gemma4stack.bench, gemma4stack.recommend\n"
            "import gemma4stack as g4\n"
            "print(type(g4.cost(tokens_per_s=10.0)).__name__, "
            "type(g4.recommend(machine='rtx-4090')).__name__, "
            "callable(g4.pull), callable(g4.bench), g4.cost.load_prices is not None)")
    assert p.stdout.split() == ["CostReport", "Recommendation", "True", "True", "True"]


# 4. a plain transcript ends where the model starts the next turn; raw and completions do not
def _local(chat_template: str):
    from gemma4stack.gateway.backends import LocalBackend
    from gemma4stack.gateway.config import TierConfig
    model = FakeModel()
    return LocalBackend(TierConfig(name="t", backend="local", model="m.gguf",
                                   chat_template=chat_template), model), model


def _run(backend, **req):
    from gemma4stack.gateway.backends import GenRequest

    async def go():
        out = [x async for x in backend.stream(GenRequest(**req))]
        await backend.aclose()
        return out
    return asyncio.run(go())


def test_plain_transcript_stops_at_the_next_turn():
    b, m = _local("auto")                       # FakeModel has no chat template -> plain
    _run(b, kind="chat", messages=HI, stop=["THE END"])
    call = m.calls[-1]
    assert call["prompt"] == "System: Be brief.\nUser: Hi\nAssistant:"
    assert call["stop"][0] == "THE END"         # the client's own stop first, kept
    assert {"\nUser:", "\nSystem:", "\nAssistant:"} <= set(call["stop"])
    b, m = _local("raw")
    _run(b, kind="chat", messages=HI)
    assert m.calls[-1]["prompt"] == "Be brief.\nHi" and m.calls[-1]["stop"] is None
    b, m = _local("plain")
    _run(b, kind="completion", prompt="User: x\nAssistant:")
    assert m.calls[-1]["stop"] is None          # a completion prompt is the caller's text


def test_model_stop_cuts_an_invented_turn(models):
    """The real Model cuts its text at such a marker (here one TinyStories writes itself)."""
    from gemma4stack.model import Model
    with Model(str(models / "TinyStories-656K-Q8_0.gguf")) as m:
        full = m.generate("Once upon a time", max_tokens=60, temperature=0)
        marker = full[20:26]
        cut = m.generate("Once upon a time", max_tokens=60, temperature=0, stop=[marker])
    assert marker and cut == full[:full.index(marker)] and m.last_stats.finish_reason == "stop"


def test_serve_chat_template_option(models):
    from gemma4stack.cli import build_parser
    from gemma4stack.gateway.cli import config_from_args
    from gemma4stack.gateway.config import ConfigError
    gguf = str(models / "TinyStories-656K-Q8_0.gguf")
    args = build_parser().parse_args(["serve", "--model", gguf, "--chat-template", "raw"])
    assert config_from_args(args).tiers["primary"].chat_template == "raw"
    args = build_parser().parse_args(["serve", "--model", gguf])
    assert config_from_args(args).tiers["primary"].chat_template == "auto"
    args = build_parser().parse_args(["serve", "--config", "x.toml", "--chat-template", "raw"])
    with pytest.raises(ConfigError, match="--chat-template goes with --model"):
        config_from_args(args)


# 5. no network: an answer at once that names --offline / HF_HUB_OFFLINE
def test_pull_without_dns_fails_fast_and_names_offline(tmp_path, monkeypatch):
    P = importlib.import_module("gemma4stack.pull")
    for k in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
              "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    t0 = time.monotonic()
    with pytest.raises(P.OfflineError) as ei:            # .invalid never resolves (RFC 2606)
        P.pull("gemma4:e2b", endpoint="http://hub.invalid", cache_dir=tmp_path, progress=False)
    assert time.monotonic() - t0 < 5
    assert "--offline" in str(ei.value) and "HF_HUB_OFFLINE=1" in str(ei.value)


# 7. the continuation ends with a newline, so stderr's figures start on a line of their own
def test_run_ends_its_text_with_a_newline(models):
    p = subprocess.run([sys.executable, "-m", "gemma4stack", "run", "--model",
                        str(models / "stories260K.gguf"), "--prompt", "Once upon a time",
                        "--max-tokens", "8", "--temperature", "0"], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("\n") and p.stdout.count("\n") == 1 and len(p.stdout) > 8


# 8. Gateway.stop() leaves no temporary directory; its log stays readable
def test_gateway_stop_removes_its_directory(models):
    from gemma4stack.gateway import launch
    gw = launch(model=str(models / "TinyStories-656K-Q8_0.gguf"))
    workdir = gw.log_path.parent
    assert workdir.is_dir()
    assert gw.stop() is not None and not gw.running
    assert not workdir.exists()
    assert "gateway on http://127.0.0.1:" in gw.logs() and gw.logs(tail=1)
    gw.stop()                                            # twice is harmless


# 8. the benchmark notebook's default results/ folder is ignored by git
def test_notebook_results_are_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    p = subprocess.run(["git", "check-ignore", "-q", "notebooks/results/20260101-000000/bench.json"],
                       cwd=REPO)
    assert p.returncode == 0


# 8. detect(topology_xml="../shared/...") from any directory, following GEMMA4STACK_SHARED
def test_topology_xml_found_in_the_shared_data_from_elsewhere(tmp_path, shared):
    name = "32em64t-2n8c2t-pci-wholeio.xml"              # 2 NUMA nodes x 8 cores x 2 threads
    moved = tmp_path / "elsewhere"
    (moved / "hwloc-xml").mkdir(parents=True)
    shutil.copy(shared / "hwloc-xml" / name, moved / "hwloc-xml" / name)
    run = tmp_path / "cwd"
    run.mkdir()
    code = ("import gemma4stack as g4; "
            f"print(g4.detect(topology_xml='../shared/hwloc-xml/{name}').cpu.cores, "
            f"g4.detect(topology_xml='hwloc-xml/{name}').source)")
    p = _py(code, cwd=run, GEMMA4STACK_SHARED=str(moved))
    cores, source = p.stdout.split()
    assert cores == "16" and source == str(moved / "hwloc-xml" / name)
    bad = subprocess.run([sys.executable, "-c", "import gemma4stack as g4; "
                          "g4.detect(topology_xml='../shared/hwloc-xml/missing.xml')"],
                         cwd=run, env=dict(os.environ, PYTHONPATH=str(REPO),
                                           GEMMA4STACK_SHARED=str(moved)),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "FileNotFoundError" in bad.stderr and "missing.xml" in bad.stderr


# 9. cost(): an unmodelled quant is named as such; the printed table explains * and the power
def test_cost_unmodelled_quant_and_printed_assumptions():
    import gemma4stack as g4
    with pytest.raises(ValueError, match=r"quant 'q5_k_m' is not modelled.*Q4_K_M.*tokens_per_s="):
        g4.cost(machine="mac-mini-m4-24gb", variant="e4b", quant="q5_k_m")
    with pytest.raises(ValueError, match=r"variant 'e3b' is not modelled"):
        g4.cost(variant="e3b", tokens_per_s=None, machine="rtx-4090")
    with pytest.raises(ValueError, match="nothing that matches fits in memory"):
        g4.cost(machine="mac-mini-m4-16gb", variant="31b", quant="bf16")
    text = str(g4.cost(machine="mac-mini-m4-24gb", variant="e4b", quant="q4_k_m"))
    assert "* = illustrative price" in text               # the table's * marks are explained
    assert "assumed: 120 W at the wall" in text
    assert "power_watts was not given for mac-mini-m4-24gb" in text
    text = str(g4.cost(machine="mac-mini-m4-24gb", variant="e4b", quant="q4_k_m",
                       power_watts=40))
    assert "assumed: 40 W" in text and "was not given" not in text
