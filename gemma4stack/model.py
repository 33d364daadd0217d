"""Text generation with a GGUF model in the C core (csrc/model/).

    >>> from gemma4stack import Model
    >>> with Model("TinyStories-656K-Q8_0.gguf") as m:
    ...     print(m.generate("Once upon a time", max_tokens=32, temperature=0))
    ...     for piece in m.generate("The cat", stream=True):   # text as it is produced
    ...         print(piece, end="", flush=True)
    ...     m.last_stats                                          # GenerationStats
    >>> with Model("gemma-4-E2B-it-Q4_0.gguf") as m:              # a model with a chat template
    ...     m.chat([{"role": "user", "content": "Hello!"}], max_tokens=64)

The forward pass, sampling and the token loop run in C with the GIL released;
this module turns token ids into text (whole UTF-8 characters only), applies
stop strings and keeps the timing figures. Each generate() gives the same
result as from an empty context; the KV cache of a prompt prefix shared with
the previous call (a chat's history) is reused rather than recomputed. One
generation runs at a time per Model. chat() renders the GGUF's
tokenizer.chat_template with jinja2 as HF transformers' apply_chat_template
does, and stops at the end-of-turn token.

Also the `gemma4stack run` command (register_cli).
"""
from __future__ import annotations

import argparse
import codecs
import functools
import html
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from gemma4stack import _core
from gemma4stack._core import LimitError, UnsupportedError

__all__ = ["Model", "GenerationStats", "register_cli"]


@dataclass
class GenerationStats:
    """Figures of one generate() call.

    prompt_tokens: tokens prefilled (BOS included). completion_tokens: tokens sampled
    (text cut by a stop string still counts its tokens; the end-of-generation token does not).
    ttft_ms: from the generate() call (tokenization included) to the first sampled token.
    prefill_ms / prefill_tokens_per_s: the prompt's forward pass in the C core, over the
    prompt tokens that were not reused from the previous call (cached_tokens, see generate).
    decode_ms / decode_tokens_per_s: the one-token forward passes after it (with sampling),
    0.0 when there were none. finish_reason: "stop" (end-of-generation token or a stop
    string), "length" (max_tokens or the context is full), or "cancelled" (the consumer
    closed the stream before the end).
    """

    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    prefill_ms: float
    prefill_tokens_per_s: float
    decode_ms: float
    decode_tokens_per_s: float
    finish_reason: str
    cached_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{_fmt(v)}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table><caption>GenerationStats</caption>{rows}</table>"


def _fmt(v: Any) -> str:
    return f"{v:,.1f}" if isinstance(v, float) else html.escape(str(v))


