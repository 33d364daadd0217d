"""Tool calling, structured output, reasoning and logprobs on a local Model.

    >>> r = model.chat(messages, tools=[{"type": "function", "function": {...}}])
    >>> r.tool_calls          # [{"id": "call_...", "type": "function",
    ...                       #   "function": {"name": ..., "arguments": "<JSON text>"}}]
    >>> r.content, r.reasoning, r.finish_reason      # "tool_calls" when it called one
    >>> model.chat(messages, response_format={"type": "json_schema", "json_schema": {...}})
    >>> model.generate("Answer: ", regex=r"(yes|no)")

How each part works, and where its format comes from:

- Tools reach the model through its chat template (`tools=` as HF transformers'
  apply_chat_template passes them). An assistant message's tool_calls have their
  `arguments` JSON text turned into a dict for the template, as vLLM does before rendering
  (templates such as Gemma 4's iterate over the arguments), and tool messages go through
  the template as they are. A model without a chat template (a base model) gets the tools
  described in its raw prompt and answers with a JSON call (render_raw_prompt).
- Calls are parsed from the model's native syntax: Gemma 4's
  `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:1}<tool_call|>` (strings between <|"|>
  tokens, other values bare, nested {} and []); for models without tool tokens, a JSON
  object {"name": ..., "arguments": {...}} (or a list of them, or one inside
  <tool_call>...</tool_call>, the Hermes/Qwen form) as the whole answer. Each call gets an
  id "call_" + 24 hex digits and its arguments as JSON text (OpenAI's shape).
- tool_choice "required" or a named function constrains the output (gemma4stack.constrain,
  llguidance) to one call whose arguments are valid against the function's JSON schema:
  for Gemma 4, `<|tool_call>call:NAME{...}<tool_call|>` in its own key:value syntax, from
  a Lark grammar built from the schema (_gemma_args_lark: the common schema features),
  or, for schemas outside that subset, with the arguments as JSON inside the native frame
  (llguidance's %json; the parser reads both); for other models the JSON call object.
  "none" drops the tools from the prompt.
- Gemma 4 thinking, `<|channel>thought\\n...<channel|>`, goes to .reasoning (the
  reasoning_content of llama-server and vLLM), streamed as such, never into content.
  enable_thinking=True (or reasoning_effort other than "none"/"minimal") passes
  enable_thinking to the template, as Gemma 4's template expects.
- logprobs: see csrc/sample/sample.h (log-softmax after mask, bias and penalties, before
  temperature and truncation), in OpenAI's shapes.
- All of these generations run in the model's continuous-batching engine like plain ones
  (csrc/engine/engine.h: per-request sampler chain, logprobs and token mask), so many
  agents on one Model decode together; the llguidance matchers are advanced by the
  engine's scheduler thread (gemma4stack.model._Scheduler).
"""
from __future__ import annotations

import codecs
import html
import json
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ChatResult", "ChatDelta", "chat", "generate", "parse_gemma4_call",
           "local_options", "render_raw_prompt", "RequestError"]


class RequestError(ValueError):
    """A request the model cannot serve as asked (the gateway answers 400); param names the
    request field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# --------------------------------------------------------------------------- results

@dataclass
class ChatDelta:
    """One streamed piece of a reply: content text, reasoning text, finished tool calls
    (OpenAI delta shape, with "index"), and the logprob entries of its tokens."""
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict] | None = None
    logprobs: list[dict] | None = None

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls or self.logprobs)

    def fields(self) -> dict:
        """The delta's fields besides content, as OpenAI-compatible servers name them."""
        d: dict = {}
        if self.reasoning:
            d["reasoning_content"] = self.reasoning
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        return d

    def logprobs_dict(self, kind: str = "chat") -> dict | None:
        """{"content": [...]} for chat; the legacy completions object for "completion"."""
        if self.logprobs is None:
            return None
        if kind == "chat":
            return {"content": self.logprobs}
        return {"tokens": [e["token"] for e in self.logprobs],
                "token_logprobs": [e["logprob"] for e in self.logprobs],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                                 for e in self.logprobs],
                "text_offset": [e.get("text_offset", 0) for e in self.logprobs]}


