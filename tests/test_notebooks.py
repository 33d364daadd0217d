"""The notebooks run top to bottom on the installed package, Google's Gemma 3 270M (their
default model, from gemma4stack.testmodels; the gemma3_270m_path fixture fetches it first so the
budget does not include the one-time download) and the shared test models, and are committed
without outputs.

Each is executed with nbclient in a python3 (ipykernel) kernel with a 2-minute budget per
notebook; any cell error fails the test with the cell's traceback. Plots use the kernel's
default matplotlib-inline backend, which renders with Agg into PNG outputs (no display
needed); MPLBACKEND is cleared so a plain "Agg" from the environment cannot hide them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
GUIDED = NB_DIR / "gemma4_local_inference.ipynb"
BENCH = NB_DIR / "benchmarks.ipynb"
BUDGET_S = 120


@pytest.mark.parametrize("path", [GUIDED, BENCH], ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def test_guided_notebook_answers_run_speed_cost_first():
    """The first three cells are detect -> recommend (+chart) -> cost."""
    nb = nbformat.read(GUIDED, as_version=4)
    first = [c.source for c in nb.cells[:3]]
    assert all(c.cell_type == "code" for c in nb.cells[:3])
    assert "g4.detect()" in first[0]
    assert "g4.recommend(" in first[1] and "plt." in first[1]
    assert "g4.cost(" in first[2]
    # every later code cell is introduced by a markdown cell
    for prev, cell in zip(nb.cells[3:], nb.cells[4:]):
        if cell.cell_type == "code" and prev.cell_type == "code":
            assert "gw.stop()" in cell.source       # the only code-after-code: stopping the gateway


def _execute(path: Path, tmp_path: Path, monkeypatch, bench_models: str | None = None
             ) -> tuple[object, float]:
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("GEMMA4STACK_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("GEMMA4STACK_MODEL", raising=False)
    if bench_models is None:
        monkeypatch.delenv("GEMMA4STACK_BENCH_MODELS", raising=False)
    else:
        monkeypatch.setenv("GEMMA4STACK_BENCH_MODELS", bench_models)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.monotonic()
    client.execute()
    return nb, time.monotonic() - t0


def _outputs(nb, i):
    return nb.cells[i].outputs


def _text(outputs) -> str:
    out = []
    for o in outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif "data" in o:
            out.append(o.data.get("text/plain", ""))
            out.append(o.data.get("text/html", ""))
    return "\n".join(out)


def test_guided_notebook_runs(tmp_path, monkeypatch, gemma3_270m_path):
    nb, seconds = _execute(GUIDED, tmp_path, monkeypatch)
    assert seconds < BUDGET_S
    # cell 2 drew the recommend chart, cell 3 shows the cost table
    assert any("image/png" in o.get("data", {}) for o in _outputs(nb, 1))
    assert "per 1M generated tokens" in _text(_outputs(nb, 2))
    text = {i: _text(c.outputs) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    model_cell = next(t for i, t in text.items() if "demo_model()" in nb.cells[i].source)
    assert gemma3_270m_path.name in model_cell and "gemma3" in model_cell   # read_gguf's repr
    gen = next(t for i, t in text.items() if "model.generate" in nb.cells[i].source)
    assert gen.startswith("The lighthouse keeper had not seen a ship in forty years. One stormy night,")
    assert len(gen.split("night,", 1)[1].strip()) > 20     # the streamed story
    bench = next(i for i in text if "g4.bench(" in nb.cells[i].source)
    assert "tg32" in text[bench] and any("image/png" in o.get("data", {})
                                         for o in nb.cells[bench].outputs)
    gw = next(t for i, t in text.items() if "launch(model=MODEL)" in nb.cells[i].source)
    assert "tier" in gw                                  # the _routing dict was shown
    assert text[max(text)].strip().endswith("False")    # gw.running after gw.stop()


def test_benchmarks_notebook_runs_and_saves_results(tmp_path, monkeypatch, gemma3_270m_path):
    nb, seconds = _execute(BENCH, tmp_path, monkeypatch)
    assert seconds < BUDGET_S
    res = tmp_path / "results"
    assert {"hardware.json", "bench.json", "bench.csv", "roofline.png"} <= {p.name for p in res.iterdir()}
    rows = json.loads((res / "bench.json").read_text())
    assert {(r["n_prompt"], r["n_gen"]) for r in rows} == {(64, 0), (0, 32)}
    assert len(rows) == 4 and all("avg_ts" in r and "roofline_efficiency" in r for r in rows)
    assert {Path(r["model_filename"]).name for r in rows} == {gemma3_270m_path.name,
                                                              "TinyStories-656K-Q8_0.gguf"}
    g3 = next(r for r in rows if r["n_gen"] and Path(r["model_filename"]) == gemma3_270m_path)
    assert g3["model_type"].startswith("gemma3") and g3["model_size"] > 200e6
    hw = json.loads((res / "hardware.json").read_text())
    assert hw["bandwidth_gbs"]["read"] > 0
    csv_lines = (res / "bench.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("build_commit,") and len(csv_lines) == 5
    text = "\n".join(_text(c.outputs) for c in nb.cells if c.cell_type == "code")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert "skipping the llama.cpp comparison" in text


FAKE_LLAMA_CPP = '''
"""Stand-in for llama-cpp-python's high-level API (Llama(model_path, n_ctx, n_batch,
n_threads, verbose), n_vocab(), reset(), eval(tokens)) that takes a known time per token."""
import time

class Llama:
    def __init__(self, model_path, n_ctx=512, n_batch=512, n_threads=None, verbose=True):
        self.model_path, self.n_ctx, self.n_batch, self.n_threads = model_path, n_ctx, n_batch, n_threads
        self.n_tokens = 0
    def n_vocab(self):
        return 32
    def reset(self):
        self.n_tokens = 0
    def eval(self, tokens):
        assert all(0 <= t < 32 for t in tokens) and self.n_tokens + len(tokens) <= self.n_ctx
        self.n_tokens += len(tokens)
        time.sleep(0.0005 * len(tokens))        # 2000 tokens/s at most
'''


def test_benchmarks_notebook_compares_with_llama_cpp_when_importable(tmp_path, monkeypatch, models):
    """The llama.cpp cell's code path, with a fake llama_cpp module on the kernel's path; on the
    two tiny shared models named by $GEMMA4STACK_BENCH_MODELS (the default models ran above)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "llama_cpp.py").write_text(FAKE_LLAMA_CPP)
    monkeypatch.setenv("PYTHONPATH", str(fake) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    names = ["TinyStories-656K-Q8_0.gguf", "stories260K.gguf"]
    nb, _ = _execute(BENCH, tmp_path, monkeypatch,
                     bench_models=os.pathsep.join(str(models / n) for n in names))
    rows = json.loads((tmp_path / "results" / "llamacpp_comparison.json").read_text())
    assert [r["model"] for r in rows] == names
    ours = {r["model_filename"].rsplit("/", 1)[1] + str(r["n_gen"]): r
            for r in json.loads((tmp_path / "results" / "bench.json").read_text())}
    for r in rows:
        assert r["pp_llamacpp"] <= 2000 and r["tg_llamacpp"] <= 2000     # the fake's ceiling
        assert r["tg_ratio"] == pytest.approx(r["tg_ours"] / r["tg_llamacpp"])
        assert r["tg_ours"] == pytest.approx(ours[r["model"] + "32"]["avg_ts"])
        assert r["threads"] == ours[r["model"] + "32"]["n_threads"]