class Model:
    """A GGUF model loaded by the C core.

    path: a .gguf file (architectures llama, gemma4, gemma3). threads: forward-pass threads
    (None: one per physical core). context: KV cache length in tokens (None: the
    model's trained context, capped at 4096).

    Raises FileNotFoundError (no such file), OSError, GGUFError (not a valid GGUF),
    UnsupportedError (unknown architecture or tensor type; the message names it),
    LimitError, MemoryError.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 context: int | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        if context is not None and context < 1:
            raise ValueError(f"context must be >= 1 tokens (got {context})")
        self.path = os.fspath(path)
        # the core takes an int32; anything larger is far over its context cap,
        # which then raises LimitError naming GEMMA4STACK_MAX_CONTEXT
        n_ctx = min(context, 2**31 - 1) if context else 0
        self._core = _core.Model(self.path, n_ctx=n_ctx, n_threads=threads or 0)
        self._gguf = None
        self.last_stats: GenerationStats | None = None
        # (epoch, ids): token ids whose K/V the last generation left at positions 0..len-1,
        # valid while the core's epoch is unchanged (nothing else used the cache)
        self._kv: tuple[int, list[int]] | None = None

    # ------------------------------------------------------------ properties

    @property
    def n_ctx(self) -> int:
        """KV cache length in tokens: the longest prompt + completion."""
        return self._core.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def threads(self) -> int:
        return self._core.n_threads

    @property
    def architecture(self) -> str:
        return self._core.arch

    @property
    def bos_id(self) -> int:
        return self._core.bos_id

    @property
    def eos_id(self) -> int:
        return self._core.eos_id

    def _file(self):
        if self._gguf is None:
            from gemma4stack.gguf import read_gguf
            self._gguf = read_gguf(self.path)
        return self._gguf

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF key/value metadata (arrays as lists), read with gemma4stack.gguf."""
        return self._file().metadata

    def memory(self) -> dict[str, int]:
        """Bytes in use: weights_bytes (tensor data mapped from the file), kv_bytes
        (the KV cache; Gemma 3/4 size it per layer type: the whole context on global
        layers, a ring of sliding_window + 63 positions on sliding-window layers, nothing
        on Gemma 4's KV-shared layers), scratch_bytes (activation buffers)."""
        return self._core.memory()

    # --------------------------------------------------------------- tokens

    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text` (as llama.cpp encodes it); BOS first when add_bos and the
        vocabulary has one. parse_special: control-token text such as "<|turn>" becomes that
        token (chat prompts) instead of being spelled out."""
        return self._core.tokenize(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of a token sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return self._core.detokenize(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position: float32 array of shape (len(ids), n_vocab), computed
        from an empty context (position 0). Raises ValueError for an empty list or an id
        outside the vocabulary, LimitError when longer than the context."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("logits: need at least one token id")
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        self._core.forward(ids, 0, out, True)
        return out

    # ----------------------------------------------------------- generation

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
                 stream: bool = False, stop: str | Sequence[str] | None = None,
                 **extended: Any) -> str | Iterator[str]:
        """Continue `prompt`; returns the new text (the prompt is not repeated).

        max_tokens: at most this many tokens. temperature: 0 = greedy; top_k (0 = off),
        top_p (1 = off) as llama.cpp's sampler chain. seed: for reproducible sampling
        (None: a random one). stop: a string or strings; generation ends before the first
        one and it is not included. stream=True returns a generator of text pieces as
        tokens are produced (only whole UTF-8 characters); closing it stops generation.
        Afterwards .last_stats holds a GenerationStats.

        extended (gemma4stack.tools.generate): json_schema=, regex=, grammar= (Lark or GBNF)
        constrain the output with llguidance; min_p, repeat_penalty, repeat_last_n,
        presence_penalty, frequency_penalty, logit_bias={id: bias} complete the sampler;
        logprobs=N returns ChatDelta pieces with log-probabilities.

        Raises LimitError when the prompt is longer than the context, ValueError for bad
        arguments (checked at the call, also with stream=True), a bad schema or grammar.
        """
        if _extended(extended):
            from gemma4stack import tools
            return tools.generate(self, prompt, max_tokens=max_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, stream=stream, stop=stop,
                                  **extended)
        t0 = time.perf_counter()
        args = _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop)
        ids = self.tokenize(prompt, add_bos=bool(self._core.add_bos))
        return self._generate_ids(ids, args, stream, t0)

    def _generate_ids(self, ids: list[int], args: tuple, stream: bool, t0: float
                      ) -> str | Iterator[str]:
        """Run the C generation over prompt ids; args from _check_sampling."""
        max_tokens, temperature, top_k, top_p, seed, stops = args
        if not ids:
            raise ValueError("the prompt is empty and the vocabulary has no BOS token")
        if len(ids) > self.n_ctx:
            raise LimitError(f"the prompt is {len(ids)} tokens, longer than the context of "
                             f"{self.n_ctx} tokens")
        args = (ids, max_tokens, temperature, top_k, top_p, seed)
        n_keep, epoch = self._reusable_prefix(ids)
        self._kv = None
        try:
            gen = self._core.generate_iter(*args, n_keep=n_keep, epoch=epoch)
        except RuntimeError:
            if not n_keep:
                raise
            gen = self._core.generate_iter(*args)      # the cache changed meanwhile
        pieces = self._pieces(gen, ids, stops, t0)
        return pieces if stream else "".join(pieces)

    # ------------------------------------------------------------------ chat

    @property
    def chat_template(self) -> str | None:
        """The GGUF's tokenizer.chat_template (a jinja2 template), None when it has none."""
        return self._core.gguf_str("tokenizer.chat_template")

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        """The prompt text for `messages` (dicts with "role" and "content"), rendered from the
        GGUF's tokenizer.chat_template as HF transformers' apply_chat_template(tokenize=False)
        does: sandboxed jinja2 with trim_blocks/lstrip_blocks, raise_exception, strftime_now,
        a tojson that keeps non-ASCII, and bos_token / eos_token (the vocabulary's strings).
        add_generation_prompt: end with the opening of the model's turn. template_kwargs are
        passed to the template (e.g. tools=[...], enable_thinking=True).

        Raises UnsupportedError when the GGUF has no chat template, jinja2.TemplateError when
        the template fails (raise_exception in it included), TypeError for a message that is
        not a mapping."""
        template = self.chat_template
        if not template:
            raise UnsupportedError(f"{self.path}: the GGUF has no tokenizer.chat_template; "
                                   "use generate() with a prompt in the model's own format")
        special = {}
        for name, tid in (("bos_token", self._core.bos_id), ("eos_token", self._core.eos_id)):
            text = self._core.token_text(tid) if tid >= 0 else None
            if text is not None:
                special[name] = text
        return render_chat_template(template, messages, add_generation_prompt,
                                    **{**special, **template_kwargs})

    def chat(self, messages: Sequence[Mapping[str, Any]], max_tokens: int = 128,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
             seed: int | None = None, stream: bool = False,
             stop: str | Sequence[str] | None = None, add_generation_prompt: bool = True,
             **template_kwargs: Any) -> str | Iterator[str]:
        """The model's reply to a conversation: `messages` rendered with apply_chat_template,
        tokenized with special tokens parsed (so "<|turn>" in the template is one token, as
        HF's tokenizer(add_special_tokens=False) does; BOS is added only when the template
        did not start with it and the vocabulary asks for it), then generated until the
        end-of-turn token (<turn|>, <end_of_turn>, EOS: the tokenizer's end-of-generation set),
        which is not part of the reply. Sampling arguments, stream and stop as generate();
        .last_stats afterwards. A conversation that extends the previous one reuses its KV
        cache for the shared prefix.

        Agent features (gemma4stack.tools.chat; the reply is then a tools.ChatResult with
        .content / .tool_calls / .reasoning, or with stream=True an iterator of ChatDelta):
        tools=[...] (parsed into OpenAI tool_calls), tool_choice ("auto" | "none" |
        "required" | {"type": "function", "function": {"name": ...}}, the last two
        constrained), response_format ({"type": "json_object"} or {"type": "json_schema",
        "json_schema": {"schema": {...}}}, constrained), logprobs=True with top_logprobs=N,
        enable_thinking / reasoning_effort (Gemma 4 thinking into .reasoning), and the
        sampler options of generate(). A model without a chat template then gets the tools
        in a raw prompt.

        Raises UnsupportedError when the GGUF has no chat template, LimitError when the
        rendered prompt is longer than the context, ValueError for bad arguments."""
        if _agent_chat(template_kwargs):
            from gemma4stack import tools
            return tools.chat(self, messages, max_tokens=max_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, stream=stream, stop=stop,
                              add_generation_prompt=add_generation_prompt, **template_kwargs)
        t0 = time.perf_counter()
        args = _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop)
        text = self.apply_chat_template(messages, add_generation_prompt, **template_kwargs)
        return self._generate_ids(self._chat_ids(text), args, stream, t0)

    def _chat_ids(self, text: str) -> list[int]:
        """Token ids of a rendered chat prompt: special tokens parsed, BOS added only when
        the template did not start with it and the vocabulary asks for it."""
        ids = self.tokenize(text, add_bos=False, parse_special=True)
        bos = self._core.bos_id
        if self._core.add_bos and bos >= 0 and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _reusable_prefix(self, ids: list[int]) -> tuple[int, int]:
        """(n_keep, epoch): how many leading prompt tokens the KV cache still holds from the
        previous generation (at most len(ids) - 1: the last one is run for its logits).
        Positions hold the same K/V whether computed in a batch or one by one, so reuse
        changes speed only, not results."""
        if self._kv is None:
            return 0, 0
        epoch, cached = self._kv
        n = 0
        for a, b in zip(cached, ids[:-1]):
            if a != b:
                break
            n += 1
        # a sliding-window layer's ring buffer may no longer hold what position n looks at
        return (self._core.kv_keep(n) if n else 0), epoch

    def _pieces(self, gen, ids: list[int], stops: list[str], t0: float) -> Iterator[str]:
        """Token ids from the C generation -> text pieces, with stop strings applied."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        prev = ids[-1]
        out: list[int] = []
        held = ""            # text not yet yielded: it may be the start of a stop string
        finish = None
        ttft = None
        try:
            for tok in gen:
                if ttft is None:
                    ttft = (time.perf_counter() - t0) * 1e3
                out.append(tok)
                text = decoder.decode(self._core.piece(tok, prev))
                prev = tok
                if not text:
                    continue
                if not stops:
                    yield text
                    continue
                held += text
                cut = _find_stop(held, stops)
                if cut is not None:
                    finish = "stop"
                    if cut:
                        yield held[:cut]
                    held = ""
                    break
                keep = _partial_stop(held, stops)
                if len(held) > keep:
                    yield held[:len(held) - keep]
                    held = held[len(held) - keep:]
            if finish is None:
                held += decoder.decode(b"", final=True)
                cut = _find_stop(held, stops) if stops else None
                if cut is not None:
                    finish, held = "stop", held[:cut]
                if held:
                    yield held
        except GeneratorExit:
            finish = "cancelled"
            raise
        finally:
            s = gen.stats()
            gen.close()
            self.last_stats = _stats(s, finish or s["finish_reason"] or "stop", ttft)
            self._kv = (s["epoch"], (ids + out)[:s["n_past"]])

    # -------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Free the weights mapping, KV cache and threads; later calls raise ValueError."""
        self._core.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._core.closed:
            return f"Model({self.path!r}, closed)"
        f = self._file()
        types = ", ".join(f"{k}: {v}" for k, v in f.type_counts().items())
        return (f"Model({self.path!r}, architecture={self.architecture}, "
                f"params={f.n_parameters:,}, size={f.tensor_bytes:,} bytes, types={{{types}}}, "
                f"n_ctx={self.n_ctx}, threads={self.threads})")

    def _repr_html_(self) -> str:
        if self._core.closed:
            return f"<p>Model {html.escape(self.path)} (closed)</p>"
        f = self._file()
        mem = self.memory()
        rows = [
            ("file", self.path), ("architecture", self.architecture),
            ("name", f.metadata.get("general.name", "")),
            ("parameters", f"{f.n_parameters:,}"), ("weights", f"{f.tensor_bytes / 2**20:,.2f} MiB"),
            ("tensor types", ", ".join(f"{k} x{v}" for k, v in f.type_counts().items())),
            ("context", f"{self.n_ctx} tokens (trained: "
                        f"{f.metadata.get(f'{self.architecture}.context_length', '?')})"),
            ("vocabulary", f"{self.n_vocab} tokens"), ("threads", self.threads),
            ("KV cache", f"{mem['kv_bytes'] / 2**20:,.2f} MiB"),
            ("scratch", f"{mem['scratch_bytes'] / 2**20:,.2f} MiB"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table><caption>gemma4stack.Model</caption>{body}</table>"


_EXTENDED = ("json_schema", "regex", "grammar", "logprobs", "min_p", "repeat_penalty",
             "repeat_last_n", "presence_penalty", "frequency_penalty", "logit_bias")
_AGENT = ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs",
          "reasoning_effort", "parallel_tool_calls") + _EXTENDED[4:]


def _extended(kw: dict) -> bool:
    """generate(): True when a keyword needs gemma4stack.tools.generate (TypeError for an
    unknown one)."""
    unknown = set(kw) - set(_EXTENDED)
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return any(v is not None for v in kw.values())


def _agent_chat(kw: dict) -> bool:
    """chat(): True when the call asks for tools, structured output, logprobs, reasoning
    control or sampler options (then a ChatResult is returned; plain chats keep str)."""
    return any(kw.get(k) is not None for k in _AGENT) or bool(kw.get("enable_thinking"))


def _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop) -> tuple:
    """Validated (max_tokens, temperature, top_k, top_p, seed, stops) for the C generation;
    ValueError naming the bad argument."""
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be an int >= 0 (got {max_tokens!r})")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature!r})")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (got {top_k!r})")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (got {top_p!r})")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise ValueError("stop must be a string or a list of strings")
    stops = [s for s in stops if s]
    if seed is None:
        seed = secrets.randbits(64)
    return (max_tokens, float(temperature), top_k, float(top_p), int(seed) & (2**64 - 1), stops)


# ----------------------------------------------------------------------- chat templates

@functools.lru_cache(maxsize=1)
def _template_error_class():
    """ChatTemplateError, made once jinja2 is imported (it is imported lazily)."""
    import jinja2

    class ChatTemplateError(jinja2.exceptions.TemplateError, ValueError):
        """A chat template's raise_exception(): the messages are not valid for it."""
    return ChatTemplateError


@functools.lru_cache(maxsize=8)
def _compile_chat_template(template: str):
    """A jinja2 template in the environment HF transformers gives chat templates
    (utils/chat_template_utils.py): ImmutableSandboxedEnvironment (templates from the Hub are
    untrusted code), trim_blocks + lstrip_blocks, the loopcontrols extension, a {% generation %}
    block rendered as its body, and the globals raise_exception / strftime_now."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # HF marks assistant spans with {% generation %}...{% endgeneration %}; we only render
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        # the template rejects the conversation (e.g. roles that do not alternate): the
        # caller's mistake, so also a ValueError (the gateway answers 400, not 500)
        raise _template_error_class()(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; HF's does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """Messages as plain JSON-like data (dicts, lists, str, numbers), so the sandboxed template
    never sees the caller's objects (pydantic models are dumped)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    if isinstance(value, str):          # subclasses (enums...) back to the base type
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]],
                         add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """Render a chat template (jinja2 source) for messages, as HF's apply_chat_template
    (tokenize=False) renders it: the template sees messages, add_generation_prompt, tools and
    documents (None unless given) and every other keyword (bos_token, eos_token, ...).
    Raises TypeError for a message that is not a mapping, jinja2.TemplateError from the
    template."""
    msgs = _plain(list(messages))
    for m in msgs:
        if not isinstance(m, dict):
            raise TypeError(f"chat messages must be mappings with 'role' and 'content', got {m!r}")
    kw = {"tools": None, "documents": None, **_plain(kwargs)}
    return _compile_chat_template(template).render(
        messages=msgs, add_generation_prompt=add_generation_prompt, **kw)


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _stats(s: dict, finish: str, ttft_ms: float | None) -> GenerationStats:
    def rate(n: int, ms: float) -> float:
        return n / ms * 1e3 if n and ms > 0 else 0.0
    return GenerationStats(
        prompt_tokens=s["prompt_tokens"], completion_tokens=s["completion_tokens"],
        ttft_ms=ttft_ms if ttft_ms is not None else s["ttft_ms"],
        prefill_ms=s["prefill_ms"],
        prefill_tokens_per_s=rate(s["prompt_tokens"] - s["cached_tokens"], s["prefill_ms"]),
        decode_ms=s["decode_ms"], decode_tokens_per_s=rate(s["decode_steps"], s["decode_ms"]),
        finish_reason=finish, cached_tokens=s["cached_tokens"])


# ------------------------------------------------------------------------ CLI

def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="generate text from a GGUF model",
        description="Continue a prompt with a GGUF model. The continuation alone goes to stdout "
                    "(streamed); speed figures go to stderr.")
    p.add_argument("--model", required=True, metavar="PATH", help="GGUF file")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--max-tokens", type=int, default=128, metavar="N")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0: greedy")
    p.add_argument("--top-k", type=int, default=40, metavar="K", help="0: off")
    p.add_argument("--top-p", type=float, default=0.95, metavar="P", help="1: off")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="default: random")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop before this text (repeatable)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="default: one per physical core")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="KV cache tokens (default: the model's, capped at 4096)")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the GGUF's chat template")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    t_load = time.perf_counter()
    with Model(args.model, threads=args.threads, context=args.context) as m:
        load_ms = (time.perf_counter() - t_load) * 1e3
        out = sys.stdout
        kw = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed, stream=True, stop=args.stop)
        if args.chat:
            pieces = m.chat([{"role": "user", "content": args.prompt}], **kw)
        else:
            pieces = m.generate(args.prompt, **kw)
        try:
            for piece in pieces:
                out.write(piece)
                out.flush()
        finally:
            pieces.close()
        if out.isatty():
            out.write("\n")
        s = m.last_stats
        print(f"load {load_ms:.0f} ms; "
              f"prompt {s.prompt_tokens} tokens, generated {s.completion_tokens} tokens "
              f"(finish: {s.finish_reason}); TTFT {s.ttft_ms:.1f} ms; prefill "
              f"{s.prefill_tokens_per_s:.1f} tokens/s; decode {s.decode_tokens_per_s:.1f} tokens/s; "
              f"threads {m.threads}", file=sys.stderr)
    return 0
