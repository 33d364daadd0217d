"""Constrained decoding with llguidance (the Rust library behind structured output in vLLM,
SGLang and llama.cpp; https://github.com/guidance-ai/llguidance).

    >>> from gemma4stack.constrain import Constraint
    >>> c = Constraint.for_request(model, json_schema={"type": "object", "properties": {...}})
    >>> for tok in model._core.generate_iter(ids, mask_fn=c.mask_fn, ...):
    ...     c.advance(tok)

(Model.chat / Model.generate run constrained requests in the batching engine instead:
gemma4stack.model._Scheduler advances each request's Constraint after every step and hands
its next mask to the engine with Engine.set_mask.)

The llguidance tokenizer is built from the GGUF's own token list (the model's tokenizer,
not a Hugging Face one): each token's bytes as the C core renders them (csrc/tokenizer:
"▁" -> " ", <0xXX> -> the byte), with control tokens and user-defined "<...>" tokens
marked special as llguidance's own llama.cpp bridge does (llguidance/llamacpp.py: a 0xFF
prefix), so a Lark grammar names them as <|tool_call> etc. Text is tokenized by the
model's tokenizer (for llguidance's forced-token and canonicality logic).

Per step: mask_fn() -> numpy uint32 array of ceil(n_vocab / 32) words (bit i % 32 of word
i / 32 set = token i allowed; the layout csrc/sample/sample.h's g4_sample_ex and
csrc/engine's g4_engine_set_mask take; once the grammar may end, the end-of-generation
tokens are allowed too); advance(token) after each sampled token; .done once nothing more
may follow. Bad schemas and grammars raise ValueError naming
the problem (the gateway answers 400).
"""
from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import numpy as np

__all__ = ["Constraint", "tokenizer_for", "grammar_for"]

_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _GGUFTokenizer:
    """What llguidance.TokenizerWrapper wants: tokens (bytes per id), eos/bos ids, special ids,
    and __call__(bytes) -> ids (the model's own tokenizer, no BOS, specials as text)."""

    def __init__(self, model):
        import gemma4stack._core as core
        cm = model._core
        tok = core.Tokenizer(model.path)          # token types; the same vocabulary
        n = cm.n_vocab
        # a normal token to put before each one, so an SPM vocab keeps the leading space
        # that piece() drops at the start of the text
        prev = next((i for i in range(n) if tok.token_type(i) == 1), -1)
        tokens, special = [], []
        for i in range(n):
            ty = tok.token_type(i)
            text = cm.token_text(i) or ""
            if ty == 3 or (ty == 4 and text.startswith("<") and text.endswith(">")):
                tokens.append(b"\xff" + text.encode())       # llguidance's special-token mark
                special.append(i)
            else:
                tokens.append(cm.piece(i, prev))
        self.tokens = tokens
        self.special_token_ids = special
        self.eos_token_id = cm.eos_id if cm.eos_id >= 0 else 0
        self.bos_token_id = cm.bos_id if cm.bos_id >= 0 else None
        self.eog = [i for i in range(n) if cm.is_eog(i)] if n <= 1 << 20 else [self.eos_token_id]
        self._cm = cm
        self._prev = prev
        # SentencePiece vocabularies with add_space_prefix put a space before the text
        # (llama.cpp does too); llguidance tokenizes grammar text mid-output, where none goes
        self._by_bytes = {}
        is_special = set(special)
        for i, b in enumerate(tokens):
            if b and i not in is_special:
                self._by_bytes.setdefault(b, i)
        first = cm.tokenize("a", add_bos=False)
        self._space_prefix = bool(first) and cm.piece(first[0], prev).startswith(b" ")

    def __call__(self, s: bytes) -> list[int]:
        ids = self._cm.tokenize(s.decode("utf-8", "replace"), add_bos=False)
        if self._space_prefix and ids:
            head = self._cm.piece(ids[0], self._prev)
            if head.startswith(b" "):
                ids = self._greedy(head[1:]) + ids[1:]
        return ids

    def _greedy(self, b: bytes) -> list[int]:
        """Longest-match ids of bytes b (a few bytes: what is left of the first token)."""
        out, i = [], 0
        while i < len(b):
            for j in range(len(b), i, -1):
                t = self._by_bytes.get(b[i:j])
                if t is not None:
                    out.append(t)
                    i = j
                    break
            else:
                i += 1                                   # no token holds this byte: skip it
        return out


def tokenizer_for(model):
    """The llguidance LLTokenizer of a gemma4stack Model, built once per Model (about 1 s
    for a 262,144-token vocabulary) and cached."""
    import llguidance
    with _LOCK:
        t = _TOKENIZERS.get(model)
        if t is None:
            g = _GGUFTokenizer(model)
            eog = sorted(set(g.eog) | {g.eos_token_id})
            t = llguidance.LLTokenizer(llguidance.TokenizerWrapper(g), n_vocab=len(g.tokens),
                                       eos_token=eog)
            _TOKENIZERS[model] = t
        return t


