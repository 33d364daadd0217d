"""Text generation with a GGUF model in the C core (csrc/model/).

    >>> from gemma4stack import Model
    >>> with Model("TinyStories-656K-Q8_0.gguf") as m:
    ...     print(m.generate("Once upon a time", max_tokens=32, temperature=0))
    ...     for piece in m.generate("The cat", stream=True):   # text as it is produced
    ...         print(piece, end="", flush=True)
    ...     m.last_stats                                          # GenerationStats
    >>> with Model("gemma-4-E2B-it-Q4_0.gguf") as m:              # a model with a chat template
    ...     m.chat([{"role": "user", "content": "Hello!"}], max_tokens=64)

Generation runs in the C core's continuous-batching engine (csrc/engine/):
generate() and chat() may be called from many threads (or asyncio tasks, each
in a thread) at once, and every call running at the same time decodes in the
same forward step, which reads the weights once for all of them. A scheduler
thread per Model runs the steps with the GIL released; this module turns token
ids into text (whole UTF-8 characters only), applies stop strings and keeps
the timing figures. Each generate() gives the same result as from an empty
context; KV blocks of a prompt prefix computed before (a system prompt, a
chat's history) are reused rather than recomputed (the engine's prefix
cache). chat() renders the GGUF's tokenizer.chat_template with jinja2 as HF
transformers' apply_chat_template does, and stops at the end-of-turn token.
generate_batch() / chat_batch() run a list of prompts (a data set) with a
progress bar and return the results in order.

Also the `gemma4stack run` command (register_cli).
"""
from __future__ import annotations

import argparse
import codecs
import functools
import html
import json
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from gemma4stack import _core
from gemma4stack._core import LimitError, UnsupportedError

__all__ = ["Model", "GenerationStats", "EngineStats", "TextStream", "QueueFullError", "register_cli"]


class QueueFullError(LimitError):
    """The model's waiting queue is full (Model(queue_max=...)): try again later.
    The gateway answers it with 429 and Retry-After."""


