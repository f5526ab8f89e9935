"""Byte-level BPE (GGUF `tokenizer.ggml.model == "gpt2"`): pre-tokenizer regexes chosen
by `tokenizer.ggml.pre`, GPT-2 byte-to-unicode encoding, rank-ordered merges.

Follows llama.cpp `src/llama-vocab.cpp` (`llm_tokenizer_bpe`, `llm_tokenizer_bpe_session`)
and `src/unicode.cpp` (`unicode_regex_split`): each pre-tokenizer regex of the list splits
every current piece into its matches and the gaps between them; then every piece is
byte-encoded and merged independently, lowest merge rank first, leftmost on ties.
"""
from __future__ import annotations

import heapq
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from edgeformer.errors import UnsupportedError

# llama.cpp's \s: the Unicode White_Space set (unicode-data.cpp `unicode_set_whitespace`),
# not Python's str.isspace (which also counts U+001C..U+001F).
_WHITESPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]


def _ranges_to_class(cps: Sequence[int]) -> str:
    """Sorted code points -> the body of a regex character class (ranges, escaped)."""
    out: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        a, b = re.escape(chr(cps[i])), re.escape(chr(cps[j]))
        out.append(a if i == j else f"{a}-{b}")
        i = j + 1
    return "".join(out)


@lru_cache(maxsize=1)
def unicode_classes() -> dict[str, str]:
    """Character-class bodies for the Unicode general categories llama.cpp's regexes use
    (L letters, N numbers, P punctuation, S symbols, M marks) from Python's unicodedata,
    and W for llama.cpp's whitespace set. Built once (~0.3 s)."""
    groups: dict[str, list[int]] = {"L": [], "N": [], "P": [], "S": [], "M": []}
    cat = unicodedata.category
    for cp in range(sys.maxunicode + 1):
        g = groups.get(cat(chr(cp))[0])
        if g is not None:
            g.append(cp)
    classes = {k: _ranges_to_class(v) for k, v in groups.items()}
    classes["W"] = _ranges_to_class(_WHITESPACE)
    return classes


# Pre-tokenizer regexes, written with {L} {N} {P} {W} placeholders for the classes above.
# Sources: llama.cpp `llm_tokenizer_bpe` constructor (the "adapted" forms) and the
# tokenizer.json pre-tokenizers they mirror.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+"
_CONTRACTIONS_CI = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS_CI + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{W}{L}{N}]+[\r\n]*"
           r"|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+")
_QWEN2 = (_CONTRACTIONS_CI + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]| ?[^{W}{L}{N}]+[\r\n]*"
          r"|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+")
_DEFAULT = [r"[{P}\$\+<=>\^~\|]+", _GPT2, r"[{N}]+", r"[0-9][0-9][0-9]"]


@dataclass(frozen=True)
class PreTokenizer:
    """How one `tokenizer.ggml.pre` value behaves in llama.cpp."""
    regexes: tuple[str, ...]
    clean_spaces: bool = True     # llama.cpp `clean_spaces` (clean_up_tokenization_spaces)
    ignore_merges: bool = False   # a piece that is a whole vocab token is taken as is
    add_bos: bool | None = None   # pre-type default, overridden by tokenizer.ggml.add_bos_token