_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_for(*, json_schema: Any = None, json_object: bool = False, regex: str | None = None,
                grammar: str | None = None, lark: str | None = None) -> str:
    """An llguidance grammar (its JSON form) for exactly one of: json_schema (a dict or JSON
    text; JSON Schema as llguidance supports it, docs/json_schema.md), json_object (any JSON
    object), regex (Rust regex syntax), grammar / lark (a Lark grammar as llguidance reads
    it, or a llama.cpp GBNF grammar, which llguidance converts). ValueError when none or
    several are given, or when the schema/grammar is invalid (the message names the
    problem)."""
    from llguidance import LLMatcher, grammar_from
    given = [k for k, v in (("json_schema", json_schema), ("json_object", json_object or None),
                            ("regex", regex), ("grammar", grammar), ("lark", lark)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of json_schema, json_object, regex, grammar "
                         f"(got {', '.join(given) or 'none'})")
    try:
        if json_object or json_schema is not None:
            schema = {"type": "object"} if json_object else json_schema
            if isinstance(schema, str):
                schema = json.loads(schema)
            if not isinstance(schema, dict):
                raise ValueError("a JSON schema must be a JSON object")
            # JSON as json.dumps writes it (", " and ": ", no other whitespace): a model may
            # not pad the output with spaces or newlines, which a small model otherwise does
            # until max_tokens; a schema's own "x-guidance" options still win
            g = LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        elif regex is not None:
            g = LLMatcher.grammar_from_regex(regex)
        else:
            g = grammar_from("grammar", grammar if grammar is not None else lark)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"invalid {given[0]}: {e}") from None
    msg = LLMatcher.validate_grammar(g)          # "" when valid, else the reason
    if msg:
        raise ValueError(f"invalid {given[0]}: {msg.strip()}")
    return g


_POOL = None


def _pool():
    """One background thread for the masks of the single-sequence loop (see
    Constraint.advance)."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor
            _POOL = ThreadPoolExecutor(1, thread_name_prefix="g4-mask")
        return _POOL


_EXECUTOR = None


def compute_masks(constraints: list["Constraint"]) -> list[np.ndarray | BaseException]:
    """The next masks of several sequences at once (constraints made with overlap=False, as
    the batching engine's scheduler uses them between steps): one llguidance LLExecutor call,
    which computes them in parallel on llguidance's own threads with the GIL dropped (vLLM's
    and SGLang's batch path). For each constraint its mask (a uint32 array of
    ceil(n_vocab / 32) words, valid until its next mask is computed), or the ValueError of a
    matcher in an error state."""
    global _EXECUTOR
    if not constraints:
        return []
    if len(constraints) == 1:
        try:
            return [constraints[0].mask_fn()]
        except ValueError as e:
            return [e]
    import llguidance
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = llguidance.LLExecutor()
    words = constraints[0]._bufs[0].size
    out = np.empty((len(constraints), words), dtype=np.uint32)
    _EXECUTOR.unsafe_compute_mask_ptr([(c.matcher, i) for i, c in enumerate(constraints)],
                                      out.ctypes.data, words * 4, len(constraints))
    res: list = []
    for i, c in enumerate(constraints):
        if c.matcher.is_error():
            res.append(ValueError(f"constrained decoding failed: {c.matcher.get_error()}"))
        else:
            res.append(out[i])
    return res


class Constraint:
    """One sequence's grammar state. grammar: from grammar_for(); model: a gemma4stack Model
    (for its tokenizer). ValueError when llguidance rejects the grammar for this vocabulary.

    overlap=True: advance() starts computing the next step's mask in a background thread,
    so that it runs while the C forward pass (which releases the GIL) computes the next
    logits (the single-sequence loop, generate_iter(mask_fn=...)); mask_fn() then waits for
    it. Two mask buffers alternate, so the one the sampler read is never the one being
    written. The batching engine's scheduler sets overlap=False and computes the masks of
    all its constrained sequences together (compute_masks): handing each mask to a thread of
    its own costs more (GIL hand-offs, milliseconds) than computing it (tens of
    microseconds for a JSON schema on a 262,144-token vocabulary)."""

    def __init__(self, model, grammar: str, overlap: bool = True):
        from llguidance import LLMatcher
        self.tokenizer = tokenizer_for(model)
        self.n_vocab = model.n_vocab
        self.matcher = LLMatcher(self.tokenizer, grammar)
        if self.matcher.is_error():
            raise ValueError(f"invalid grammar: {self.matcher.get_error()}")
        words = (self.n_vocab + 31) // 32
        self._bufs = [np.zeros(words, dtype=np.uint32), np.zeros(words, dtype=np.uint32)]
        self._cur = 0
        self._next = None           # the Future of the next mask, when overlapping
        self._stopped = False
        self.overlap = overlap

    @classmethod
    def for_request(cls, model, **kw) -> "Constraint":
        """Constraint(model, grammar_for(**kw))."""
        return cls(model, grammar_for(**kw))

    def _compute(self, buf: np.ndarray) -> np.ndarray:
        self.matcher.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)
        return buf

    def mask_fn(self) -> np.ndarray | None:
        """The allowed tokens of the next step as a uint32 bitmask (one of two buffers,
        refilled on later steps). ValueError when the matcher is in an error state."""
        fut, self._next = self._next, None
        buf = fut.result() if fut is not None else self._compute(self._bufs[self._cur])
        if self.matcher.is_error():
            raise ValueError(f"constrained decoding failed: {self.matcher.get_error()}")
        return buf

    def advance(self, token: int) -> None:
        """Feed the sampled token (then, with overlap, start the next mask). ValueError if
        the grammar does not allow it (it cannot, when the mask was applied)."""
        if self._next is not None:           # advance twice without a mask in between
            self._next.result()
            self._next = None
        if not self.matcher.consume_token(int(token)):
            raise ValueError(f"token {token} violates the grammar: {self.matcher.get_error()}")
        self._cur ^= 1
        self._stopped = self.matcher.is_stopped()
        if self.overlap and not self._stopped:
            # the matcher may not be touched until mask_fn() collects this (llguidance
            # raises "Already mutably borrowed"): read state before, not during
            self._next = _pool().submit(self._compute, self._bufs[self._cur])

    @property
    def done(self) -> bool:
        """True once the grammar is complete and nothing more may follow."""
        return self._stopped

    def is_accepting(self) -> bool:
        if self._next is not None:
            self._next.result()
        return self.matcher.is_accepting()