@dataclass
class ChatResult:
    """A whole reply. content: the answer text (None when the model only called tools);
    reasoning: its thinking (None without); tool_calls: OpenAI-shaped calls (empty list
    without); finish_reason: "stop" | "length" | "tool_calls"; logprobs: OpenAI's
    choice.logprobs.content entries when asked for; parsed: for a JSON response_format,
    the parsed value."""
    content: str | None
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    logprobs: list[dict] | None = None
    parsed: Any = None

    def to_dict(self) -> dict:
        return asdict(self)

    def message(self) -> dict:
        """The reply as an assistant message for the next request (tool round trips)."""
        m: dict = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            m["tool_calls"] = self.tool_calls
        return m

    def __str__(self) -> str:
        return self.content or ""

    def _repr_html_(self) -> str:
        rows = [("content", self.content), ("reasoning", self.reasoning),
                ("finish_reason", self.finish_reason)]
        rows += [(f"tool_calls[{i}]", f"{c['function']['name']}({c['function']['arguments']})")
                 for i, c in enumerate(self.tool_calls)]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in rows if v is not None)
        return f"<table><caption>ChatResult</caption>{body}</table>"


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


# --------------------------------------------------------------------------- Gemma 4 syntax

_Q = '<|"|>'   # Gemma 4's string delimiter token


def _gemma_value(s: str, i: int) -> tuple[Any, int]:
    """Parse one value of Gemma 4's call syntax at s[i:]; returns (value, next index)."""
    while i < len(s) and s[i] in " \n\t":
        i += 1
    if s.startswith(_Q, i):
        j = s.find(_Q, i + len(_Q))
        if j < 0:
            raise ValueError("unterminated string")
        return s[i + len(_Q):j], j + len(_Q)
    if i < len(s) and s[i] == "{":
        obj: dict = {}
        i += 1
        while True:
            while i < len(s) and s[i] in " \n\t,":
                i += 1
            if i < len(s) and s[i] == "}":
                return obj, i + 1
            if s.startswith(_Q, i):                   # a quoted key
                key, i = _gemma_value(s, i)
            elif i < len(s) and s[i] == '"':
                key, n = json.JSONDecoder().raw_decode(s, i)
                i = n
            else:
                j = s.find(":", i)
                if j < 0:
                    raise ValueError("expected key:value")
                key, i = s[i:j].strip(), j
            while i < len(s) and s[i] in " \n\t":
                i += 1
            if i >= len(s) or s[i] != ":":
                raise ValueError(f"expected ':' after key {key!r}")
            obj[str(key)], i = _gemma_value(s, i + 1)
    if i < len(s) and s[i] == "[":
        arr: list = []
        i += 1
        while True:
            while i < len(s) and s[i] in " \n\t,":
                i += 1
            if i < len(s) and s[i] == "]":
                return arr, i + 1
            if i >= len(s):
                raise ValueError("unterminated array")
            v, i = _gemma_value(s, i)
            arr.append(v)
    if i < len(s) and s[i] == '"':                     # JSON string (constrained calls)
        return json.JSONDecoder().raw_decode(s, i)
    j = i
    while j < len(s) and s[j] not in ",}]":
        j += 1
    word = s[i:j].strip()
    if not word:
        raise ValueError("missing value")
    low = word.lower()
    if low in ("true", "false"):
        return low == "true", j
    if low in ("null", "none"):
        return None, j
    try:
        return json.loads(word), j
    except ValueError:
        return word, j                                   # a bare word: keep it as text


def parse_gemma4_call(text: str) -> tuple[str, dict]:
    """(name, arguments) of the text between <|tool_call> and <tool_call|>:
    "call:NAME{...}" in Gemma 4's syntax or with JSON arguments. ValueError if malformed."""
    t = text.strip()
    if t.startswith("call:"):
        t = t[5:]
    b = t.find("{")
    if b <= 0:
        raise ValueError(f"not a Gemma 4 call: {text[:80]!r}")
    name = t[:b].strip()
    args, end = _gemma_value(t, b)
    if t[end:].strip():
        raise ValueError(f"text after the call's arguments: {t[end:][:40]!r}")
    return name, args


