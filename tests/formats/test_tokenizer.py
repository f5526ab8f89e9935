"""Tokenizer parity on the real shipped vocabularies (SmolLM2: byte-level BPE, pre "smollm";
Gemma 3: SentencePiece-style, 262k tokens) against references nobody here wrote:
llama.cpp (llama-cpp-python, vocab-only) and transformers' GGUF tokenizer conversion.

Where the two references differ, llama.cpp wins (it defines GGUF semantics); the
differences found are asserted as such in `test_hf_differs_only_where_llamacpp_does`."""
from __future__ import annotations

import ctypes
import importlib.util
import random

import pytest


CORPUS = [
    "",
    "Hello world",
    "Hello, world! How are you?",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "a  b   c    d     e",
    "\n",
    "\n\n\n\nfour newlines then text",
    "line1\r\nline2\rline3\n",
    "\ttab\t\ttabs\t",
    "mixed \t \n \t\n  whitespace",
    "   ",
    "I'm sure you're right, they've said it's John's. I'LL DO IT'S",
    "0 12 345 6789 1234567890 3.14159265358979 -42 1e-10 1,234,567.89",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    'print("hello")  {"key": [1, 2, {"n": null}]}  <div class="x">&amp;</div>',
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "emoji 😀😃😄 🇺🇸🇯🇵 👨‍👩‍👧‍👦 👍🏽 ❤️",
    "中文字符测试，日本語のテキスト、한국어 텍스트。",
    "Ünïcödé: café naïve façade ñandú Øre Åsa",
    "combining: e\u0301 a\u0300\u0301 n\u0303 \u0915\u094d\u0937 \u0e01\u0e33",
    "RTL: مرحبا بالعالم שלום עולם",
    "nbsp\u00a0here ideographic\u3000space thin\u2009space",
    "controls \x00\x01\x1f\x7f end",
    "private use \ue000\uf8ff and astral \U0001d49c\U00020000",
    "x" * 200,
    "ab" * 150,
    "😀" * 20,
    " ".join(["token"] * 40),
    "literal ▁ lower one eighth block",
    "special text: <|im_start|>user\nhi<|im_end|> <|endoftext|>",
    "gemma text: <bos><start_of_turn>user\nhi<end_of_turn>\n<eos> <pad> <unused0> [multimodal]",
    "<|im_start|>",
    "<start_of_turn>model\n",
    "<s> </s> <unk> <0x41> <0xFF>",
]

MODELS = ("smollm2-135m-instruct", "gemma3-270m")
HAVE_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None


def _lc_detokenize(L, ids: list[int], special: bool) -> bytes:
    """llama.cpp's own `llama_detokenize` (llama-cpp-python's Llama.detokenize adds a
    space hack of its own, so the C API is called directly)."""
    import llama_cpp
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 * len(ids) + 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(L._model.vocab, arr, len(ids), buf, size, False, special)
    assert 0 <= n <= size
    return buf.raw[:n]


def _lc_piece(L, tid: int, special: bool) -> bytes:
    import llama_cpp
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(L._model.vocab, tid, buf, 256, 0, special)
    assert 0 <= n <= 256
    return buf.raw[:n]


def _random_ids(tok, rng: random.Random, n: int) -> list[int]:
    # mostly ordinary tokens, plus byte/special ids to split UTF-8 and exercise rendering
    ids = [rng.randrange(tok.vocab_size) for _ in range(n)]
    extra = [t for t in (tok.bos_id, tok.eos_id, tok.eot_id) if t is not None]
    extra += [i for i, t in enumerate(tok.tokens) if t.startswith("<0x")][:256:7]
    for k in range(0, n, 5):
        ids[k] = rng.choice(extra)
    return ids


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", MODELS)
def test_encode_matches_llamacpp(shipped, name):
    tok, L = shipped.tokenizer(name), shipped.llamacpp(name)
    bad = []
    for s in CORPUS:
        for add_special in (False, True):
            for parse_special in (False, True):
                ours = tok.encode(s, add_special=add_special, parse_special=parse_special)
                ref = L.tokenize(s.encode("utf-8"), add_bos=add_special, special=parse_special)
                if ours != ref:
                    bad.append((s[:40], add_special, parse_special, ours[:16], ref[:16]))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", MODELS)
def test_pieces_and_decode_match_llamacpp(shipped, name):
    tok, L = shipped.tokenizer(name), shipped.llamacpp(name)
    # every token's bytes, with and without special rendering
    bad = [i for i in range(tok.vocab_size) if tok.piece(i, True) != _lc_piece(L, i, True)]
    bad += [i for i in range(0, tok.vocab_size, 97) if tok.piece(i, False) != _lc_piece(L, i, False)]
    assert not bad, f"token pieces differ, first ids: {bad[:5]}"
    rng = random.Random(0)
    seqs = [tok.encode(s, add_special=True, parse_special=True) for s in CORPUS]
    seqs += [_random_ids(tok, rng, rng.randrange(1, 40)) for _ in range(40)]
    for ids in seqs:
        for special in (False, True):
            assert tok.decode_bytes(ids, special) == _lc_detokenize(L, ids, special), (ids[:10], special)


