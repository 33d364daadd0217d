"""gemma4stack._core.Tokenizer against independent references.

- llama.cpp's own test vectors for the Llama SentencePiece vocab
  (models/ggml-vocab-llama-spm.gguf.inp/.out, read as tests/test-tokenizer-0.cpp
  does: inputs split on "\\n__ggml_vocab_test__\\n", add_special = false).
- Hugging Face `tokenizers` on TinyStories-656K's tokenizer.json, both for the
  GGUF ("llama" SPM with placeholder scores) and for a "gemma4" GGUF built
  here from the same tokenizer.json (BPE merges, U+2581 spaces, no prefix:
  the shape of Gemma 4's tokenizer).
- SOURCES.md reference ids and text for stories260K.
"""
import json
import random
import threading

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

from gemma4stack import _core  # noqa: E402

TEXTS = [
    "Hello world",
    " Hello world",
    "Once upon a time, there was a little girl named Lily.",
    "The quick brown fox jumps over the lazy dog!",
    "Tom's dog didn't want to go. \"Why?\" asked Mom.",
    "  two leading spaces and trailing  ",
    "a",
    " ",
    "   ",
    "3333333 12345 3.14",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587",
    "emoji \U0001f999 \U0001f680 \u2705 \U0001f636\u200d\U0001f32b\ufe0f",
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438",
    "tabs\tand\nnew\n\nlines\n",
]


def _split_vectors(models):
    raw = (models / "ggml-vocab-llama-spm.gguf.inp").read_bytes().decode("utf-8")
    inputs = raw.split("\n__ggml_vocab_test__\n")
    if inputs and inputs[-1] == "":   # the C++ reader stops at the end of the text
        inputs.pop()
    lines = (models / "ggml-vocab-llama-spm.gguf.out").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(inputs) == len(lines)
    return [(s, [int(x) for x in line.split()]) for s, line in zip(inputs, lines)]


@pytest.fixture(scope="module")
def llama_spm(models):
    return _core.Tokenizer(models / "ggml-vocab-llama-spm.gguf")


@pytest.fixture(scope="module")
def tinystories(models):
    return _core.Tokenizer(models / "TinyStories-656K-Q8_0.gguf")


@pytest.fixture(scope="module")
def hf_json(models):
    return json.loads((models / "tinystories-656k-hf" / "tokenizer.json").read_text(encoding="utf-8"))


def test_llama_spm_matches_llama_cpp_vectors(llama_spm, models):
    cases = _split_vectors(models)
    assert len(cases) == 46
    bad = [(s, llama_spm.encode(s, add_bos=False), want) for s, want in cases
           if llama_spm.encode(s, add_bos=False) != want]
    assert not bad, bad[:3]


def test_llama_spm_vocab_attributes(llama_spm):
    assert (llama_spm.n_vocab, llama_spm.bos_id, llama_spm.eos_id, llama_spm.unk_id) == (32000, 1, 2, 0)
    assert llama_spm.add_bos and llama_spm.add_space_prefix and llama_spm.model == "llama"
    assert llama_spm.token(15043) == "\u2581Hello"
    assert llama_spm.find("\u2581Hello") == 15043 and llama_spm.find("no such token") == -1
    assert llama_spm.piece(15043) == b" Hello" and llama_spm.piece(15043, prev=1) == b"Hello"
    assert llama_spm.piece(13) == b"\n"                    # <0x0A> byte token
    assert llama_spm.piece(1) == b"" and llama_spm.is_control(1) and llama_spm.is_eog(2)
    assert llama_spm.token_type(13) == 6 and llama_spm.token_type(15043) == 1


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_llama_spm(llama_spm, text):
    assert llama_spm.decode(llama_spm.encode(text)) == text
    assert llama_spm.decode(llama_spm.encode(text, add_bos=False)) == text


def test_round_trip_random_unicode(llama_spm):
    rng = random.Random(5)
    alphabet = "ab \n\t.,!?\u00e9\u00df\u4e2d\u6587\u3042\U0001f999\U0001f680\u0410\u0416\u05d0\u0627"
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert llama_spm.decode(llama_spm.encode(s)) == s


def test_special_tokens_need_parse_special(llama_spm):
    assert llama_spm.encode("<s>hi", parse_special=True) == [1, 1, 7251]
    plain = llama_spm.encode("<s>hi")
    assert plain[0] == 1 and 1 not in plain[1:]
    assert llama_spm.decode(plain) == "<s>hi"


def test_decode_errors(llama_spm):
    with pytest.raises(ValueError, match="40000"):
        llama_spm.decode([1, 40000])
    with pytest.raises(ValueError, match="-5"):
        llama_spm.piece(-5)
    assert llama_spm.decode([243, 162]) == "\ufffd"   # a cut emoji: replaced, no exception