def _json_calls(text: str) -> list[tuple[str, dict]] | None:
    """Calls in a JSON answer (models without tool tokens): {"name", "arguments"|"parameters"},
    a list of them, or one inside <tool_call>...</tool_call>; None if the text is not that."""
    t = text.strip()
    found = re.findall(r"<tool_call>(.*?)</tool_call>", t, re.S)
    items: list = []
    try:
        if found:
            items = [json.loads(x) for x in found]
        else:
            v = json.loads(t)
            items = v if isinstance(v, list) else [v]
    except ValueError:
        return None
    calls = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            return None
        args = it.get("arguments", it.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        calls.append((it["name"], args))
    return calls or None


def _openai_call(index: int, name: str, args: Any) -> dict:
    return {"index": index, "id": _call_id(), "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


# --------------------------------------------------------------------------- prompts

def _template_messages(messages: Sequence[Mapping]) -> list[dict]:
    """Messages for a chat template: tool_calls' arguments JSON text -> dict (vLLM does the
    same before rendering), content parts -> their text for templates that take strings."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                tc = dict(tc)
                fn = dict(tc.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                tc["function"] = fn
                calls.append(tc)
            m["tool_calls"] = calls
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def render_raw_prompt(messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> str:
    """A prompt for a model without a chat template: the tools as JSON with how to call
    them, then a role-tagged transcript ending in "Assistant:"."""
    lines = []
    if tools:
        lines.append("You can call these tools. To call one, answer with only a JSON object "
                     '{"name": <tool name>, "arguments": <object>}.')
        lines += [json.dumps(t.get("function", t), ensure_ascii=False) for t in tools]
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
        if m.get("tool_calls"):
            c = (c or "") + json.dumps([{"name": tc["function"]["name"],
                                         "arguments": tc["function"]["arguments"]}
                                        for tc in m["tool_calls"]], ensure_ascii=False)
        role = "Tool result" if m.get("role") == "tool" else str(m.get("role", "user")).capitalize()
        lines.append(f"{role}: {c or ''}")
    return "\n".join(lines) + "\nAssistant:"


class _Vocab:
    """The special tokens a model's output is parsed on (ids, or -1 when absent)."""

    def __init__(self, model):
        def tid(s: str) -> int:
            ids = model.tokenize(s, add_bos=False, parse_special=True)
            return ids[0] if len(ids) == 1 else -1
        self.call, self.call_end = tid("<|tool_call>"), tid("<tool_call|>")
        self.chan, self.chan_end = tid("<|channel>"), tid("<channel|>")
        self.response = tid("<|tool_response>")
        self.quote = tid(_Q)
        self.native_tools = self.call >= 0 and self.call_end >= 0
        self.marks = {i: model._core.token_text(i) for i in
                      (self.call, self.call_end, self.chan, self.chan_end, self.response) if i >= 0}


def _vocab(model) -> _Vocab:
    v = getattr(model, "_tools_vocab", None)
    if v is None:
        v = model._tools_vocab = _Vocab(model)
    return v


def _tool_schema(tool: Mapping) -> dict:
    fn = tool.get("function") or {}
    p = fn.get("parameters") or {"type": "object", "properties": {}}
    return dict(p)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _gemma_args_lark(schema: Mapping, quote: int, prefix: str) -> tuple[str, list[str]] | None:
    """A Lark rule (and its helper rules) for arguments in Gemma 4's call syntax that are
    valid against `schema`: {key:value,...} with bare keys, strings between <|"|> tokens
    (id `quote`), bare numbers/true/false/null, nested {} and []. Covers what tool schemas
    mostly use: objects (required properties first, then optional ones), strings (maxLength,
    enums, const), integers (small minimum..maximum ranges are enumerated), numbers and
    integers without bounds, booleans, null, arrays (maxItems up to 8), anyOf/oneOf and type
    lists. None for anything else (patterns, formats, minLength, bounded numbers, objects
    with only optional properties...): the caller then constrains JSON arguments instead."""
    rules: list[str] = []
    n = [0]

    def rule(body: str) -> str:
        name = f"{prefix}{n[0]}"
        n[0] += 1
        rules.append(f"{name}: {body}")
        return name

    def lit(v: Any) -> str | None:
        if isinstance(v, bool):
            return '"true"' if v else '"false"'
        if v is None:
            return '"null"'
        if isinstance(v, (int, float)):
            return json.dumps(json.dumps(v))
        if isinstance(v, str):
            return f"<[{quote}]> {json.dumps(v, ensure_ascii=False)} <[{quote}]>" if v else \
                f"<[{quote}]> <[{quote}]>"
        return None

    def val(sch: Any, depth: int = 0) -> str | None:
        if not isinstance(sch, Mapping) or depth > 8:
            return None
        if "enum" in sch or "const" in sch:
            opts = sch["enum"] if "enum" in sch else [sch["const"]]
            alts = [lit(v) for v in opts]
            return None if not alts or None in alts else "(" + " | ".join(alts) + ")"
        for k in ("anyOf", "oneOf"):
            if k in sch:
                alts = [val(x, depth + 1) for x in sch[k]]
                return None if not alts or None in alts else "(" + " | ".join(alts) + ")"
        if set(sch) & {"allOf", "$ref", "not", "if", "pattern", "format", "minLength",
                       "patternProperties", "minItems", "uniqueItems", "exclusiveMinimum",
                       "exclusiveMaximum", "multipleOf"}:
            return None
        t = sch.get("type")
        if isinstance(t, list):
            alts = [val({**sch, "type": x}, depth + 1) for x in t]
            return None if not alts or None in alts else "(" + " | ".join(alts) + ")"
        if t == "string":
            m = sch.get("maxLength")
            body = f"/[^\\x00]{{0,{int(m)}}}/" if isinstance(m, int) else "/[^\\x00]*/"
            return f"<[{quote}]> {_terminal(rules, prefix, n, body)} <[{quote}]>"
        if t in ("integer", "number"):
            lo, hi = sch.get("minimum"), sch.get("maximum")
            if lo is None and hi is None:
                body = "/-?[0-9]{1,12}/" if t == "integer" else "/-?[0-9]{1,12}(\\.[0-9]{1,8})?/"
                return _terminal(rules, prefix, n, body)
            if t == "integer" and isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo <= 64:
                return "(" + " | ".join(json.dumps(str(i)) for i in range(lo, hi + 1)) + ")"
            return None
        if t == "boolean":
            return '("true" | "false")'
        if t == "null":
            return '"null"'
        if t == "array":
            item = val(sch.get("items", {}), depth + 1) if sch.get("items") is not None else None
            if item is None:
                return None
            mx = sch.get("maxItems")
            if mx is None:
                return f'"[" ({item} ("," {item})*)? "]"'
            if not isinstance(mx, int) or mx > 8:
                return None
            inner = ""
            for _ in range(max(mx - 1, 0)):
                inner = f'("," {item} {inner})?'
            return f'"[" ({item} {inner})? "]"' if mx > 0 else '"[" "]"'
        if t == "object" or (t is None and "properties" in sch):
            props = sch.get("properties") or {}
            req = [k for k in props if k in set(sch.get("required") or [])]
            opt = [k for k in props if k not in req]
            if not all(_KEY.match(k) for k in props) or (opt and not req):
                return None
            parts = []
            for i, k in enumerate(req):
                v = val(props[k], depth + 1)
                if v is None:
                    return None
                parts.append(f'{json.dumps(("," if i else "") + k + ":")} {v}')
            for k in opt:
                v = val(props[k], depth + 1)
                if v is None:
                    return None
                parts.append(f'({json.dumps("," + k + ":")} {v})?')
            return '"{" ' + " ".join(parts) + ' "}"'
        return None

    top = val(schema)
    return None if top is None else (rule(top), rules)


def _terminal(rules: list[str], prefix: str, n: list[int], regex: str) -> str:
    """A named terminal (upper case: a lexeme) for a regex."""
    name = f"{prefix.upper()}T{n[0]}"
    n[0] += 1
    rules.append(f"{name}: {regex}")
    return name


def _call_grammar(vocab: _Vocab, tools: Sequence[Mapping], name: str | None) -> str:
    """An llguidance Lark grammar for exactly one call of `name` (or of any of the tools)
    with arguments valid against its schema."""
    from gemma4stack.constrain import _JSON_OPTIONS
    chosen = [t for t in tools if (t.get("function") or {}).get("name") == name] if name else list(tools)
    if not chosen:
        raise RequestError(f"tool_choice names the function {name!r}, which is not in tools",
                           "tool_choice")
    alts = []
    for i, t in enumerate(chosen):
        fname = t["function"]["name"]
        schema = {**_tool_schema(t), "x-guidance": _JSON_OPTIONS}
        native = _gemma_args_lark(_tool_schema(t), vocab.quote, f"a{i}_") \
            if vocab.native_tools and vocab.quote >= 0 else None
        if native is not None:                       # Gemma 4's own key:value syntax
            top, rules = native
            alts.append(f'call{i}: <[{vocab.call}]> "call:{fname}" {top} <[{vocab.call_end}]>')
            alts += rules
        elif vocab.native_tools:                     # JSON arguments in the native frame
            alts.append(f'call{i}: <[{vocab.call}]> "call:{fname}" %json {json.dumps(schema)} '
                        f'<[{vocab.call_end}]>')
        else:
            whole = {"type": "object", "properties": {"name": {"const": fname},
                                                      "arguments": _tool_schema(t)},
                     "required": ["name", "arguments"], "additionalProperties": False,
                     "x-guidance": _JSON_OPTIONS}
            alts.append(f"call{i}: %json {json.dumps(whole)}")
    return "start: " + " | ".join(f"call{i}" for i in range(len(chosen))) + "\n" + "\n".join(alts)


# --------------------------------------------------------------------------- decoding

_SAMPLING = ("min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
             "frequency_penalty", "logit_bias")


def _decode(model, ids: list[int], args: tuple, constraint, n_logprobs: int | None,
            sampling: dict, t0: float, sink=None) -> Iterator[tuple[int, tuple | None]]:
    """Token ids (and, with n_logprobs, (chosen_logprob, [(id, logprob)...])) of a request in
    the model's batching engine with the whole sampler chain and an optional llguidance
    constraint (its mask applied in the engine's step, the matcher advanced by the
    scheduler thread: gemma4stack.model._Scheduler), so these run batched with every other
    request on the model. The request is queued now (errors raise here); the returned
    iterator yields its tokens; at its end model.last_stats, and sink when given, get the
    GenerationStats (finish "stop" also when the constraint completed)."""
    max_tokens, temperature, top_k, top_p, seed, _ = args
    kw = {k: v for k, v in sampling.items() if v is not None}
    if kw.get("logit_bias"):
        kw["logit_bias"] = {int(k): float(v) for k, v in kw["logit_bias"].items()}
    if n_logprobs is not None:
        kw["logprobs"] = n_logprobs
    req = model._submit(ids, args, kw, constraint)
    return _engine_tokens(model, req, len(ids), n_logprobs is not None, t0, sink)


def _engine_tokens(model, req, n_prompt: int, logprobs: bool, t0: float, sink
                   ) -> Iterator[tuple[int, tuple | None]]:
    """(token, logprobs or None) of an engine request (None: max_tokens=0, nothing runs);
    closing it cancels the request (Model._end)."""
    ttft = None
    n_out = 0
    finish = None
    try:
        for ev in (req.events() if req is not None else ()):
            if ttft is None:
                ttft = (time.perf_counter() - t0) * 1e3
            n_out += 1
            yield ev[1], (ev[12] if logprobs else None)
    except GeneratorExit:
        finish = "cancelled"
        raise
    finally:
        model._end(req, n_prompt, n_out, finish, ttft, sink)


class _Stream:
    """Tokens -> ChatDelta: the UTF-8 text, split into content / reasoning / tool calls at
    the model's markers, with stop strings on the content and logprob entries. Iterate it;
    .finish_reason once it ended: "tool_calls" when a call was parsed, "stop" at a stop
    string, else the generation's (model.last_stats)."""

    def __init__(self, model, tokens: Iterator, vocab: _Vocab, prev: int, *, parse_tools: bool,
                 json_tools: bool, stops: list[str], n_logprobs: int | None,
                 single_call: bool = False, stats_box: list | None = None):
        self.model, self.tokens, self.v, self.prev = model, tokens, vocab, prev
        self._box = stats_box
        self.single_call = single_call
        self.parse_tools, self.json_tools, self.stops = parse_tools, json_tools, stops
        self.n_logprobs = n_logprobs
        self._finish: str | None = None
        self.n_calls = 0
        self._it = self._run()

    @property
    def stats(self):
        """The GenerationStats of this generation once its tokens ended (None before; without
        a stats_box, Model.last_stats)."""
        if self._box is None:
            return self.model.last_stats
        return self._box[0] if self._box else None

    @property
    def finish_reason(self) -> str | None:
        return self._finish or getattr(self.stats, "finish_reason", None)

    def __iter__(self):
        return self

    def __next__(self) -> ChatDelta:
        return next(self._it)

    def close(self):
        self._it.close()
        close = getattr(self.tokens, "close", None)
        if close:
            close()

    def _entry(self, tok: int, lp: tuple, prev: int) -> dict:
        piece = self.model._core.piece
        b = piece(tok, prev)
        top = [{"token": piece(i, prev).decode("utf-8", "replace"), "logprob": float(v),
                "bytes": list(piece(i, prev))} for i, v in lp[1][:self.n_logprobs]]
        return {"token": b.decode("utf-8", "replace"), "logprob": float(lp[0]), "bytes": list(b),
                "top_logprobs": top}

    def _run(self) -> Iterator[ChatDelta]:
        from gemma4stack.model import _find_stop, _partial_stop
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        v = self.v
        mode = "content"          # content | channel_name | reasoning | call
        held = ""                 # content text not yet sent (a stop string may start there)
        call_text = ""
        json_buf: str | None = None  # json_tools: the answer held back while it may be a call
        lps: list[dict] = []
        seen_text = False
        prev = self.prev
        stopped = False
        for tok, lp in self.tokens:
            if lp is not None:
                lps.append(self._entry(tok, lp, prev))
            if tok in v.marks:
                dec.decode(b"", final=True)
                if tok == v.response and self.parse_tools:
                    stopped = True                     # the model waits for a tool result
                    break
                if tok == v.chan and mode == "content":
                    mode = "channel_name"
                elif tok == v.chan_end and mode in ("reasoning", "channel_name"):
                    mode = "content"
                elif tok == v.call and mode == "content" and self.parse_tools:
                    mode, call_text = "call", ""
                elif tok == v.call_end and mode == "call":
                    mode = "content"
                    try:
                        name, args = parse_gemma4_call(call_text)
                    except ValueError:
                        held += v.marks[v.call] + call_text + v.marks[v.call_end]
                        continue
                    d = ChatDelta(tool_calls=[_openai_call(self.n_calls, name, args)],
                                  logprobs=lps or None)
                    self.n_calls, lps = self.n_calls + 1, []
                    yield d
                    if self.single_call:            # parallel_tool_calls=False
                        break
                elif mode == "content":
                    held += v.marks[tok]
                prev = tok
                continue
            text = dec.decode(self.model._core.piece(tok, prev))
            prev = tok
            if not text:
                continue
            if mode == "channel_name":
                nl = text.find("\n")
                if nl < 0:
                    continue                            # the channel's name ("thought")
                mode, text = "reasoning", text[nl + 1:]
                if not text:
                    continue
            if mode == "reasoning":
                yield ChatDelta(reasoning=text, logprobs=lps or None)
                lps = []
                continue
            if mode == "call":
                call_text += text
                continue
            if self.json_tools and not seen_text:
                s = text.lstrip()
                if s:
                    seen_text = True
                    if s[0] in "{[" or s.startswith("<tool_call>"):
                        json_buf = ""
            if json_buf is not None:
                json_buf += text
                continue
            held += text
            if self.stops:
                cut = _find_stop(held, self.stops)
                if cut is not None:
                    held = held[:cut]
                    stopped = True
                    break
                keep = _partial_stop(held, self.stops)
            else:
                keep = 0
            if len(held) > keep:
                yield ChatDelta(content=held[:len(held) - keep], logprobs=lps or None)
                held, lps = held[len(held) - keep:], []
        close = getattr(self.tokens, "close", None)
        if close:
            close()                   # a stop string or call ended it: free the engine's slot now
        if json_buf is not None:
            calls = _json_calls(json_buf)
            if calls and self.single_call:
                calls = calls[:1]
            if calls:
                yield ChatDelta(tool_calls=[_openai_call(i, n, a) for i, (n, a) in enumerate(calls)],
                                logprobs=lps or None)
                self.n_calls, lps = len(calls), []
            else:
                held += json_buf
        if mode == "content" and json_buf is None:
            held += dec.decode(b"", final=True)
        if held or lps:
            yield ChatDelta(content=held or None, logprobs=lps or None)
        if self.n_calls:
            self._finish = "tool_calls"
        elif stopped:
            self._finish = "stop"


# --------------------------------------------------------------------------- entry points

def _reasoning_flag(enable_thinking: bool | None, reasoning_effort: str | None) -> bool | None:
    if enable_thinking is not None:
        return bool(enable_thinking)
    if reasoning_effort is None:
        return None
    return reasoning_effort not in ("none", "minimal")


def _response_constraint(model, response_format: Mapping | None):
    from gemma4stack.constrain import Constraint
    if not response_format:
        return None, None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None, None
    if kind == "json_object":
        return Constraint.for_request(model, json_object=True), kind
    if kind == "json_schema":
        js = response_format.get("json_schema") or {}
        schema = js.get("schema")
        if schema is None:
            raise RequestError("response_format json_schema needs a 'schema'",
                               "response_format.json_schema.schema")
        try:
            return Constraint.for_request(model, json_schema=schema), kind
        except ValueError as e:
            raise RequestError(str(e), "response_format.json_schema.schema") from None
    raise RequestError(f"unsupported response_format type {kind!r}", "response_format.type")


def chat(model, messages: Sequence[Mapping], *, tools: Sequence[Mapping] | None = None,
         tool_choice: Any = None, response_format: Mapping | None = None,
         logprobs: bool | int | None = None, top_logprobs: int | None = None,
         enable_thinking: bool | None = None, reasoning_effort: str | None = None,
         parallel_tool_calls: bool | None = None, stream: bool = False,
         max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
         seed: int | None = None, stop: str | Sequence[str] | None = None,
         add_generation_prompt: bool = True, **options: Any):
    """Model.chat with tools / response_format / reasoning / logprobs (see the module doc).

    Returns a ChatResult, or with stream=True an iterator of ChatDelta (its
    .finish_reason is set when it ends). options: min_p, repeat_penalty, repeat_last_n,
    presence_penalty, frequency_penalty, logit_bias ({id: bias}), and template keywords.
    Raises RequestError (a ValueError) for a bad schema, an unknown tool_choice function
    or unsupported options; what Model.chat raises otherwise."""
    from gemma4stack.constrain import Constraint
    from gemma4stack.model import _check_sampling
    t0 = time.perf_counter()
    args = _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop)
    sampling = {k: options.pop(k) for k in _SAMPLING if k in options}
    v = _vocab(model)
    tools = list(tools or [])
    for t in tools:
        if not isinstance(t, Mapping) or not isinstance((t.get("function") or {}).get("name"), str):
            raise RequestError("each tool needs function.name", "tools")
    choice_name = None
    if isinstance(tool_choice, Mapping):
        choice_name = (tool_choice.get("function") or {}).get("name")
    elif tool_choice not in (None, "auto", "none", "required"):
        raise RequestError(f"tool_choice must be none, auto, required or a function, "
                           f"not {tool_choice!r}", "tool_choice")
    if tool_choice == "none":
        tools = []
    constraint, fmt = _response_constraint(model, response_format)
    if tools and (tool_choice == "required" or choice_name):
        if constraint is not None:
            raise RequestError("tool_choice required/named and a JSON response_format "
                               "cannot both constrain one reply", "response_format")
        try:
            constraint = Constraint(model, _call_grammar(v, tools, choice_name))
        except RequestError:
            raise
        except ValueError as e:
            raise RequestError(f"a tool's parameters schema is invalid: {e}", "tools") from None
    thinking = _reasoning_flag(enable_thinking, reasoning_effort)
    if constraint is not None:
        thinking = False                  # the constrained answer starts right away
    tkw = dict(options)
    if thinking is not None:
        tkw["enable_thinking"] = thinking
    template = model.chat_template
    if template:
        text = model.apply_chat_template(_template_messages(messages), add_generation_prompt,
                                         tools=tools or None, **tkw)
        ids = model._text_ids(text)
    else:
        ids = model.tokenize(render_raw_prompt(messages, tools), add_bos=bool(model._core.add_bos))
    n_lp = None
    if logprobs:
        n_lp = int(top_logprobs or 0) if logprobs is True else int(logprobs)
    box: list = []
    tokens = _decode(model, ids, args, constraint, n_lp, sampling, t0, box.append)
    st = _Stream(model, tokens, v, ids[-1], parse_tools=bool(tools),
                 json_tools=bool(tools) and not v.native_tools, stops=args[5], n_logprobs=n_lp,
                 single_call=parallel_tool_calls is False, stats_box=box)
    return st if stream else _collect(st, fmt)


def _collect(st: _Stream, fmt: str | None) -> ChatResult:
    content, reasoning, calls, lps = [], [], [], []
    have_lp = st.n_logprobs is not None
    for d in st:
        if d.content:
            content.append(d.content)
        if d.reasoning:
            reasoning.append(d.reasoning)
        if d.tool_calls:
            calls += [{k: x for k, x in c.items() if k != "index"} for c in d.tool_calls]
        if d.logprobs:
            lps += d.logprobs
    text = "".join(content) if content or not calls else None
    parsed = None
    if fmt in ("json_object", "json_schema") and text:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None                        # cut by max_tokens
    return ChatResult(content=text, reasoning="".join(reasoning) or None, tool_calls=calls,
                      finish_reason=st.finish_reason or "stop", logprobs=lps if have_lp else None, parsed=parsed)


def generate(model, prompt: str, *, json_schema: Any = None, regex: str | None = None,
             grammar: str | None = None, logprobs: int | None = None, stream: bool = False,
             max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, seed: int | None = None,
             stop: str | Sequence[str] | None = None, **sampling: Any):
    """Model.generate with a constraint (json_schema / regex / grammar, see
    gemma4stack.constrain.grammar_for), the whole sampler chain (sampling: min_p,
    repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty, logit_bias) and
    logprobs. Returns the text (str), or with stream=True an iterator of text pieces; with
    logprobs an iterator of / a list of ChatDelta instead (content + logprob entries)."""
    from gemma4stack.constrain import Constraint
    from gemma4stack.model import _check_sampling
    t0 = time.perf_counter()
    args = _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop)
    unknown = set(sampling) - set(_SAMPLING)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    constraint = None
    if json_schema is not None or regex is not None or grammar is not None:
        constraint = Constraint.for_request(model, json_schema=json_schema, regex=regex,
                                            grammar=grammar)
    ids = model.tokenize(prompt, add_bos=bool(model._core.add_bos))
    box: list = []
    tokens = _decode(model, ids, args, constraint, logprobs, sampling, t0, box.append)
    st = _Stream(model, tokens, _vocab(model), ids[-1] if ids else -1, parse_tools=False,
                 json_tools=False, stops=args[5], n_logprobs=logprobs, stats_box=box)
    if logprobs is not None:
        return st if stream else list(st)
    pieces = (d.content for d in st if d.content)
    return pieces if stream else "".join(pieces)