@pytest.mark.parametrize("name", MODELS)
def test_encode_matches_transformers(shipped, name):
    """Identical ids to transformers with parse_special=True (transformers always splits
    added tokens), with and without BOS. One known difference: for SentencePiece vocabs
    transformers' normalizer turns spaces into "▁" before matching added tokens, so a
    literal "▁" next to spaces can join Gemma's whitespace-run tokens there; llama.cpp
    matches them on the raw text. Those strings are checked against llama.cpp instead."""
    tok, hf = shipped.tokenizer(name), shipped.hf_tokenizer(name)
    bad = []
    for s in CORPUS:
        if tok.kind == "spm" and "▁" in s:
            if HAVE_LLAMACPP:
                L = shipped.llamacpp(name)
                assert tok.encode(s, parse_special=True) == L.tokenize(s.encode("utf-8"), add_bos=True, special=True)
            continue
        ref = hf.encode(s, add_special_tokens=False)
        if tok.encode(s, add_special=False, parse_special=True) != ref:
            bad.append((s[:40], "parse_special", tok.encode(s, add_special=False, parse_special=True)[:12], ref[:12]))
        ref_bos = hf.encode(s, add_special_tokens=True)
        if tok.encode(s, add_special=True, parse_special=True) != ref_bos:
            bad.append((s[:40], "add_special", ref_bos[:4]))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", MODELS)
def test_hf_differs_only_where_llamacpp_does(shipped, name):
    """parse_special=False against transformers' nearest mode (split_special_tokens=True).
    Known differences, both Gemma: llama.cpp promotes end-of-generation texts such as
    "</s>" to control tokens (so they stay plain text here, while transformers matches the
    ordinary "</s>" token), and the literal-"▁" normalisation case. Wherever transformers
    disagrees with us, llama.cpp must agree with us."""
    tok, hf, L = shipped.tokenizer(name), shipped.hf_tokenizer(name), shipped.llamacpp(name)
    n_diff = 0
    for s in CORPUS:
        ours = tok.encode(s, add_special=False, parse_special=False)
        ref = hf.encode(s, add_special_tokens=False, split_special_tokens=True)
        if ours != ref:
            n_diff += 1
            assert ours == L.tokenize(s.encode("utf-8"), add_bos=False, special=False), s
    if name == "smollm2-135m-instruct":   # no user-defined tokens: the references agree
        assert n_diff == 0


@pytest.mark.parametrize("name", MODELS)
def test_special_text_is_not_special_unless_asked(shipped, name):
    tok = shipped.tokenizer(name)
    marker = "<|im_start|>" if name.startswith("smollm") else "<start_of_turn>"
    sid = tok.token_to_id[marker]
    text = f"user says {marker} here"
    assert sid not in tok.encode(text, parse_special=False)
    assert tok.encode(text, parse_special=True).count(sid) == 1
    assert tok.decode(tok.encode(text, add_special=False, parse_special=False)) == text
    assert tok.is_control(sid) and tok.decode([sid]) == "" and tok.decode([sid], special=True) == marker


@pytest.mark.parametrize("name", MODELS)
def test_roundtrip(shipped, name):
    tok = shipped.tokenizer(name)
    for s in CORPUS:
        if tok.kind == "spm" and "▁" in s:
            continue   # SentencePiece writes spaces as ▁: a literal ▁ decodes to a space
        assert tok.decode(tok.encode(s, add_special=False)) == s
        assert tok.decode(tok.encode(s, add_special=True)) == s   # BOS renders as ""


def _stream(tok, ids, special=False) -> list[str]:
    dec = tok.incremental_decoder(special)
    return [dec.add(t) for t in ids] + [dec.flush()]


@pytest.mark.parametrize("name", MODELS)
def test_streaming_matches_full_decode(shipped, name):
    tok = shipped.tokenizer(name)
    rng = random.Random(1)
    held = 0
    for s in CORPUS:
        ids = tok.encode(s, add_special=True, parse_special=True)
        chunks = _stream(tok, ids)
        assert "".join(chunks) == tok.decode(ids)
        assert all("\ufffd" not in c for c in chunks), s   # never a broken character
        held += sum(1 for c in chunks[:-1] if c == "")
    assert held > 0   # multi-byte characters split across tokens were held back
    for _ in range(30):
        ids = _random_ids(tok, rng, rng.randrange(1, 30))
        for special in (False, True):
            assert "".join(_stream(tok, ids, special)) == tok.decode(ids, special)


def test_bos_eos_flags(shipped):
    sm, gm = shipped.tokenizer("smollm2-135m-instruct"), shipped.tokenizer("gemma3-270m")
    # the files' add_bos_token flags: SmolLM2 adds none, Gemma adds <bos>
    assert not sm.add_bos and sm.encode("hi") == sm.encode("hi", add_special=False)
    assert gm.add_bos and gm.encode("hi")[0] == gm.bos_id == gm.token_to_id["<bos>"]
    assert gm.encode("hi", add_bos=False) == gm.encode("hi", add_special=False)
    assert gm.token_to_id["<end_of_turn>"] in gm.stop_ids() and gm.eos_id in gm.stop_ids()
    assert sm.token_to_id["<|im_end|>"] in sm.stop_ids()