@dataclass
class GenerationStats:
    """Figures of one generate() call.

    prompt_tokens: tokens prefilled (BOS included). completion_tokens: tokens sampled
    (text cut by a stop string still counts its tokens; the end-of-generation token does not).
    ttft_ms: from the generate() call (tokenization included) to the first sampled token.
    prefill_ms / prefill_tokens_per_s: the prompt's forward pass in the C core, over the
    prompt tokens that were not reused from the previous call (cached_tokens, see generate).
    decode_ms / decode_tokens_per_s: the decode forward passes after it (with sampling)
    and the tokens they gave after the first (one per pass, more with accepted drafts),
    0.0 when there were none. finish_reason: "stop" (end-of-generation token or a stop
    string), "length" (max_tokens or the context is full), or "cancelled" (the consumer
    closed the stream before the end). queue_ms: time waiting for a free sequence slot and
    KV blocks before the prefill started (other requests running). With other requests
    in the same steps, prefill_ms and decode_ms are wall time of steps shared with them.
    draft_tokens / accepted_tokens: speculative decoding (Model(draft="ngram")): draft
    tokens proposed by prompt lookup and, of them, accepted (each one a completion token
    that cost no forward step of its own); draft_steps: decode steps that carried drafts
    (draft_tokens / draft_steps is the mean draft length); 0 without drafts.
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
    queue_ms: float = 0.0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    draft_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{_fmt(v)}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table><caption>GenerationStats</caption>{rows}</table>"


def _fmt(v: Any) -> str:
    return f"{v:,.1f}" if isinstance(v, float) else html.escape(str(v))


@dataclass
class EngineStats:
    """The batching engine now (Model.stats()).

    running / waiting: requests decoding or prefilling / queued for a slot and KV blocks.
    parallel: sequences per step at most; batch_tokens: tokens per step at most (decode
    tokens plus prompt chunks). kv_blocks_*: KV cache blocks of 32 positions (per layer
    group: global and sliding-window layers have pools of their own; counts are summed):
    used by sequences, free, shared by more than one sequence, cached (free but holding a
    prefix that a later prompt can reuse), reserved (promised to running sequences).
    kv_bytes: the pool. prefix_hit_rate: prompt tokens reused / prompt tokens looked up.
    steps / step_tokens: forward steps run and tokens through them.
    """

    running: int
    waiting: int
    parallel: int
    batch_tokens: int
    queue_max: int
    kv_type: str
    kv_bytes: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_shared: int
    kv_blocks_cached: int
    kv_blocks_reserved: int
    prefix_queried_tokens: int
    prefix_hit_tokens: int
    prefix_hit_rate: float
    steps: int
    step_tokens: int
    prompt_tokens: int
    generated_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{_fmt(v)}</td></tr>"
                       for k, v in self.to_dict().items())
        return f"<table><caption>EngineStats</caption>{rows}</table>"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def parse_draft(draft: str | os.PathLike | None) -> str | None:
    """The draft model path of a Model(draft=...) value: None for None and "ngram" (prompt
    lookup), PATH for "model:PATH", "mtp:PATH" (a Gemma 4 MTP assistant, gemma4-assistant)
    or for a path (str or os.PathLike) of an existing file. Raises ValueError for anything
    else (the message lists the forms), FileNotFoundError for "model:PATH" / "mtp:PATH" of
    a missing file."""
    if draft is None or draft == "ngram":
        return None
    if isinstance(draft, str) and draft.startswith(("model:", "mtp:")):
        path = draft.split(":", 1)[1]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"draft model {path!r} does not exist")
        return path
    if isinstance(draft, (str, os.PathLike)) and os.path.isfile(draft):
        return os.fspath(draft)
    raise ValueError(f"draft must be None, 'ngram', 'model:PATH', 'mtp:PATH' or the path of a "
                     f"GGUF file (got {draft!r})")


def check_same_vocab(target, drafter, target_path: str, draft_path: str) -> None:
    """ValueError unless two core models have the same vocabulary: the same n_vocab and the
    same token string at every id (a draft model's token ids must mean the target's)."""
    if drafter.n_vocab != target.n_vocab:
        raise ValueError(f"draft model {draft_path} has a vocabulary of {drafter.n_vocab} tokens, "
                         f"{target_path} one of {target.n_vocab}: a draft model needs the same vocabulary")
    for i in range(target.n_vocab):
        if drafter.token_text(i) != target.token_text(i):
            raise ValueError(f"draft model {draft_path}: token {i} is {drafter.token_text(i)!r}, in "
                             f"{target_path} {target.token_text(i)!r}: a draft model needs the same vocabulary")


class TextStream:
    """The text pieces of a streaming generate() / chat() (an iterator of str). .stats: the
    GenerationStats of this generation once it has ended (None before), also when other
    generations run at the same time (Model.last_stats is whichever ended last). close()
    stops the generation; its KV blocks are freed at once."""

    def __init__(self, gen: Iterator[str], box: list):
        self._gen, self._box = gen, box

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    @property
    def stats(self) -> GenerationStats | None:
        return self._box[0] if self._box else None


class _Request:
    """One generation in the engine: its events arrive on a queue from the scheduler
    thread as (id, token, finish, n_prompt, n_cached, n_decode, queue_ms, prefill_ms,
    decode_ms, n_drafted, n_accepted, n_draft_steps, logprobs) tuples (Engine.step), or an
    exception. constraint: the gemma4stack.constrain.Constraint of a constrained request,
    which only the scheduler thread touches after submit; mask_pending: its next mask is
    not in the engine yet."""

    __slots__ = ("id", "q", "sched", "last", "done", "waiting", "constraint", "mask_pending")

    def __init__(self, rid: int, sched: "_Scheduler", constraint=None):
        self.id = rid
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.sched = sched
        self.last: tuple | None = None
        self.done = False
        self.waiting = False         # the consumer is blocked on the queue (see _Scheduler._handoff)
        self.constraint = constraint
        self.mask_pending = False

    def tokens(self) -> Iterator[int]:
        """Token ids as they are sampled; ends at the request's end."""
        for ev in self.events():
            yield ev[1]

    def events(self) -> Iterator[tuple]:
        """The events that carry a token (ev[1] >= 0), as they come; ends at the request's end
        (.last is then the final event)."""
        while not self.done:
            self.waiting = True
            ev = self.q.get()
            self.waiting = False
            if isinstance(ev, BaseException):
                self.done = True
                raise ev
            self.last = ev
            if ev[2]:
                self.done = True
            if ev[1] >= 0:
                yield ev

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.sched.cancel(self)


