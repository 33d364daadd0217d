"""Agent features through the gateway with the official openai client (issue 13): tool
round trips on a local tier (synthetic Gemma 4, gemma4stack.synth, tiny) and through an
openai tier (FakeUpstream "tools", which answers as vLLM does), every request field reaching
the upstream, chat.completions.parse with a pydantic model, streamed tool-call deltas,
logprobs, and the 400s that never count against a tier's circuit breaker."""
from __future__ import annotations

import contextlib
import json

import httpx
import openai
import pydantic
import pytest

from gateway_fakes import TOOL_CALL, FakeModel, FakeUpstream, ServerThread
from gemma4stack import Model
from gemma4stack.gateway.app import create_app
from gemma4stack.gateway.config import parse_config

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def g4(synth_gemma4):
    with Model(synth_gemma4, threads=1, context=1024) as m:
        yield m


@contextlib.contextmanager
def gateway(tiers: dict, model=None):
    cfg = parse_config({"tiers": tiers, "limits": {"requests_per_minute": 0, "tokens_per_minute": 0}})
    # a Model of its own per gateway (the gateway's model lifecycle closes what it loaded);
    # a fake is handed over as it is
    if isinstance(model, Model):
        app = create_app(cfg, model_loader=lambda t: Model(model.path, threads=1, context=1024))
    else:
        app = create_app(cfg, model_loader=lambda t: model)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        yield app.state.gateway, client, srv.url


# ----------------------------------------------------------------------------- openai tier

