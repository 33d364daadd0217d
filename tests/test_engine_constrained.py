"""Constrained decoding, logprobs and the full sampler inside the batching engine's step
(csrc/engine/engine.h: per-request sampler chain and token mask, g4_engine_set_mask;
gemma4stack.model._Scheduler advances the llguidance matchers between steps).

The reference is the single-sequence path, which had these features first and is unchanged:
_core.Model.generate_iter with mask_fn= and the sampler keywords (csrc/model/generate.c), run
here exactly as gemma4stack.tools ran it before these requests moved into the engine. Both
sample with csrc/sample's g4_sample_ex over the same forward pass, so greedy outputs are the
same token ids and logprobs agree to float rounding.
"""
from __future__ import annotations

import json
import threading
import time

import jsonschema
import numpy as np
import pytest

from gemma4stack import Model, _core
from gemma4stack.constrain import Constraint
from gemma4stack.model import _check_sampling
from gemma4stack.tools import _decode

from test_tools import SCHEMAS  # issue 13's test schemas: nested objects, arrays, enums, anyOf


@pytest.fixture(scope="module")
def g4(synth_gemma4):
    with Model(synth_gemma4, threads=1, context=512, parallel=4) as m:
        yield m


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from gemma4stack.synth import synth
    p = tmp_path_factory.mktemp("llama_c") / "llama.gguf"
    synth(p, arch="llama", type="q8_0", layers=1, n_vocab=2048, seed=2)
    with Model(p, threads=1, context=512, parallel=4) as m:
        yield m


def _single_sequence(m: Model, ids: list[int], max_tokens: int, constraint=None,
                     n_logprobs: int | None = None, temperature: float = 0.0, seed: int = 1,
                     **sampling) -> list[tuple[int, tuple | None]]:
    """The old path of gemma4stack.tools._decode: generate_iter on the model's own
    single-sequence KV cache, the matcher advanced after each token, stopping when it is
    complete."""
    kw = dict(sampling)
    if n_logprobs is not None:
        kw["logprobs"] = n_logprobs
    if constraint is not None:
        kw["mask_fn"] = constraint.mask_fn
    gen = m._core.generate_iter(ids, max_tokens, temperature, 40, 0.95, seed, **kw)
    out = []
    for tok in gen:
        if constraint is not None:
            constraint.advance(tok)
        out.append((tok, gen.logprobs() if n_logprobs is not None else None))
        if constraint is not None and constraint.done:
            break
    gen.close()
    return out


def _engine(m: Model, ids: list[int], max_tokens: int, constraint=None,
            n_logprobs: int | None = None, temperature: float = 0.0, seed: int = 1,
            **sampling) -> list[tuple[int, tuple | None]]:
    args = _check_sampling(max_tokens, temperature, 40, 0.95, seed, None)
    return list(_decode(m, ids, args, constraint, n_logprobs, sampling, time.perf_counter()))


def _prompt(m: Model, text: str) -> list[int]:
    return m.tokenize(text, add_bos=bool(m._core.add_bos))


def _idle(m: Model) -> None:
    for _ in range(200):
        st = m.stats()
        if st.running == 0 and st.waiting == 0:
            break
        time.sleep(0.01)
    assert st.running == 0 and st.waiting == 0 and st.kv_blocks_used == 0, st


# ------------------------------------------------------------------ (a) equal to the old path

@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_greedy_tokens_equal_the_single_sequence_path(g4, llama, i):
    for m in (g4, llama):
        ids = _prompt(m, "Give me JSON:")
        ref = _single_sequence(m, ids, 60, Constraint.for_request(m, json_schema=SCHEMAS[i]))
        got = _engine(m, ids, 60, Constraint.for_request(m, json_schema=SCHEMAS[i]))
        assert [t for t, _ in got] == [t for t, _ in ref]
        assert m.last_stats.finish_reason == "stop"          # the matcher completed
        jsonschema.validate(json.loads(m.detokenize([t for t, _ in got])), SCHEMAS[i])
        _idle(m)


# ------------------------------------------------------------------ (b) batched together

def test_four_constrained_requests_run_in_the_same_steps(g4):
    assert len(SCHEMAS) >= 4
    before = g4.stats()
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def run(k: int) -> None:
        barrier.wait()
        results[k] = g4.chat([{"role": "user", "content": f"data {k} as JSON"}], max_tokens=60,
                             seed=k, temperature=0.7,
                             response_format={"type": "json_schema",
                                              "json_schema": {"name": "s", "schema": SCHEMAS[k]}})

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = g4.stats()
    n_tokens = 0
    for k, r in enumerate(results):
        assert r.finish_reason == "stop", r
        jsonschema.validate(json.loads(r.content), SCHEMAS[k])
        n_tokens += len(g4.tokenize(r.content, add_bos=False))
    generated = after.generated_tokens - before.generated_tokens
    steps = after.steps - before.steps
    # every token came out of the engine (the end-of-generation token or the matcher's end
    # is not counted in the content), and the four shared steps: far fewer steps than tokens
    assert generated >= n_tokens - 4
    assert steps < 0.6 * generated, (steps, generated)
    _idle(g4)