class _Scheduler:
    """Runs the engine's steps on a daemon thread while any request is live, and hands
    each step's events to their requests. Submissions and cancellations come from any
    thread; the C engine is serialised by the model's lock.

    Constrained requests (gemma4stack.constrain.Constraint, llguidance): after each step the
    scheduler feeds each one's sampled token to its matcher (Constraint.advance) and, before
    the next step, computes the next masks of all of them in one llguidance call (parallel,
    GIL dropped: constrain.compute_masks) and hands them to the engine (Engine.set_mask).
    A JSON-schema mask over a 262,144-token vocabulary takes tens of microseconds, so this
    adds little to a step; the engine itself would let a request whose mask is late sit a
    step out (csrc/engine/engine.h), which a caller computing masks elsewhere can use. When
    a matcher is complete its request ends there with finish "stop" (cancelled in the
    engine)."""

    def __init__(self, engine):
        self.engine = engine
        self.cv = threading.Condition()
        self.live: dict[int, _Request] = {}
        self.thread: threading.Thread | None = None
        self.closed = False

    def submit(self, ids: list[int], max_tokens: int, temperature: float, top_k: int,
               top_p: float, seed: int, draft: tuple = (0, 3),
               sampling: Mapping[str, Any] | None = None, constraint=None) -> _Request:
        """Queue a request. draft: Engine.submit's (draft_max, draft_ngram[, draft_model]).
        sampling: Engine.submit's sampler keywords (min_p, penalties,
        logit_bias, logprobs); constraint: a Constraint whose first mask is computed here,
        in the caller's thread. Raises QueueFullError, LimitError, ValueError."""
        mask = None
        if constraint is not None:
            constraint.overlap = False            # its masks are computed by _set_masks
            mask = constraint.mask_fn()
        with self.cv:
            if self.closed:
                raise ValueError("the model is closed")
            try:
                rid = self.engine.submit(ids, max_tokens, temperature, top_k, top_p, seed, *draft,
                                         constrained=constraint is not None, **(sampling or {}))
            except LimitError as e:
                if str(e).startswith("queue full"):
                    raise QueueFullError(str(e)) from None
                raise
            if mask is not None:
                try:
                    self.engine.set_mask(rid, mask)
                except BaseException:
                    self.engine.cancel(rid)
                    raise
            req = _Request(rid, self, constraint)
            self.live[rid] = req
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="gemma4stack-engine", daemon=True)
                self.thread.start()
            self.cv.notify()
        return req

    def cancel(self, req: _Request) -> None:
        with self.cv:
            if self.live.pop(req.id, None) is None:
                return
        self.engine.cancel(req.id)

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.live and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                pending = [r for r in self.live.values() if r.mask_pending]
            if pending:
                self._set_masks(pending)
            try:
                events = self.engine.step()
            except BaseException as e:            # a core error ends every live request
                with self.cv:
                    reqs, self.live = list(self.live.values()), {}
                for r in reqs:
                    self.engine.cancel(r.id)
                    r.q.put(e)
                continue
            handed: list[_Request] = []
            ended: list[int] = []
            with self.cv:
                for ev in events:
                    req = self.live.get(ev[0])
                    if req is None:
                        continue
                    if req.constraint is not None and ev[1] >= 0 and not ev[2]:
                        ev = self._advance(req, ev)
                        if ev is None:                # the matcher failed: req has the error
                            del self.live[req.id]
                            ended.append(req.id)
                            continue
                        if ev[2]:
                            ended.append(req.id)      # the grammar is complete
                    if ev[2]:
                        del self.live[ev[0]]
                    if req.waiting:
                        handed.append(req)
                    req.q.put(ev)
                if not events and self.live:
                    st = self.engine.stats()
                    if not st["running"] and not st["waiting"]:   # lost requests: never hang them
                        for r in self.live.values():
                            r.q.put(RuntimeError("the engine dropped the request"))
                        self.live = {}
            for rid in ended:
                self.engine.cancel(rid)
            if handed:
                self._handoff(handed)

    @staticmethod
    def _advance(req: _Request, ev: tuple) -> tuple | None:
        """Feed a constrained request's token to its matcher: ev, or ev with finish 1 ("stop")
        when the grammar is complete, or None (the error is on req's queue)."""
        try:
            req.constraint.advance(ev[1])
        except BaseException as e:                # noqa: BLE001 - handed to the consumer
            req.q.put(e)
            return None
        if req.constraint.done:
            return ev[:2] + (1,) + ev[3:]
        req.mask_pending = True
        return ev

    def _set_masks(self, pending: list[_Request]) -> None:
        """Compute the next masks of constrained requests and hand them to the engine. A
        request whose mask fails ends with the error."""
        from gemma4stack.constrain import compute_masks
        for r, mask in zip(pending, compute_masks([r.constraint for r in pending])):
            try:
                if isinstance(mask, BaseException):
                    raise mask
                self.engine.set_mask(r.id, mask)
                r.mask_pending = False
            except BaseException as e:            # noqa: BLE001 - handed to the consumer
                with self.cv:
                    live = self.live.pop(r.id, None) is not None
                if live:                          # (a cancelled request's id is unknown: fine)
                    self.engine.cancel(r.id)
                    r.q.put(e)

    @staticmethod
    def _handoff(reqs: list[_Request], limit_s: float = 0.002) -> None:
        """Let the consumers that were waiting take their tokens before the next step.

        The next forward keeps every core busy (the pool runs one thread per core), so a
        consumer thread woken by put() would get a CPU, and the GIL, only when the OS preempts
        a compute thread: in practice one step later, and tokens then arrive in pairs with a
        step's gap between them. Sleeping here (GIL and CPU released) until each such consumer
        is waiting for its next token again, or for at most limit_s, keeps the inter-token
        latency even; a consumer busy elsewhere is not waited for."""
        deadline = time.perf_counter() + limit_s
        pending = [r for r in reqs if not r.done]
        time.sleep(0)
        while pending and time.perf_counter() < deadline:
            pending = [r for r in pending if not r.done and (not r.waiting or not r.q.empty())]
            if pending:
                time.sleep(0.00005)

    def close(self) -> None:
        with self.cv:
            self.closed = True
            reqs, self.live = list(self.live.values()), {}
            self.cv.notify_all()
        for r in reqs:
            r.q.put(ValueError("the model was closed during generation"))
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


