"""Continuous batching (csrc/engine/): batched decode equals decoding alone, requests join and
leave at any step, cancellation, queue overflow, KV pool exhaustion, many clients at once,
prefix sharing, and no leaked KV blocks after any of it.

The llama models of ../shared/models; Gemma 3 and Gemma 4 toys have the same equality test in
test_gemma3.py / test_gemma4.py (their fixtures build the models).
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from batch_check import check_batch_matches_alone
from gemma4stack import Model
from gemma4stack.model import QueueFullError

PROMPTS = ["Once upon a time", "The little dog ran to the park and", "Lily had a red ball.",
           "One day, a big bear", "Tom and Sue went to the shop to buy some milk and",
           "The sun was hot", "There was a tiny bird who wanted to fly high in the sky, so",
           "Mom said"]


@pytest.fixture(scope="module")
def tiny_path(models):
    return models / "TinyStories-656K-Q8_0.gguf"


def _idle(m: Model) -> None:
    """Nothing left behind: no request, every block free (cached prefixes may stay keyed)."""
    for _ in range(200):                  # a cancel is applied by the scheduler thread
        st = m.stats()
        if st.running == 0 and st.waiting == 0:
            break
        time.sleep(0.01)
    assert st.running == 0 and st.waiting == 0, st
    assert st.kv_blocks_used == 0 and st.kv_blocks_reserved == 0, st
    assert st.kv_blocks_free == st.kv_blocks_total


@pytest.mark.parametrize("name,kv", [("TinyStories-656K-Q8_0.gguf", None),
                                     ("TinyStories-656K-Q8_0.gguf", "q8_0"),
                                     ("stories260K.gguf", None)])
def test_batched_decode_matches_decoding_alone(models, name, kv):
    with Model(models / name) as m:
        prompts = [m.tokenize(p) for p in PROMPTS]
    ties = check_batch_matches_alone(models / name, prompts, max_tokens=40, threads=2, kv_cache=kv)
    print(name, kv, ties)


def test_generate_batch_returns_results_in_order(tiny_path):
    with Model(tiny_path, parallel=4) as m:
        alone = [m.generate(p, max_tokens=20, temperature=0) for p in PROMPTS]
        out = m.generate_batch(PROMPTS, max_tokens=20, temperature=0, progress=False)
        assert out == alone
        assert [s.completion_tokens for s in m.last_batch_stats] == [20] * len(PROMPTS)
        # seeded sampling: prompt i uses seed + i, as generate() with that seed
        sampled = m.generate_batch(PROMPTS[:3], max_tokens=20, seed=40, progress=False)
        assert sampled == [m.generate(p, max_tokens=20, seed=40 + i) for i, p in enumerate(PROMPTS[:3])]
        _idle(m)


def test_threads_calling_generate_at_once_are_batched(tiny_path):
    with Model(tiny_path, parallel=8) as m:
        alone = {p: m.generate(p, max_tokens=30, temperature=0) for p in PROMPTS}
        steps0 = m.stats().steps
        got: dict[str, str] = {}
        start = threading.Barrier(len(PROMPTS))

        def worker(p):
            start.wait()
            got[p] = m.generate(p, max_tokens=30, temperature=0)

        ts = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert got == alone
        # 8 x 30 tokens in far fewer steps than 240: the streams shared forward steps
        assert m.stats().steps - steps0 < 120
        _idle(m)


def test_cancelling_a_stream_frees_its_blocks(tiny_path):
    with Model(tiny_path, parallel=2) as m:
        it = m.generate("Once upon a time", max_tokens=200, temperature=0, stream=True)
        next(it)
        assert m.stats().kv_blocks_used > 0
        it.close()                                   # a client that hangs up
        assert m.last_stats.finish_reason == "cancelled"
        _idle(m)
        # a stop string cancels too, and the next request is unaffected
        assert m.generate("Once upon a time", max_tokens=60, temperature=0, stop="Lily") == ", a little girl named "
        _idle(m)


def test_queue_overflow_is_a_clear_error_and_nothing_is_lost(tiny_path):
    with Model(tiny_path, parallel=1, queue_max=2) as m:
        streams = [m.generate("Once upon a time", max_tokens=50, temperature=0, stream=True)
                   for _ in range(2)]
        first = [next(s) for s in streams[:1]]         # one running; the second may still wait
        with m._sched.cv:                              # freeze the steps: the queue stays full
            extra = [m._submit(m.tokenize("The dog"), (10, 0.0, 0, 1.0, 0, []))]
            if m.stats().waiting < 2:
                extra.append(m._submit(m.tokenize("The cat"), (10, 0.0, 0, 1.0, 0, [])))
            with pytest.raises(QueueFullError, match="queue full"):
                for _ in range(3):
                    extra.append(m._submit(m.tokenize("The cow"), (10, 0.0, 0, 1.0, 0, [])))
        texts = [first[0] + "".join(streams[0])] + ["".join(s) for s in streams[1:]]
        for r in extra:                                # every accepted request completes
            assert len(list(r.tokens())) == 10
        _idle(m)                                       # (a consumer may see its last token before
        # the engine frees its slot: with queue_max=2 a new request could still find the queue full)
        assert texts[0] == texts[1] == m.generate("Once upon a time", max_tokens=50, temperature=0)
        _idle(m)


def test_a_small_kv_pool_admits_what_fits_and_queues_the_rest(tiny_path):
    """A pool of two sequences' blocks with four slots: requests beyond what the blocks can
    promise wait (never fail, never run the pool dry) and all finish."""
    with Model(tiny_path, parallel=4, context=256) as m:
        per_seq = m.memory()["kv_bytes_per_sequence"]
    with Model(tiny_path, parallel=4, context=256, kv_bytes=2 * per_seq) as m:
        alone = m.generate("Once upon a time", max_tokens=200, temperature=0)
        peak = [0]
        out: list[str] = [""] * 4

        def worker(i):
            out[i] = m.generate("Once upon a time", max_tokens=200, temperature=0)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts):
            st = m.stats()
            peak[0] = max(peak[0], st.running)
            assert st.kv_blocks_used <= st.kv_blocks_total
            time.sleep(0.001)
        for t in ts:
            t.join()
        assert out == [alone] * 4
        assert peak[0] <= 2 + 1                      # two admitted (+1 sampled between steps)
        _idle(m)
    with pytest.raises(Exception, match="do not hold one sequence"):
        Model(tiny_path, context=256, kv_bytes=per_seq // 2)


def test_shared_prefix_is_computed_once(tiny_path):
    """A long shared prefix (a system prompt) is prefilled by the first request; the next
    ones reuse its blocks: cached_tokens, prefix hit rate, and shared blocks while running."""
    system = "Once upon a time, there was a little girl named Lily. She loved to play outside. " * 4
    with Model(tiny_path, parallel=4) as m:
        n_sys = len(m.tokenize(system))
        m.generate(system + "One day", max_tokens=5, temperature=0)
        assert m.last_stats.cached_tokens == 0
        for q in ("The dog", "A bird", "Tom said"):
            m.generate(system + q, max_tokens=5, temperature=0)
            assert m.last_stats.cached_tokens >= (n_sys - 1) // 32 * 32 - 32
        assert m.stats().prefix_hit_rate > 0.5
    # submitted together to a fresh engine, stepped by hand (no scheduler thread, so no race
    # with requests that finish before the check): one prefill of the prefix, the others wait
    # for its blocks, then all three read the same blocks
    with Model(tiny_path, parallel=4) as m:
        eng = m._sched.engine
        ids = [m.tokenize(system + q) for q in ("X", "Y", "Z")]
        for t in ids:
            eng.submit(t, 30, 0.0, 0, 1.0, 0)
        firsts: set[int] = set()
        for _ in range(20):
            firsts |= {ev[0] for ev in eng.step() if ev[1] >= 0}
            if len(firsts) == 3:
                break
        assert len(firsts) == 3 and eng.stats()["running"] == 3
        assert eng.stats()["kv_blocks_shared"] >= max(1, (n_sys - 1) // 32)
        # the prefix's full blocks were computed once (with prefix_cache=False: 3 times)
        assert eng.stats()["prompt_tokens"] <= sum(map(len, ids)) - 2 * ((n_sys - 1) // 32 * 32)


def test_64_clients_at_once_through_asyncio(tiny_path):
    """64 asyncio tasks, each streaming in a worker thread (as the gateway does): every one
    finishes with its full text, none hangs, the pool is whole afterwards."""
    with Model(tiny_path, parallel=8, queue_max=64) as m:
        want = m.generate("Once upon a time", max_tokens=16, temperature=0)

        async def client(i):
            return await asyncio.to_thread(m.generate, "Once upon a time", max_tokens=16, temperature=0)

        async def main():
            return await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(64))), 120)

        assert asyncio.run(main()) == [want] * 64
        _idle(m)


def test_engine_stats_and_memory_agree(tiny_path):
    with Model(tiny_path, parallel=3, kv_cache="q8_0") as m:
        st = m.stats()
        mem = m.memory()
        assert st.parallel == 3 and st.kv_type == "q8_0"
        assert st.kv_bytes == mem["kv_bytes"] == 3 * mem["kv_bytes_per_sequence"]
        assert "EngineStats" in st._repr_html_() and st.to_dict()["running"] == 0
    with pytest.raises(ValueError, match="kv_cache"):
        Model(tiny_path, kv_cache="q4_0")
    with pytest.raises(ValueError, match="parallel"):
        Model(tiny_path, parallel=0)


def test_closing_the_model_ends_running_generations(tiny_path):
    m = Model(tiny_path, parallel=2)
    it = m.generate("Once upon a time", max_tokens=400, temperature=0, stream=True)
    next(it)
    m.close()
    with pytest.raises(ValueError):
        list(it)


def test_gateway_local_tier_serves_concurrent_requests_in_one_batch(tiny_path):
    """A local tier with parallel = 4 behind the gateway: eight concurrent chat requests from
    the openai client all answer with what the model gives alone; _routing has queue_ms;
    /metrics exposes the engine (running/waiting sequences, KV blocks, prefix-cache tokens)."""
    import httpx
    import openai
    from prometheus_client.parser import text_string_to_metric_families

    from gateway_fakes import ServerThread
    from gemma4stack.gateway.app import create_app, load_model
    from gemma4stack.gateway.config import parse_config

    cfg = parse_config({"tiers": {"local": {"backend": "local", "model": str(tiny_path), "parallel": 4,
                                            "queue_size": 8, "chat_template": "raw"}},
                        "limits": {"requests_per_minute": 0, "tokens_per_minute": 0}})
    loaded: list[Model] = []
    app = create_app(cfg, model_loader=lambda tier: loaded.append(load_model(tier)) or loaded[-1])
    with Model(tiny_path) as alone:
        want = alone.generate("Once upon a time", max_tokens=24, temperature=0)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        out: list = [None] * 8

        def call(i):
            out[i] = client.chat.completions.create(
                model="local", messages=[{"role": "user", "content": "Once upon a time"}],
                max_tokens=24, temperature=0)

        ts = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert [r.choices[0].message.content for r in out] == [want] * 8
        routing = [r.model_extra["_routing"] for r in out]
        assert all("queue_ms" in r and r["queue_ms"] >= 0 for r in routing)
        text = httpx.get(srv.url + "/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("gemma4stack_sequences_running", "gemma4stack_sequences_waiting",
                     "gemma4stack_kv_blocks", "gemma4stack_prefix_cache_tokens"):
            assert name in fams, name
        queried = [s.value for s in fams["gemma4stack_prefix_cache_tokens"].samples
                   if s.labels["kind"] == "queried"]
        assert queried and queried[0] > 0
        assert len(loaded) == 1 and loaded[0].parallel == 4
        _idle(loaded[0])


def test_real_gemma3_270m_batched_decode_matches_alone(gemma3_270m_path):
    """Google's Gemma 3 270M (Q4_K_M, sliding-window layers of 512 positions): eight prompts
    decoded together give the greedy tokens each gives alone (near-ties reported)."""
    texts = ["The capital of France is", "def fibonacci(n):", "The three primary colors are",
             "In 1969, the first", "Water boils at a temperature of", "The largest planet in the",
             "Once upon a time, in a small village,", "To make a cup of tea, first"]
    with Model(gemma3_270m_path, threads=2) as m:
        prompts = [m.tokenize(t) for t in texts]
    ties = check_batch_matches_alone(gemma3_270m_path, prompts, max_tokens=24, threads=2)
    print("gemma3-270m", ties)


def test_real_gemma3_270m_reuses_a_prefix_longer_than_its_window(gemma3_270m_path):
    """Gemma 3's sliding layers (window 512) need the window before the first new position:
    a 1,000-token shared prefix answered with 128 tokens, then the same prefix with another
    question reuses the prefix's whole blocks, also with parallel=1 (the pool keeps a window
    of sliding blocks beyond what one sequence holds)."""
    base = "Notes: " + " ".join(f"item {i} is {i * 7 % 13}." for i in range(160))
    with Model(gemma3_270m_path, threads=2, parallel=1, context=2048) as m:
        n = len(m.tokenize(base))
        assert n > 600
        m.generate(base + " Question: what is item 3?", max_tokens=128, temperature=0)
        m.generate(base + " Question: what is item 9?", max_tokens=8, temperature=0)
        assert m.last_stats.cached_tokens >= (n - 1) // 32 * 32 - 32
        _idle(m)


def test_bad_requests_to_the_engine_are_clear_errors(tiny_path):
    """Ids outside the vocabulary, prompts longer than the context, bad sampling arguments:
    ValueError / LimitError naming the problem, and the engine serves on."""
    from gemma4stack import LimitError
    with Model(tiny_path, parallel=2, context=64) as m:
        with pytest.raises(ValueError, match="outside the vocabulary"):
            m._submit([1, 10**6], (4, 0.0, 0, 1.0, 0, []))
        with pytest.raises(LimitError, match="longer than the context"):
            m.generate("Once upon a time " * 40, max_tokens=4)
        with pytest.raises(ValueError, match="temperature"):
            m.generate("Once", temperature=-1)
        with pytest.raises(ValueError, match="batch_tokens"):
            Model(tiny_path, batch_tokens=0)
        assert m.generate("Once upon a time", max_tokens=8, temperature=0)
        _idle(m)
