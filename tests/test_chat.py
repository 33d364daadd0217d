"""Model.chat / apply_chat_template against HF transformers.

- Rendering: the GGUF's tokenizer.chat_template and other templates (a Gemma-3-style one with
  raise_exception and content parts; one with tojson, namespace, loop controls, tools and a
  {% generation %} block) give the same text as transformers' apply_chat_template(tokenize=False)
  with the same messages; templates run sandboxed.
- Tokens: the rendered prompt tokenized with special tokens parsed equals HF's
  tokenizer(text, add_special_tokens=False).
- Generation: a tiny random Gemma 4 whose <turn|> embedding is nudged so that greedy decoding
  ends its turn after a few tokens: chat() returns HF generate's reply, stops at <turn|>
  (finish "stop"), streamed == not streamed; a follow-up turn reuses the KV cache of the
  shared prefix and still equals HF.

The toy tokenizer names <|turn>, <turn|>, <|channel>, <channel|> in tokenizer_config.json
extra_special_tokens, as Google's Gemma 4 release does (sot_token, eot_token, soc_token,
eoc_token), so the converter marks them CONTROL and parse_special matches them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")

sys.path.insert(0, str(Path(__file__).parent))
import gemma4_ref as R  # noqa: E402
from gguf_rewrite import rewrite  # noqa: E402

from gemma4stack import Model, UnsupportedError  # noqa: E402
from gemma4stack.convert import convert  # noqa: E402
from gemma4stack.model import render_chat_template  # noqa: E402

EXTRA_SPECIAL = {"sot_token": "<|turn>", "eot_token": "<turn|>", "soc_token": "<|channel>",
                 "eoc_token": "<channel|>"}
TURN_END = 6          # <turn|> in the toy vocabulary

GEMMA3_STYLE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = '' -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception('Conversation roles must alternate user/assistant') }}\n"
    "    {%- endif -%}\n"
    "    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- else -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}\n")

# whitespace-sensitive: block tags on their own lines rely on trim_blocks / lstrip_blocks
FEATURES = (
    "{% set ns = namespace(n=0) %}\n"
    "{% for m in messages %}\n"
    "    {% if m.role == 'system' %}{% continue %}{% endif %}\n"
    "    {% set ns.n = ns.n + 1 %}\n"
    "{% generation %}[{{ ns.n }}] {{ m.role }}: {{ m.content | tojson }}{% endgeneration %}\n"
    "\n"
    "    {% if ns.n >= 3 %}{% break %}{% endif %}\n"
    "{% endfor %}\n"
    "{% if tools %}\n"
    "tools: {{ tools | tojson }}\n"
    "{% endif %}\n"
    "{% if add_generation_prompt %}assistant:{% endif %}{{ eos_token }}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there, Lily!"}],
    [{"role": "system", "content": "Be brief.  "},
     {"role": "user", "content": "  Ünïcödé: café, naïve, 東京, 🙂 and \"quotes\" <b>"},
     {"role": "assistant", "content": "Sure.\n\nTwo lines."},
     {"role": "user", "content": "Once upon a time"}],
    [{"role": "user", "content": [{"type": "text", "text": "parts "}, {"type": "text", "text": "joined"}]},
     {"role": "assistant", "content": "ok"},
     {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],
]


def _toy_with_turn_end(root: Path) -> Path:
    """The ple_shared toy with Gemma 4's named special tokens, and the <turn|> embedding (tied
    output row) moved to E[t] + c u, t the token greedy decoding repeats and u the direction
    the last hidden state drifts in over the first steps: <turn|> overtakes t a few tokens
    into the reply (a random toy never ends its turn on its own)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    d = R.build_gemma4(root / "hf", "ple_shared", seed=3)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["extra_special_tokens"] = EXTRA_SPECIAL
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    tok = transformers.AutoTokenizer.from_pretrained(d)
    ids = tok.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    arch = json.loads((d / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(
        d, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0,
                             output_hidden_states=True, return_dict_in_generate=True)
    h = torch.stack([s[-1][0, -1] for s in out.hidden_states])
    u = (h[8] - h[0]) / (h[8] - h[0]).norm()
    first = int(out.sequences[0, len(ids)])
    st = load_file(d / "model.safetensors")
    key = next(k for k in st if k.endswith("embed_tokens.weight") and "per_layer" not in k)
    st[key][TURN_END] = st[key][first] + 2.0 * u
    save_file(st, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").touch()        # R._hf_model caches per config.json mtime
    return d


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from transformers import AutoTokenizer
    root = tmp_path_factory.mktemp("chat")
    d = _toy_with_turn_end(root)
    p = root / "toy.gguf"
    convert(d, p, type="f32")
    return d, p, AutoTokenizer.from_pretrained(d)


def _hf_reply(d: Path, ids: list[int], n: int, eog: list[int]) -> tuple[list[int], bool]:
    import torch
    model = R._hf_model(str(Path(d).resolve()), (Path(d) / "config.json").stat().st_mtime)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=eog, pad_token_id=0)
    new = [int(x) for x in out[0, len(ids):]]
    for i, t in enumerate(new):
        if t in eog:
            return new[:i], True
    return new, False


# ---------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_gguf_template_renders_as_hf(toy, conv, gen):
    d, p, tok = toy
    msgs = CONVERSATIONS[conv]
    with Model(p, threads=1) as m:
        assert m.chat_template == R.CHAT_TEMPLATE
        ours = m.apply_chat_template(msgs, add_generation_prompt=gen)
    assert ours == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


@pytest.mark.parametrize("template", [GEMMA3_STYLE, FEATURES], ids=["gemma3_style", "features"])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_other_templates_render_as_hf(toy, template, conv, gen):
    d, p, tok = toy
    msgs = CONVERSATIONS[conv]
    tools = [{"type": "function", "function": {"name": "météo", "parameters": {}}}] if conv == 1 else None
    ref = tok.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                  add_generation_prompt=gen, tools=tools)
    ours = render_chat_template(template, msgs, gen, bos_token="<bos>", eos_token="<eos>", tools=tools)
    assert ours == ref


def test_raise_exception_and_strftime_now(toy):
    d, p, tok = toy
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        tok.apply_chat_template(bad, chat_template=GEMMA3_STYLE, tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        render_chat_template(GEMMA3_STYLE, bad, bos_token="<bos>")
    t = "{{ strftime_now('%Y-%m-%d') }}"
    assert render_chat_template(t, []) == datetime.now().strftime("%Y-%m-%d") == \
        tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template=t, tokenize=False)


def test_templates_are_sandboxed(toy):
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.__class__.__init__.__globals__ }}", [])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.append(1) }}", [])   # immutable sandbox