# --------------------------------------------------------------------------- gateway

def local_options(extra: Mapping[str, Any], call: str) -> dict:
    """Keyword arguments for a local Model's chat() (call "chat") or generate() (call
    "completion": completions, and chats rendered without a template) from the request
    fields the gateway forwards in GenRequest.extra (OpenAI names). `n` is not among them:
    the gateway's LocalBackend runs n choices as n requests in the engine."""
    kw: dict = {}
    for k in ("presence_penalty", "frequency_penalty", "min_p", "repeat_penalty", "repeat_last_n"):
        if extra.get(k) is not None:
            kw[k] = extra[k]
    if extra.get("logit_bias"):
        kw["logit_bias"] = {int(k): float(v) for k, v in extra["logit_bias"].items()}
    if call == "chat":
        for k in ("tools", "tool_choice", "response_format", "reasoning_effort",
                  "parallel_tool_calls"):
            if extra.get(k) is not None:
                kw[k] = extra[k]
        if extra.get("logprobs"):
            kw["logprobs"] = True
            kw["top_logprobs"] = int(extra.get("top_logprobs") or 0)
        tk = extra.get("chat_template_kwargs")
        if isinstance(tk, Mapping) and "enable_thinking" in tk:
            kw["enable_thinking"] = bool(tk["enable_thinking"])
    elif extra.get("logprobs") is True:            # a chat's logprobs=true, top_logprobs=N
        kw["logprobs"] = int(extra.get("top_logprobs") or 0)
    elif extra.get("logprobs") not in (None, False):   # completions: logprobs=N (0..5)
        kw["logprobs"] = int(extra["logprobs"])
    return kw
