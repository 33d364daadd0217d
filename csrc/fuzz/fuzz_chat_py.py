"""atheris harness for the Python chat path: message lists -> Model.apply_chat_template (jinja2,
sandboxed as HF transformers does) -> Model.tokenize(parse_special=True) -> now and then
Model.chat, on a 1-layer model with the "gemma4" toy vocab and tests/gemma4_ref.CHAT_TEMPLATE
(build/fuzz/chat-toy.gguf, written by csrc/fuzz/make_seeds.py; $G4FUZZ_CHAT_MODEL overrides).

    python csrc/fuzz/fuzz_chat_py.py [libFuzzer flags] CORPUS_DIR...     (make fuzz runs it)

The input is read with atheris.FuzzedDataProvider: a message count, then per message a role
(one of system/user/assistant/tool, or any text) and a content (any text, or now and then a
number, None or a list, which templates meet from JSON clients). Checks:
  - apply_chat_template fails only as documented (jinja2.TemplateError, TypeError,
    ValueError); anything else is a bug;
  - tokenize of the rendered prompt never fails and gives ids in the vocab;
  - the template's own markers survive whatever the messages hold: at least one <|turn> per
    message (+1 for the generation prompt) and one <turn|> per message;
  - a second, richer template (TEMPLATE_B: system folding, raise_exception, typed content
    parts, tools as JSON) through render_chat_template, the renderer Model uses;
  - chat (one input in eight, max_tokens=2, greedy) fails only with LimitError when the prompt
    outgrows the 256-token context; its KV cache carries over between inputs, so the prefix
    reuse of consecutive conversations is exercised too.
atheris instruments gemma4stack.model and jinja2 for coverage; the C tokenizer below is fuzzed
under ASan by fuzz_chat.c.
"""
from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports(include=["gemma4stack", "jinja2"]):
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
    from gemma4stack import LimitError, Model
    from gemma4stack.model import render_chat_template

MODEL = Model(os.environ.get("G4FUZZ_CHAT_MODEL") or "build/fuzz/chat-toy.gguf", threads=1, context=256)
TURN, END = MODEL.tokenize("<|turn><turn|>", add_bos=False, parse_special=True)
N_VOCAB = MODEL.n_vocab
ROLES = ["system", "user", "assistant", "tool"]

# A richer template in the manner of Gemma's published ones (our own wording): a leading
# system message folded into the first turn, roles that must alternate (raise_exception),
# content as a string or a list of typed parts, tools as JSON. Rendered with
# render_chat_template, the function Model.apply_chat_template uses.
TEMPLATE_B = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = (messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'][0]['text']) + '\\n\\n' -%}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- for m in rest -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "<|turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ prefix if loop.first else '' }}"
    "{%- if m['content'] is string -%}{{ m['content'] | trim }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<turn|>\n"
    "{%- endfor -%}"
    "{%- if tools -%}<|tool_call>{{ tools | tojson }}<tool_call|>{%- endif -%}"
    "{%- if add_generation_prompt -%}<|turn>model\n{%- endif -%}")


def messages_from(fdp: atheris.FuzzedDataProvider) -> list[dict]:
    msgs = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        k = fdp.ConsumeIntInRange(0, 5)
        role = ROLES[k] if k < 4 else fdp.ConsumeUnicodeNoSurrogates(12)
        kind = fdp.ConsumeIntInRange(0, 15)
        if kind == 13:
            content = fdp.ConsumeInt(4)
        elif kind == 14:
            content = None
        elif kind == 15:
            content = [{"type": "text", "text": fdp.ConsumeUnicodeNoSurrogates(16)}]
        else:
            content = fdp.ConsumeUnicodeNoSurrogates(96)
        msgs.append({"role": role, "content": content})
    return msgs


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    msgs = messages_from(fdp)
    gen_prompt = fdp.ConsumeBool()
    use_b = fdp.ConsumeBool()
    tools = [{"name": fdp.ConsumeUnicodeNoSurrogates(12)}] if fdp.ConsumeBool() else None
    run_chat = not use_b and fdp.ConsumeIntInRange(0, 7) == 0
    try:
        if use_b:
            text = render_chat_template(TEMPLATE_B, msgs, gen_prompt, bos_token="<bos>", tools=tools)
        else:
            text = MODEL.apply_chat_template(msgs, add_generation_prompt=gen_prompt)
    except (jinja2.TemplateError, TypeError, ValueError):
        return
    ids = MODEL.tokenize(text, add_bos=False, parse_special=True)
    assert all(0 <= i < N_VOCAB for i in ids), ids
    n_turns = len(msgs) - (1 if use_b and msgs and msgs[0]["role"] == "system" else 0)
    turns, ends = ids.count(TURN), ids.count(END)
    assert turns >= n_turns + gen_prompt and ends >= n_turns, (msgs, text, turns, ends)
    if run_chat:
        try:
            reply = MODEL.chat(msgs, max_tokens=2, temperature=0.0, add_generation_prompt=gen_prompt)
        except LimitError:
            assert len(ids) > MODEL.n_ctx, (len(ids), MODEL.n_ctx)   # the only documented cause
            return
        assert isinstance(reply, str)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