def test_no_chat_template_is_a_clear_error(toy, tmp_path):
    d, p, tok = toy
    q = rewrite(p, tmp_path / "notemplate.gguf", drop_keys={"tokenizer.chat_template"})
    with Model(q, threads=1) as m:
        assert m.chat_template is None
        with pytest.raises(UnsupportedError, match="chat_template"):
            m.chat([{"role": "user", "content": "hi"}])
        with pytest.raises(UnsupportedError, match="chat_template"):
            m.apply_chat_template([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# Tokens and generation


@pytest.mark.parametrize("conv", [0, 1])
def test_prompt_tokens_match_hf(toy, conv):
    d, p, tok = toy
    msgs = CONVERSATIONS[conv]
    ref = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    with Model(p, threads=1) as m:
        text = m.apply_chat_template(msgs)
        ids = m.tokenize(text, add_bos=False, parse_special=True)
    assert ids == ref == tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [2, 5] and ids.count(5) == len(msgs) + 1     # <bos> <|turn> ...


def test_chat_reply_matches_hf_and_stops_at_turn_end(toy):
    d, p, tok = toy
    msgs = CONVERSATIONS[0]
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    with Model(p, threads=2) as m:
        eog = [i for i in range(m.n_vocab) if m._core.is_eog(i)]
        assert TURN_END in eog
        ref, stopped = _hf_reply(d, ids, 32, eog)
        assert stopped and 1 <= len(ref) < 32       # the fixture made <turn|> come a few tokens in
        reply = m.chat(msgs, max_tokens=32, temperature=0)
        s = m.last_stats
        assert reply == tok.decode(ref)
        assert s.finish_reason == "stop" and s.completion_tokens == len(ref)
        assert s.prompt_tokens == len(ids)
        streamed = list(m.chat(msgs, max_tokens=32, temperature=0, stream=True))
        assert "".join(streamed) == reply and len(streamed) >= 1


def test_follow_up_turn_reuses_the_cache_and_matches_hf(toy):
    """Second turn: the KV blocks of the history (the first turn's prompt at least, in whole
    blocks of 32 positions) come from the engine's prefix cache; the reply is HF's."""
    d, p, tok = toy
    first_msgs = [{"role": "user", "content": "Once upon a time there was a little girl named Lily. " * 5}]
    with Model(p, threads=2) as m:
        eog = [i for i in range(m.n_vocab) if m._core.is_eog(i)]
        first = m.chat(first_msgs, max_tokens=32, temperature=0)
        n1 = m.last_stats.prompt_tokens
        n_past = n1 + m.last_stats.completion_tokens
        msgs = first_msgs + [{"role": "assistant", "content": first},
                             {"role": "user", "content": "Tom and Sue went to the shop."}]
        second = m.chat(msgs, max_tokens=32, temperature=0)
        s = m.last_stats
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    ref, _ = _hf_reply(d, ids, 32, eog)
    assert second == tok.decode(ref)
    assert n1 >= 32 and n1 // 32 * 32 <= s.cached_tokens <= n_past
    with Model(p, threads=2) as fresh:
        assert fresh.chat(msgs, max_tokens=32, temperature=0) == second
        assert fresh.last_stats.cached_tokens == 0


def test_run_cli_chat(toy):
    d, p, tok = toy
    r = subprocess.run([sys.executable, "-m", "gemma4stack", "run", "--model", str(p), "--prompt",
                        "Hello there, Lily!", "--chat", "--max-tokens", "8", "--temperature", "0",
                        "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "finish: stop" in r.stderr and "tokens/s" in r.stderr
    with Model(p, threads=1) as m:
        assert r.stdout == m.chat([{"role": "user", "content": "Hello there, Lily!"}],
                                  max_tokens=8, temperature=0) + "\n"   # run ends the line


def test_reuse_is_refused_when_the_ring_has_moved_on(toy):
    """A conversation that shares only its first tokens with a long previous one: the sliding
    layers' rings (window + 63 positions) no longer hold the window before the divergence,
    so nothing is reused (kv_keep) and the reply equals a fresh model's."""
    d, p, tok = toy
    long_msg = [{"role": "user", "content": R._CORPUS.replace("\n", " ")}]
    other = [{"role": "user", "content": "Once upon a time, Tom and Sue went to the park."}]
    with Model(p, threads=2) as m:
        m.chat(long_msg, max_tokens=8, temperature=0)
        assert m.last_stats.prompt_tokens > 8 + 64 + 10     # past window + batch + shared prefix
        reply = m.chat(other, max_tokens=16, temperature=0)
        assert m.last_stats.cached_tokens == 0
    with Model(p, threads=2) as fresh:
        assert fresh.chat(other, max_tokens=16, temperature=0) == reply