# ------------------------------------------------------------------ (c) logprobs, penalties

def test_logprobs_and_penalties_equal_the_single_sequence_path(g4, llama):
    sampling = dict(repeat_penalty=1.3, repeat_last_n=16, presence_penalty=1.5,
                    frequency_penalty=1.5, logit_bias={5: 2.0, 7: -100.0})
    for m in (g4, llama):
        ids = _prompt(m, "Once upon a time there was")
        ref = _single_sequence(m, ids, 24, n_logprobs=4, **sampling)
        got = _engine(m, ids, 24, n_logprobs=4, **sampling)
        plain = _engine(m, ids, 24)
        assert [t for t, _ in got] == [t for t, _ in ref]
        assert [t for t, _ in got] != [t for t, _ in plain]    # the penalties did something
        for (_, (lp, top)), (_, (rlp, rtop)) in zip(got, ref):
            assert lp == pytest.approx(rlp, abs=1e-4)
            assert [i for i, _ in top] == [i for i, _ in rtop]
            assert [v for _, v in top] == pytest.approx([v for _, v in rtop], abs=1e-4)
        # seeded sampling with min_p: the same draws
        kw = dict(temperature=0.9, seed=11, min_p=0.05, presence_penalty=0.5)
        assert [t for t, _ in _engine(m, ids, 24, **kw)] == \
            [t for t, _ in _single_sequence(m, ids, 24, **kw)]
        # and a constrained request's logprobs: -inf never shows, the chosen one is listed
        c = Constraint.for_request(m, regex="[a-z]{3,8}")
        for tok, (lp, top) in _engine(m, ids, 12, c, n_logprobs=3):
            assert np.isfinite(lp) and tok in [i for i, _ in top] and all(np.isfinite(v) for _, v in top)
        _idle(m)