def test_remote_request_fields_reach_upstream_unchanged():
    with FakeUpstream("tools") as up, gateway({"remote": {"backend": "openai", "url": up.url,
                                                          "model": "m"}}) as (st, client, url):
        history = ASK + [{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                         {"role": "tool", "tool_call_id": TOOL_CALL["id"], "content": "18 C"},
                         {"role": "user", "content": [
                             {"type": "text", "text": "and this?"},
                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
        sent = dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                    parallel_tool_calls=False, response_format={"type": "json_object"},
                    logprobs=True, top_logprobs=5, logit_bias={"42": -100}, n=1, seed=3,
                    stop=["\n\n"], max_completion_tokens=50, reasoning_effort="low", user="u1",
                    metadata={"k": "v"})
        r = client.chat.completions.create(model="remote", messages=history, **sent,
                                           extra_body={"some_new_field": {"x": [1, 2]}})
        got = up.requests[-1]
        for k, v in sent.items():
            assert got[k] == v, k
        assert got["messages"] == history and got["some_new_field"] == {"x": [1, 2]}
        assert "max_tokens" not in got                  # the client's own name went upstream
        # the reply, reassembled from the upstream's stream, loses nothing
        m = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls"
        assert m.tool_calls[0].model_dump() == TOOL_CALL
        assert m.content == "Ok" and m.model_extra["reasoning_content"] == "think first"
        assert r.choices[0].logprobs.content[0].token == "Ok"
        assert r.model_extra["_routing"]["tier"] == "remote"


def test_remote_streamed_tool_call_deltas():
    with FakeUpstream("tools") as up, gateway({"remote": {"backend": "openai", "url": up.url,
                                                          "model": "m"}}) as (st, client, url):
        calls: dict[int, dict] = {}
        reasoning, content, lps, finish = "", "", [], None
        chunks = list(client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER],
                                                     stream=True, logprobs=True))
        for ch in chunks:
            for c in ch.choices:
                d = c.delta
                reasoning += (d.model_extra or {}).get("reasoning_content") or ""
                content += d.content or ""
                for tc in d.tool_calls or ():
                    cur = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    cur["id"] = cur["id"] or tc.id
                    cur["name"] += tc.function.name or ""
                    cur["arguments"] += tc.function.arguments or ""
                if c.logprobs:
                    lps += c.logprobs.content
                finish = c.finish_reason or finish
        assert reasoning == "think first" and content == "Ok" and finish == "tool_calls"
        assert calls == {0: {"id": TOOL_CALL["id"], "name": "get_weather",
                             "arguments": TOOL_CALL["function"]["arguments"]}}
        assert [x.token for x in lps] == ["Ok"]
        assert chunks[-1].model_extra["_routing"]["tier"] == "remote"


def test_remote_json_answer_keeps_tool_calls():
    with FakeUpstream("tools_json") as up, gateway({"remote": {"backend": "openai", "url": up.url,
                                                               "model": "m"}}) as (st, client, url):
        r = client.chat.completions.create(model="remote", messages=ASK, tools=[WEATHER])
        assert r.choices[0].message.tool_calls[0].model_dump() == TOOL_CALL
        assert r.choices[0].finish_reason == "tool_calls"


# ----------------------------------------------------------------------------- local tier

def test_local_tool_round_trip(g4):
    with gateway({"local": {"backend": "local", "model": g4.path}}, g4) as (st, client, url):
        r = client.chat.completions.create(
            model="local", messages=ASK, tools=[WEATHER], max_tokens=60, seed=1,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None
        call = c.message.tool_calls[0]
        assert call.function.name == "get_weather" and call.id.startswith("call_")
        args = json.loads(call.function.arguments)
        assert set(args) == {"city", "unit"} and args["unit"] in ("c", "f")
        assert len(args["city"]) <= 10
        msgs = ASK + [c.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "18 C"}]
        r2 = client.chat.completions.create(model="local", messages=msgs, tools=[WEATHER],
                                            max_tokens=5, seed=2, tool_choice="none")
        assert r2.choices[0].message.tool_calls is None
        assert r2.choices[0].finish_reason in ("stop", "length")


def test_local_streamed_required_call_and_logprobs(g4):
    with gateway({"local": {"backend": "local", "model": g4.path}}, g4) as (st, client, url):
        chunks = list(client.chat.completions.create(
            model="local", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60,
            seed=4, stream=True))
        calls = [tc for ch in chunks for c in ch.choices for tc in (c.delta.tool_calls or ())]
        assert len(calls) == 1 and calls[0].function.name == "get_weather"
        json.loads(calls[0].function.arguments)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        r = client.chat.completions.create(model="local", messages=ASK, max_tokens=4, seed=1,
                                           logprobs=True, top_logprobs=5)
        lp = r.choices[0].logprobs.content
        assert len(lp) == r.usage.completion_tokens == 4
        for e in lp:
            assert len(e.top_logprobs) == 5 and e.logprob <= 0
            assert e.top_logprobs[0].logprob >= e.logprob - 1e-6    # the best is listed first
            assert all(a.logprob >= b.logprob for a, b in zip(e.top_logprobs, e.top_logprobs[1:]))


def test_local_tools_without_a_chat_template(tmp_path):
    """A base model (no template, no tool tokens): tools described in a raw prompt, the call
    constrained to JSON and returned as tool_calls; completions with legacy logprobs."""
    from gemma4stack.synth import synth
    p = tmp_path / "llama.gguf"
    synth(p, arch="llama", type="q8_0", layers=1, n_vocab=2048, seed=2)
    with Model(p, threads=1, context=1024) as m, \
            gateway({"base": {"backend": "local", "model": str(p)}}, m) as (st, client, url):
        r = client.chat.completions.create(model="base", messages=ASK, tools=[WEATHER],
                                           tool_choice="required", max_tokens=60, seed=3)
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
        assert set(json.loads(call.function.arguments)) == {"city", "unit"}
        c = client.completions.create(model="base", prompt="Once", max_tokens=3, logprobs=2, seed=1)
        lp = c.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
        assert "".join(lp.tokens) == c.choices[0].text
        assert all(len(t) <= 2 and max(t.values()) >= v - 1e-6
                   for t, v in zip(lp.top_logprobs, lp.token_logprobs))


def test_local_sampler_options_take_effect(g4):
    """logit_bias and presence/frequency penalties reach the local sampler."""
    with gateway({"local": {"backend": "local", "model": g4.path}}, g4) as (st, client, url):
        kw = dict(model="local", messages=ASK, max_tokens=8, temperature=0, logprobs=True)
        base = client.chat.completions.create(**kw)
        first = base.choices[0].logprobs.content[0]
        tid = g4.tokenize(first.token, add_bos=False)
        assert len(tid) == 1
        banned = client.chat.completions.create(**kw, logit_bias={str(tid[0]): -100})
        assert banned.choices[0].logprobs.content[0].token != first.token
        pen = client.chat.completions.create(**kw, frequency_penalty=2.0, presence_penalty=2.0)
        toks = [e.token for e in pen.choices[0].logprobs.content]
        plain = [e.token for e in base.choices[0].logprobs.content]
        assert toks != plain or len(set(plain)) == len(plain)
        assert len(set(plain)) < len(plain)       # greedy repeats here, so penalties matter


class Answer(pydantic.BaseModel):
    ok: bool
    colour: str = pydantic.Field(json_schema_extra={"enum": ["red", "green"]})
    n: list[bool] = pydantic.Field(max_length=2)


def test_local_parse_pydantic(g4):
    with gateway({"local": {"backend": "local", "model": g4.path}}, g4) as (st, client, url):
        r = client.chat.completions.parse(model="local", messages=ASK, response_format=Answer,
                                          max_tokens=60, seed=5)
        a = r.choices[0].message.parsed
        assert isinstance(a, Answer) and a.colour in ("red", "green")


# ----------------------------------------------------------------------------- 400s

def test_client_mistakes_are_400_and_do_not_open_the_breaker(g4):
    with gateway({"local": {"backend": "local", "model": g4.path}}, g4) as (st, client, url):
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}
        for _ in range(6):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="local", messages=ASK, response_format=bad)
            assert "objectx" in e.value.message
        with pytest.raises(openai.BadRequestError, match="nope"):
            client.chat.completions.create(model="local", messages=ASK, tools=[WEATHER],
                                           tool_choice={"type": "function", "function": {"name": "nope"}})
        assert st.tiers["local"].breaker.state.value == "closed"
        deep = "[" * 100_000 + "]" * 100_000
        r = httpx.post(url + "/v1/chat/completions", content=deep,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        nested = {"model": "local", "messages": ASK, "metadata": {"k": "v"},
                  "x": json.loads("[" * 200 + "]" * 200)}
        assert httpx.post(url + "/v1/chat/completions", json=nested).status_code == 400


def test_template_raise_exception_is_400_not_counted(g4):
    from gemma4stack.model import _template_error_class

    class Strict(FakeModel):
        chat_template = "x"

        def chat(self, messages, **kw):
            raise _template_error_class()("Conversation roles must alternate user/assistant")

    with gateway({"local": {"backend": "local", "model": g4.path}}, Strict()) as (st, client, url):
        for _ in range(6):
            with pytest.raises(openai.BadRequestError, match="alternate"):
                client.chat.completions.create(model="local", messages=ASK + ASK)
        assert st.tiers["local"].breaker.state.value == "closed"