class Model:
    """A GGUF model loaded by the C core.

    path: a .gguf file (architectures llama, gemma4, gemma3). threads: forward-pass threads
    (None: one per physical core). context: the longest prompt + completion of one request,
    in tokens (None: the model's trained context, capped at 4096).

    Serving many requests (continuous batching, csrc/engine/engine.h):
    parallel: requests decoded together in each forward step (llama-server's --parallel);
    more wait in a queue. kv_cache: KV element type, "f16" (default, as llama.cpp) or
    "q8_0" (half of that; head sizes a multiple of 32), or "f32"; None: f16, f32 for an
    unquantized F32 model. kv_bytes: the paged KV pool in bytes (None: `parallel`
    sequences of `context` tokens; smaller pools admit requests as their blocks allow,
    larger ones keep more shared prefixes). batch_tokens: tokens per step at most (decode
    tokens plus prompt chunks; None: 128): smaller keeps streams smoother while a long
    prompt is prefilled, larger prefills faster. queue_max: waiting requests at most (None:
    1024); past it generate() raises QueueFullError. prefix_cache: share KV blocks of
    common prompt prefixes between requests (vLLM's automatic prefix caching).

    Speculative decoding (csrc/engine/engine.h): draft="ngram" turns on prompt lookup:
    each decode step copies up to draft_max tokens that followed the latest earlier
    occurrence of the last draft_ngram (down to 1) tokens of prompt + output, and the
    model checks them all in that step's forward; faster when the answer repeats the
    prompt (extraction, summaries, rewriting). draft="model:PATH" (or a path, str or
    os.PathLike, of an existing file) loads a smaller GGUF with the same vocabulary as a
    draft model that proposes draft_max tokens per step (ValueError when its vocabulary
    differs; it gets its own KV cache of `context` tokens per parallel sequence, and the
    same threads). Greedy output (temperature=0) is token for token the plain greedy
    output; sampled output keeps the plain sampler's distribution (speculative sampling,
    Leviathan et al. 2023), though a seed gives other tokens than without drafts. None
    (default): off. GenerationStats.draft_tokens / accepted_tokens show how well it pays.
    draft="mtp:PATH": Gemma 4's MTP assistant (a gemma4-assistant GGUF, the
    `google/gemma-4-*-it-assistant` checkpoints converted by `gemma4stack convert`) drafts
    for a gemma4 model: it has no KV cache of its own but attends over the model's (the last
    sliding-window and global layers'), from the model's last hidden state, all drafts at
    the position of the last sampled token (csrc/model/gemma4_assistant.c); ValueError
    when it was made for another model (hidden size, vocabulary, head sizes). A path or
    "model:PATH" of an assistant GGUF does the same.

    Raises FileNotFoundError (no such file), OSError, GGUFError (not a valid GGUF),
    UnsupportedError (unknown architecture or tensor type; the message names it),
    LimitError (a context over the cap, a kv_bytes too small for one sequence),
    ValueError (bad arguments), MemoryError.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 context: int | None = None, parallel: int = 1, kv_cache: str | None = None,
                 kv_bytes: int | None = None, batch_tokens: int | None = None,
                 queue_max: int | None = None, prefix_cache: bool = True,
                 draft: str | os.PathLike | None = None, draft_ngram: int = 3, draft_max: int = 8):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        if context is not None and context < 1:
            raise ValueError(f"context must be >= 1 tokens (got {context})")
        if not isinstance(parallel, int) or not 1 <= parallel <= 4096:
            raise ValueError(f"parallel must be an int in 1..4096 (got {parallel!r})")
        if kv_cache not in (None, "f16", "q8_0", "f32"):
            raise ValueError(f"kv_cache must be 'f16', 'q8_0' or 'f32' (got {kv_cache!r})")
        for name, v in (("kv_bytes", kv_bytes), ("batch_tokens", batch_tokens), ("queue_max", queue_max)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int (got {v!r})")
        draft_path = parse_draft(draft)
        if not isinstance(draft_ngram, int) or not 1 <= draft_ngram <= 16:
            raise ValueError(f"draft_ngram must be an int in 1..16 (got {draft_ngram!r})")
        if not isinstance(draft_max, int) or not 1 <= draft_max <= 32:
            raise ValueError(f"draft_max must be an int in 1..32 (got {draft_max!r})")
        self.draft = draft if draft is None or draft == "ngram" else f"model:{draft_path}"
        want_mtp = isinstance(draft, str) and draft.startswith("mtp:")
        self._draft = (draft_max, draft_ngram, draft_path is not None) if draft else (0, draft_ngram, False)
        self.path = os.fspath(path)
        # the core takes an int32; anything larger is far over its context cap,
        # which then raises LimitError naming GEMMA4STACK_MAX_CONTEXT
        n_ctx = min(context, 2**31 - 1) if context else 0
        self._core = _core.Model(self.path, n_ctx=n_ctx, n_threads=threads or 0, kv_type=kv_cache)
        self._draft_core = None
        try:
            if draft_path is not None:
                self._draft_core = _core.Model(draft_path, n_ctx=self._core.n_ctx, n_threads=threads or 0)
                is_mtp = self._draft_core.arch == "gemma4-assistant"
                if want_mtp and not is_mtp:
                    raise ValueError(f"draft {draft!r}: {draft_path} is a {self._draft_core.arch} "
                                     "model, not a Gemma 4 MTP assistant (gemma4-assistant)")
                if is_mtp:
                    self.draft = f"mtp:{draft_path}"
                check_same_vocab(self._core, self._draft_core, self.path, draft_path)
            self._engine = _core.Engine(self._core, n_seq=parallel, n_batch=min(batch_tokens or 0, 2**31 - 1),
                                        kv_bytes=kv_bytes or 0, queue_max=min(queue_max or 0, 2**20),
                                        prefix_cache=prefix_cache, draft=self._draft_core)
        except BaseException:
            if self._draft_core is not None:
                self._draft_core.close()
            self._core.close()
            raise
        self._sched = _Scheduler(self._engine)
        self.parallel = parallel
        self._gguf = None
        self.last_stats: GenerationStats | None = None

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
        """Bytes in use: weights_bytes (tensor data mapped from the file), kv_bytes (the
        engine's paged KV pool, plus the single-sequence cache of logits() once used),
        scratch_bytes (activation buffers), kv_bytes_per_sequence (what one sequence of
        n_ctx positions holds at most: Gemma 3/4 keep the whole context on global layers,
        sliding_window + batch_tokens positions on sliding-window layers, nothing on Gemma
        4's KV-shared layers; the formula recommend() uses)."""
        mem = self._core.memory()
        mem["kv_bytes"] += self._engine.stats()["kv_bytes"]
        mem["kv_bytes_per_sequence"] = self._engine.seq_kv_bytes(self.n_ctx)
        return mem

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
        """Run prompt ids through the engine; args from _check_sampling."""
        box: list = []
        pieces = self._pieces(self._submit(ids, args), ids, args[5], t0, sink=box.append)
        return TextStream(pieces, box) if stream else "".join(pieces)

    def _submit(self, ids: list[int], args: tuple, sampling: Mapping[str, Any] | None = None,
                constraint=None) -> _Request | None:
        """Queue prompt ids in the engine (None for max_tokens=0: nothing to run); sampling and
        constraint as _Scheduler.submit."""
        max_tokens, temperature, top_k, top_p, seed, _ = args
        if not ids:
            raise ValueError("the prompt is empty and the vocabulary has no BOS token")
        if len(ids) > self.n_ctx:
            raise LimitError(f"the prompt is {len(ids)} tokens, longer than the context of "
                             f"{self.n_ctx} tokens")
        if max_tokens == 0:
            return None
        return self._sched.submit(ids, max_tokens, temperature, top_k, top_p, seed, self._draft,
                                  sampling, constraint)

    def generate_batch(self, prompts: Sequence[str], max_tokens: int = 128,
                       temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                       seed: int | None = None, stop: str | Sequence[str] | None = None,
                       progress: bool = True) -> list[str]:
        """Continue every prompt, decoded together in batches of up to `parallel`; returns
        the texts in the order of `prompts` (a research script scoring a data set).
        Sampling arguments as generate(); with a seed, prompt i uses seed + i. progress: a
        tqdm bar (the notebook widget in Jupyter). .last_batch_stats afterwards holds one
        GenerationStats per prompt. Raises as generate()."""
        args = _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop)
        return self._run_batch([self.tokenize(p, add_bos=bool(self._core.add_bos)) for p in prompts],
                               args, seed is None, progress)

    def chat_batch(self, conversations: Sequence[Sequence[Mapping[str, Any]]], max_tokens: int = 128,
                   temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                   seed: int | None = None, stop: str | Sequence[str] | None = None,
                   progress: bool = True, **template_kwargs: Any) -> list[str]:
        """The replies to many conversations, as chat() renders each, run as
        generate_batch() runs prompts; results in order."""
        args = _check_sampling(max_tokens, temperature, top_k, top_p, seed, stop)
        ids = [self._chat_ids(c, True, template_kwargs) for c in conversations]
        return self._run_batch(ids, args, seed is None, progress)

    def _run_batch(self, all_ids: list[list[int]], args: tuple, random_seed: bool,
                   progress: bool) -> list[str]:
        try:
            from tqdm.auto import tqdm
        except ImportError:                    # the base install has no tqdm: no bar
            progress = False

            def tqdm(**kw):
                return _NoBar()

        n = len(all_ids)
        results: list[str | None] = [None] * n
        stats: list[GenerationStats | None] = [None] * n
        errors: list[BaseException] = []
        # at most parallel + a queue's worth in flight: the rest wait here, not in the core
        window = threading.Semaphore(max(2 * self.parallel, 4))
        done = threading.Event()
        remaining = [n]
        lock = threading.Lock()
        bar = tqdm(total=n, disable=not progress or n < 2, unit="prompt")

        def run(i: int, ids: list[int]) -> None:
            try:
                a = list(args)
                if not random_seed:
                    a[4] = (a[4] + i) & (2**64 - 1)
                else:
                    a[4] = secrets.randbits(64)
                t0 = time.perf_counter()
                out, st = [], None
                gen = self._pieces(self._submit(ids, tuple(a)), ids, a[5], t0, sink=lambda s: out.append(s))
                results[i] = "".join(gen)
                stats[i] = out[0] if out else None
            except BaseException as e:         # reported after the others finish
                errors.append(e)
            finally:
                window.release()
                bar.update(1)
                with lock:
                    remaining[0] -= 1
                    if not remaining[0]:
                        done.set()

        try:
            for i, ids in enumerate(all_ids):
                window.acquire()
                if errors:
                    window.release()
                    with lock:
                        remaining[0] -= n - i
                    break
                threading.Thread(target=run, args=(i, ids), daemon=True).start()
            if n:
                done.wait()
        finally:
            bar.close()
        self.last_batch_stats = stats
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

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
        ids = self._chat_ids(messages, add_generation_prompt, template_kwargs)
        return self._generate_ids(ids, args, stream, t0)

    def _chat_ids(self, messages, add_generation_prompt: bool, template_kwargs: dict) -> list[int]:
        """Prompt ids of a conversation: the chat template rendered, then _text_ids."""
        text = self.apply_chat_template(messages, add_generation_prompt, **template_kwargs)
        return self._text_ids(text)

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of a rendered chat prompt: special tokens parsed, BOS added only when
        the template did not start with it and the vocabulary asks for it."""
        ids = self.tokenize(text, add_bos=False, parse_special=True)
        bos = self._core.bos_id
        if self._core.add_bos and bos >= 0 and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _pieces(self, req: _Request | None, ids: list[int], stops: list[str], t0: float,
                sink=None) -> Iterator[str]:
        """Token ids of an engine request -> text pieces, with stop strings applied (a stop
        string cancels the request: its KV blocks are freed at once). The GenerationStats
        go to .last_stats, and to sink when given."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        prev = ids[-1]
        n_out = 0
        held = ""            # text not yet yielded: it may be the start of a stop string
        finish = None
        ttft = None
        try:
            for tok in (req.tokens() if req is not None else ()):
                if ttft is None:
                    ttft = (time.perf_counter() - t0) * 1e3
                n_out += 1
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
            self._end(req, len(ids), n_out, finish, ttft, sink)

    def _end(self, req: _Request | None, n_prompt: int, n_out: int, finish: str | None,
             ttft: float | None, sink=None) -> GenerationStats:
        """A consumer is done with req (None: max_tokens=0): cancel it if it still runs, and
        put its GenerationStats in .last_stats and sink. finish: None to take the engine's
        ("stop", "length"; "cancelled" when it did not end)."""
        if req is not None:
            req.cancel()
        ev = req.last if req is not None else None
        if finish is None:
            if req is None:
                finish = "length"                    # max_tokens=0: nothing ran
            elif ev is not None and ev[2]:
                finish = "stop" if ev[2] == 1 else "length"
            else:
                finish = "cancelled"
        st = _stats(ev, n_prompt, n_out, finish, ttft)
        self.last_stats = st
        if sink is not None:
            sink(st)
        return st

    def stats(self) -> EngineStats:
        """The batching engine now: requests running and waiting, KV blocks, prefix-cache
        hits (EngineStats)."""
        d = self._engine.stats()
        q = d["prefix_queried_tokens"]
        return EngineStats(prefix_hit_rate=d["prefix_hit_tokens"] / q if q else 0.0, **d)

    # -------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Stop the scheduler (running generations end with ValueError), free the weights
        mapping, KV caches and threads; later calls raise ValueError."""
        self._sched.close()
        self._engine.close()
        self._core.close()
        if self._draft_core is not None:
            self._draft_core.close()

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


def _stats(ev: tuple | None, n_prompt: int, n_out: int, finish: str,
           ttft_ms: float | None) -> GenerationStats:
    """GenerationStats from a request's last engine event (id, token, finish, n_prompt,
    n_cached, n_decode, queue_ms, prefill_ms, decode_ms, n_drafted, n_accepted,
    n_draft_steps, logprobs), or zeros when none came."""
    def rate(n: int, ms: float) -> float:
        return n / ms * 1e3 if n and ms > 0 else 0.0
    if ev is None:
        return GenerationStats(prompt_tokens=n_prompt, completion_tokens=n_out,
                               ttft_ms=ttft_ms or 0.0, prefill_ms=0.0, prefill_tokens_per_s=0.0,
                               decode_ms=0.0, decode_tokens_per_s=0.0, finish_reason=finish)
    (_, _, _, n_prompt, n_cached, n_decode, queue_ms, prefill_ms, decode_ms,
     n_drafted, n_accepted, n_draft_steps) = ev[:12]
    return GenerationStats(
        prompt_tokens=n_prompt, completion_tokens=n_out,
        ttft_ms=ttft_ms if ttft_ms is not None else queue_ms + prefill_ms,
        prefill_ms=prefill_ms, prefill_tokens_per_s=rate(n_prompt - n_cached, prefill_ms),
        decode_ms=decode_ms, decode_tokens_per_s=rate(n_decode, decode_ms),
        finish_reason=finish, cached_tokens=n_cached, queue_ms=queue_ms,
        draft_tokens=n_drafted, accepted_tokens=n_accepted, draft_steps=n_draft_steps)


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
    p.add_argument("--draft", default=None, metavar="ngram|model:PATH|mtp:PATH",
                   help="speculative decoding: prompt lookup ('ngram'), a draft model with the "
                        "same vocabulary ('model:PATH' or a GGUF path) or a Gemma 4 MTP assistant "
                        "('mtp:PATH', gemma4-assistant GGUF)")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the GGUF's chat template")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    t_load = time.perf_counter()
    with Model(args.model, threads=args.threads, context=args.context, draft=args.draft) as m:
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
        out.write("\n")            # ends the text, so the stderr figures start on their own line
        s = m.last_stats
        print(f"load {load_ms:.0f} ms; "
              f"prompt {s.prompt_tokens} tokens, generated {s.completion_tokens} tokens "
              f"(finish: {s.finish_reason}); TTFT {s.ttft_ms:.1f} ms; prefill "
              f"{s.prefill_tokens_per_s:.1f} tokens/s; decode {s.decode_tokens_per_s:.1f} tokens/s; "
              f"threads {m.threads}"
              + (f"; drafts {s.accepted_tokens}/{s.draft_tokens} accepted" if args.draft else ""),
              file=sys.stderr)
    return 0