def test_chat_logprobs_through_the_engine_match_in_shape(g4):
    r = g4.chat([{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, logprobs=True,
                top_logprobs=2)
    assert len(r.logprobs) == 6
    for e in r.logprobs:
        assert e["top_logprobs"][0]["token"] == e["token"] and len(e["top_logprobs"]) == 2
        assert e["logprob"] == pytest.approx(e["top_logprobs"][0]["logprob"])


# ------------------------------------------------------------------ (d) the mask itself

def _mask_only(n_vocab: int, *allowed: int) -> np.ndarray:
    m = np.zeros((n_vocab + 31) // 32, dtype=np.uint32)
    for t in allowed:
        m[t // 32] |= np.uint32(1 << (t % 32))
    return m


def _step_until_events(e, limit: int = 50) -> list:
    for _ in range(limit):
        ev = e.step()
        if ev:
            return ev
    raise AssertionError("no event")


def test_a_mask_allowing_one_token_forces_it_and_an_unset_mask_pauses_the_request(llama):
    e = _core.Engine(llama._core, n_seq=2)
    try:
        n_vocab = llama.n_vocab
        ids = _prompt(llama, "Once upon a time")
        rid = e.submit(ids, max_tokens=4, temperature=1.5, top_k=0, top_p=1.0, seed=3,
                       constrained=True, logprobs=2)
        # no mask yet: the prompt is prefilled except its last token, and nothing is sampled
        assert e.step() == [] and e.step() == []
        assert e.stats()["running"] == 1
        forced = [1234, 77, 1500]
        for tok in forced:
            e.set_mask(rid, _mask_only(n_vocab, tok))
            (ev,) = _step_until_events(e)
            assert ev[0] == rid and ev[1] == tok and ev[2] == 0
            chosen, top = ev[12]
            assert chosen == pytest.approx(0.0, abs=1e-6) and top == [(tok, pytest.approx(0.0, abs=1e-6))]
            assert e.step() == []                 # mask used up: the request waits, keeps its slot
            assert e.stats()["running"] == 1
        # an unconstrained request beside it decodes while the constrained one waits
        other = e.submit(ids, max_tokens=3, temperature=0)
        evs = [ev for _ in range(6) for ev in e.step()]
        assert {ev[0] for ev in evs} == {other} and evs[-1][2] == 2
        e.set_mask(rid, _mask_only(n_vocab, 9))
        (ev,) = _step_until_events(e)
        assert ev[1] == 9 and ev[2] == 2          # its 4th token: max_tokens
        assert e.stats()["running"] == 0 and e.stats()["kv_blocks_used"] == 0
    finally:
        e.close()


# ------------------------------------------------------------------ (e) bad input

def test_bad_masks_and_sampler_arguments_are_clear_errors(llama):
    e = _core.Engine(llama._core, n_seq=1)
    try:
        n_vocab, words = llama.n_vocab, (llama.n_vocab + 31) // 32
        ids = _prompt(llama, "Hi")
        rid = e.submit(ids, max_tokens=2, constrained=True)
        plain = e.submit(ids, max_tokens=2)
        ok = np.full(words, 0xFFFFFFFF, dtype=np.uint32)
        with pytest.raises(ValueError, match=f"{words - 1} words, {words} are needed"):
            e.set_mask(rid, ok[:-1])
        with pytest.raises(ValueError, match=f"{words + 1} words, {words} are needed"):
            e.set_mask(rid, np.full(words + 1, 0xFFFFFFFF, dtype=np.uint32))
        with pytest.raises(ValueError, match="no waiting or running request has id 999"):
            e.set_mask(999, ok)
        with pytest.raises(ValueError, match="not submitted as constrained"):
            e.set_mask(plain, ok)
        with pytest.raises(ValueError, match="allows no token"):
            e.set_mask(rid, np.zeros(words, dtype=np.uint32))
        tail = np.zeros(words, dtype=np.uint32)
        tail[-1] = np.uint32(0xFFFFFFFF) ^ np.uint32((1 << (n_vocab % 32)) - 1) if n_vocab % 32 else 0
        if n_vocab % 32:                          # only bits past the vocabulary
            with pytest.raises(ValueError, match="allows no token"):
                e.set_mask(rid, tail)
        with pytest.raises(TypeError, match="uint32"):
            e.set_mask(rid, np.ones(words, dtype=np.float32))
        with pytest.raises(ValueError, match="logprobs 21"):
            e.submit(ids, logprobs=21)
        with pytest.raises(ValueError, match=f"logit bias token id {n_vocab} is outside"):
            e.submit(ids, logit_bias={n_vocab: 1.0})
        with pytest.raises(ValueError, match="repeat_last_n -2"):
            e.submit(ids, repeat_last_n=-2)
        e.set_mask(rid, ok)                       # a good one is taken
        e.cancel(rid)
        e.cancel(plain)
        with pytest.raises(ValueError, match="no waiting or running request"):
            e.set_mask(rid, ok)                   # cancelled: gone
        assert e.stats()["running"] == 0 and e.stats()["kv_blocks_used"] == 0
    finally:
        e.close()
    # through the Python API: a bad logit_bias is a ValueError at the call
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llama.generate("Hi", max_tokens=2, logit_bias={10**6: 1.0})


# ------------------------------------------------------------------ n > 1 on a local tier

def test_gateway_local_tier_n_choices_run_as_engine_requests(synth_gemma4):
    """n=3 on a local tier: three requests in the engine (choice i with seed + i, the prompt
    prefilled once through the prefix cache), combined into one response and one stream."""
    import openai

    from gateway_fakes import ServerThread
    from gemma4stack.gateway.app import create_app
    from gemma4stack.gateway.config import parse_config

    cfg = parse_config({"tiers": {"local": {"backend": "local", "model": str(synth_gemma4)}},
                        "limits": {"requests_per_minute": 0, "tokens_per_minute": 0}})
    loaded: list[Model] = []

    def load(tier):
        loaded.append(Model(synth_gemma4, threads=1, context=512, parallel=3))
        return loaded[-1]
    app = create_app(cfg, model_loader=load)
    msgs = [{"role": "user", "content": "Tell me a story about a cat and a dog. " * 8}]   # > 2 KV blocks
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="local", messages=msgs, n=3, seed=5,
                                           temperature=1.0, max_tokens=8)
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert all(c.finish_reason in ("stop", "length") and c.message.role == "assistant"
                   for c in r.choices)
        alone = [client.chat.completions.create(model="local", messages=msgs, seed=5 + i,
                                                temperature=1.0, max_tokens=8)
                 for i in range(3)]
        assert [c.message.content for c in r.choices] == [a.choices[0].message.content for a in alone]
        assert r.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
        m = loaded[0]
        assert m.stats().prefix_hit_tokens > 0            # the shared prompt was reused
        text: dict[int, str] = {}
        finish: dict[int, str] = {}
        for ch in client.chat.completions.create(model="local", messages=msgs, n=3, seed=5,
                                                 temperature=1.0, max_tokens=8, stream=True):
            for c in ch.choices:
                text[c.index] = text.get(c.index, "") + (c.delta.content or "")
                if c.finish_reason:
                    finish[c.index] = c.finish_reason
        assert [text[i] for i in range(3)] == [c.message.content for c in r.choices]
        assert sorted(finish) == [0, 1, 2]
        # structured output with n > 1: every choice follows the schema
        r = client.chat.completions.create(
            model="local", messages=msgs, n=2, seed=1, max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMAS[1]}})
        for c in r.choices:
            jsonschema.validate(json.loads(c.message.content), SCHEMAS[1])