_PRE_FAMILIES: list[tuple[tuple[str, ...], PreTokenizer]] = [
    (("default",), PreTokenizer(tuple(_DEFAULT))),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"),
     PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)),
    (("smollm",), PreTokenizer((r"[{N}]", _GPT2), clean_spaces=False)),
    (("starcoder", "refact"), PreTokenizer((r"[{N}]", _GPT2))),
    (("command-r",), PreTokenizer((r"[{N}]", _GPT2), clean_spaces=False)),
    (("gpt-2", "phi-2", "mpt", "olmo"), PreTokenizer((_GPT2,))),
    (("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), PreTokenizer((_QWEN2,), clean_spaces=False)),
]
PRE_TOKENIZERS: dict[str, PreTokenizer] = {name: p for names, p in _PRE_FAMILIES for name in names}


def pre_tokenizer(pre: str | None) -> PreTokenizer:
    """The PreTokenizer for a `tokenizer.ggml.pre` value (missing -> "default", as in
    llama.cpp). Raises UnsupportedError naming the supported values."""
    name = pre or "default"
    if name not in PRE_TOKENIZERS:
        raise UnsupportedError(f"BPE pre-tokenizer {name!r} is not supported; supported: "
                               f"{', '.join(sorted(PRE_TOKENIZERS))}")
    return PRE_TOKENIZERS[name]


@lru_cache(maxsize=32)
def _compile(template: str) -> re.Pattern:
    return re.compile(template.format(**unicode_classes()))


def split_words(text: str, regexes: Sequence[str]) -> list[str]:
    """llama.cpp `unicode_regex_split` without the byte encoding: each regex in turn cuts
    every piece into matches and unmatched gaps (both kept)."""
    pieces = [text] if text else []
    for template in regexes:
        pat = _compile(template)
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for m in pat.finditer(piece):
                s, e = m.span()
                if s == e:
                    continue
                if s > pos:
                    out.append(piece[pos:s])
                out.append(piece[s:e])
                pos = e
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


@lru_cache(maxsize=1)
def byte_encoder() -> tuple[str, ...]:
    """GPT-2's bytes_to_unicode: byte value -> the printable character standing for it."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return tuple(table[b] for b in range(256))


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Inverse of byte_encoder."""
    return {c: b for b, c in enumerate(byte_encoder())}


@lru_cache(maxsize=1)
def _latin1_to_bytelevel() -> dict[int, str]:
    # str.translate table: a latin-1-decoded byte -> its byte-level character
    return {b: c for b, c in enumerate(byte_encoder())}


def byte_encode(word: str) -> str:
    """UTF-8 bytes of `word`, each written as its byte-level character."""
    return word.encode("utf-8").decode("latin-1").translate(_latin1_to_bytelevel())


class BPEModel:
    """Merges for one vocabulary. `token_to_id` maps every vocab string (all token types,
    as llama.cpp's `text_to_token`) to its id; `merges` are "left right" strings in rank
    order."""

    def __init__(self, token_to_id: dict[str, int], merges: Sequence[str], pre: PreTokenizer) -> None:
        self.token_to_id = token_to_id
        self.pre = pre
        self.ranks: dict[tuple[str, str], int] = {}
        for i, m in enumerate(merges):
            cut = m.find(" ", 1)   # llama.cpp: first space after position 0
            first, second = (m[:cut], m[cut + 1:]) if cut >= 0 else ("", "")
            self.ranks.setdefault((first, second), i)
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of raw text that holds no special token (already partitioned out)."""
        out: list[int] = []
        cache = self._cache
        for word in split_words(text, self.pre.regexes):
            ids = cache.get(word)
            if ids is None:
                ids = self._encode_word(byte_encode(word))
                if len(cache) > 200_000:   # bound memory on adversarial input
                    cache.clear()
                cache[word] = ids
            out.extend(ids)
        return out

    def _encode_word(self, word: str) -> tuple[int, ...]:
        t2i = self.token_to_id
        if self.pre.ignore_merges and word in t2i:
            return (t2i[word],)
        syms = self._merge(word)
        out: list[int] = []
        for s in syms:
            tid = t2i.get(s)
            if tid is not None:
                out.append(tid)
            else:
                # llama.cpp looks each raw byte of the piece up as a one-byte string; only
                # ASCII bytes can be such a key
                out.extend(t2i[chr(b)] for b in s.encode("utf-8") if b < 0x80 and chr(b) in t2i)
        return tuple(out)

    def _merge(self, word: str) -> list[str]:
        """The merge loop of `llm_tokenizer_bpe_session::tokenize`: a heap of adjacent pairs
        keyed (rank, left index); a popped pair whose symbols changed since it was pushed
        is skipped."""
        n = len(word)
        if n <= 1:
            return [word] if word else []
        sym = list(word)
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        ranks = self.ranks
        heap: list[tuple[int, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            r = ranks.get((sym[left], sym[right]))
            if r is not None:
                heapq.heappush(heap, (r, left, right, sym[left] + sym[right]))

        for i in range(1, n):
            push(i - 1, i)
        while heap:
            _, left, right, text = heapq.heappop(heap)
            if not sym[left] or not sym[right] or sym[left] + sym[right] != text:
                continue
            sym[left] = text
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])
        return [s for s in sym if s]