def test_concurrent_encode_long_text(llama_spm):
    text = " ".join(TEXTS) * 300   # ~200 kB: encoded with the GIL released
    want = llama_spm.encode(text)
    results = []
    threads = [threading.Thread(target=lambda: results.append(llama_spm.encode(text))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [want] * 4
    assert llama_spm.decode(want) == text


def _hf_tokenizer(j):
    return tokenizers.Tokenizer.from_str(json.dumps(j))


def _strings_for_tinystories(vocab_tokens, n=400, seed=11):
    """Random concatenations of vocab pieces (no special-token text: HF
    always splits those, llama.cpp only with parse_special) plus fixed texts."""
    rng = random.Random(seed)
    words = [t.replace("\u2581", " ") for t in vocab_tokens[3:] if "<|" not in t and "\n" not in t]
    words += ["  ", "\u00e9", "\u65e5\u672c", "\U0001f999"]   # unknown characters -> <unk>
    out = [t for t in TEXTS if "\n" not in t]
    for _ in range(n):
        out.append("".join(rng.choice(words) for _ in range(rng.randint(1, 12))))
    return out


def test_tinystories_gguf_agrees_with_hf_tokenizers(tinystories, hf_json):
    hf = _hf_tokenizer(hf_json)
    vocab = sorted(hf_json["model"]["vocab"], key=hf_json["model"]["vocab"].get)
    bad = []
    for s in _strings_for_tinystories(vocab):
        ours = tinystories.encode(s, add_bos=False)
        ref = hf.encode(s, add_special_tokens=False).ids
        if ours != ref:
            bad.append((s, ours, ref))
    assert not bad, bad[:3]
    # with BOS as the HF post-processor adds it
    s = "Once upon a time"
    assert tinystories.encode(s) == hf.encode(s).ids
    ids = hf.encode(s, add_special_tokens=False).ids
    assert tinystories.decode(ids) == hf.decode(ids) == s


def test_tinystories_reference_ids_decode(tinystories):
    # SOURCES.md: greedy ids from BOS decode to this text
    ids = [147, 201, 282, 215, 286, 598, 1662, 356, 499, 826, 1363, 1145, 1652, 615, 242,
           1482, 951, 628, 499, 826]
    assert tinystories.decode([1] + ids).startswith(
        "Once upon a time, there was a little girl named Lily. She had a toy car that she loved very much.")


def test_stories260k_reference(models):
    t = _core.Tokenizer(models / "stories260K.gguf")
    assert t.encode("Once upon a time") == [1, 403, 407, 261, 378]
    ids = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396,
           267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433]
    text = ("Once upon a time, there was a little girl named Lily. "
            "She loved to play outside in the park")
    assert t.decode([1] + ids) == text
    assert t.encode(text) == [1] + ids
    for s in TEXTS:
        assert t.decode(t.encode(s)) == s


# ---- a Gemma-4-shaped vocabulary ("gemma4": BPE merges, no space prefix) ----

def _write_gguf(path, model, tokens, types, merges=None, **extra):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([-1000.0] * len(tokens))
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(extra.get("bos", 1))
    w.add_eos_token_id(extra.get("eos", 2))
    w.add_unk_token_id(0)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def gemma4_like(hf_json, tmp_path_factory):
    """A "gemma4" GGUF from TinyStories' tokenizer.json, and the HF tokenizer
    without its Prepend("\u2581") normalizer: Gemma 4's tokenizer replaces
    spaces by U+2581 but adds no dummy prefix."""
    vocab = hf_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {a["content"] for a in hf_json["added_tokens"] if a["special"]}
    types = [3 if t in special else 6 if t.startswith("<0x") else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf_json["model"]["merges"]]
    path = tmp_path_factory.mktemp("gemma4") / "gemma4-like-vocab.gguf"
    _write_gguf(path, "gemma4", tokens, types, merges)
    j = json.loads(json.dumps(hf_json))
    j["normalizer"]["normalizers"] = [n for n in j["normalizer"]["normalizers"] if n["type"] != "Prepend"]
    j["post_processor"] = None
    return _core.Tokenizer(path), _hf_tokenizer(j), tokens


def test_gemma4_bpe_agrees_with_hf_tokenizers(gemma4_like):
    tok, hf, tokens = gemma4_like
    assert tok.model == "gemma4" and tok.add_bos and not tok.add_space_prefix
    bad = []
    for s in _strings_for_tinystories(tokens, seed=12):
        ours = tok.encode(s, add_bos=False)
        ref = hf.encode(s, add_special_tokens=False).ids
        if ours != ref:
            bad.append((s, ours, ref))
    assert not bad, bad[:3]


def test_gemma4_bpe_newline_runs_and_decode(gemma4_like):
    tok, hf, _ = gemma4_like
    nl = tok.find("\n")
    # llama.cpp's GEMMA4 pre-tokenizer cuts the text at newline runs
    ids = tok.encode("Lily smiled.\nBen", add_bos=False)
    assert nl in ids
    assert tok.decode(ids) == "Lily smiled.\nBen"
    assert tok.encode("a b")[0] == tok.bos_id
    for s in TEXTS:
        if all(32 <= ord(c) < 127 or c == "\n" for c in s):   # characters this vocab has
            assert tok.decode(tok.encode(s)) == s   # no space prefix to strip


def test_unsupported_tokenizer_model_is_named(tmp_path):
    path = tmp_path / "gpt2-vocab.gguf"
    _write_gguf(path, "gpt2", ["<unk>", "<s>", "</s>", "a"], [2, 3, 3, 1], ["a a"])
    with pytest.raises(_core.UnsupportedError, match="gpt2"):
        _core.Tokenizer(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        _core.Tokenizer(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(_core.GGUFError):
        _core.Tokenizer(junk)
    nomerges = tmp_path / "gemma4-nomerges.gguf"
    _write_gguf(nomerges, "gemma4", ["<unk>", "<s>", "</s>", "a"], [2, 3, 3, 1])
    with pytest.raises(_core.GGUFError, match="merges"):
        _core.Tokenizer(nomerges)


# ---- Gemma-4-style tokenizer from tests/gemma4_ref.py (byte tokens, turn markers) ----

@pytest.fixture(scope="module")
def gemma4_toy(tmp_path_factory):
    """tests/gemma4_ref.make_tokenizer (HF `tokenizers` BPE, spaces -> U+2581, <0xXX> byte
    fallback, Gemma 4's special tokens) written as a vocab-only "gemma4" GGUF with the types
    llama.cpp's Gemma4Model.set_vocab gives: named specials CONTROL, channel markers
    USER_DEFINED, bytes BYTE."""
    import gemma4_ref as R
    d = tmp_path_factory.mktemp("g4tok")
    R.make_tokenizer(d)
    j = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in j["model"]["vocab"].items()}
    by_id.update({a["id"]: a["content"] for a in j["added_tokens"]})
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [4 if t in ("<|channel>", "<channel|>") else 3 if t in R.SPECIALS
             else 6 if t.startswith("<0x") else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    path = d / "gemma4-toy-vocab.gguf"
    _write_gguf(path, "gemma4", tokens, types, merges, bos=tokens.index("<bos>"), eos=tokens.index("<eos>"))
    return _core.Tokenizer(path), tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")), tokens


def _gemma4_reference(hf, vocab, text):
    """llama.cpp's GEMMA4 pre-tokenizer on top of HF's BPE: cut the text into newline runs
    and other runs; a newline run that is a token stays whole; HF encodes the rest
    (special tokens contain no newline, so HF's own special-token split is unaffected)."""
    import re
    ids = []
    for piece in re.findall(r"[^\n]+|\n+", text):
        if piece[0] == "\n" and piece in vocab:
            ids.append(vocab[piece])
        else:
            ids += hf.encode(piece, add_special_tokens=False).ids
    return ids


def test_gemma4_toy_tokenizer_matches_hf(gemma4_toy):
    tok, hf, tokens = gemma4_toy
    vocab = {t: i for i, t in enumerate(tokens)}
    rng = random.Random(21)
    pieces = [t.replace("\u2581", " ") for t in tokens if not t.startswith("<")]
    pieces += ["\n", "\n\n", "\n\n\n", " ", "\u00e9", "\u6771\u4eac", "\U0001f642", "\U0001f999", "<|turn>",
               "<turn|>", "<|channel>", "<bos>"]
    texts = TEXTS + ["<bos><|turn>user\nHello there<turn|>\n<|turn>model\nHi!<turn|>\n",
                     "<|channel>thought<channel|>The answer is 42."]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 15))) for _ in range(400)]
    bad = []
    for s in texts:
        ours = tok.encode(s, add_bos=False, parse_special=True)
        ref = _gemma4_reference(hf, vocab, s)
        if ours != ref:
            bad.append((s, ours, ref))
    assert not bad, bad[:3]


def test_gemma4_toy_specials_and_decode(gemma4_toy):
    tok, hf, tokens = gemma4_toy
    turn, end, chan = tokens.index("<|turn>"), tokens.index("<turn|>"), tokens.index("<|channel>")
    assert tok.bos_id == tokens.index("<bos>") and tok.eos_id == tokens.index("<eos>")
    assert tok.add_bos                                                # forced for gemma4
    assert tok.encode("<|turn>user", parse_special=True)[:2] == [tok.bos_id, turn]
    plain = tok.encode("<|turn>user", parse_special=False)
    assert turn not in plain                                          # control: text unless parse_special
    assert chan in tok.encode("<|channel>x", parse_special=False)     # user defined: always matched
    assert tok.is_eog(end) and tok.is_eog(tok.eos_id) and not tok.is_eog(turn)
    s = "Hi <|channel>caf\u00e9 \U0001f642<turn|>\n\nbye"
    ids = tok.encode(s, parse_special=True)
    # control tokens render as nothing, user-defined ones verbatim, bytes re-join into UTF-8
    assert tok.decode(ids) == "Hi <|channel>caf\u00e9 \U0001f642\n\nbye"
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False).replace("<bos>", "").replace("<turn|>", "")
