"""SentencePiece-style BPE (GGUF `tokenizer.ggml.model == "llama"`: Llama 1/2, Gemma).

llama.cpp's `llm_tokenizer_spm_session` bigram algorithm: start from single characters,
repeatedly merge the adjacent pair whose concatenation is the vocab token with the highest
score (leftmost on ties), then re-segment any final symbol that is not a token through the
pair it was last merged from, down to byte-fallback tokens (`<0xNN>`).
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence

from edgeformer.errors import InputError

SPACE_ESCAPE = "\u2581"   # "▁", SentencePiece's visible space
CHUNK_FROM = 2048         # longer texts are cut at safe spaces (SPMModel.chunks) and cached by piece


class SPMModel:
    """`token_to_id` maps every vocab string (all token types) to its id; `scores` are the
    per-token merge priorities. `unk_id` stands for a piece whose bytes have no byte
    token (a vocabulary without byte fallback, as SentencePiece does)."""

    def __init__(self, token_to_id: dict[str, int], scores: Sequence[float], unk_id: int | None = None) -> None:
        self.token_to_id = token_to_id
        self.scores = scores
        self.unk_id = unk_id
        self._pairs: frozenset[str] | None = None
        self._cache: dict[str, tuple[int, ...]] = {}
        self._byte_ids: list[int | None] = []
        for b in range(256):
            tid = token_to_id.get(f"<0x{b:02X}>")
            if tid is None and b < 0x80:
                tid = token_to_id.get(chr(b))   # llama.cpp falls back to the byte as text
            self._byte_ids.append(tid)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, already space-escaped (and space-prefixed) by the caller.
        A text over CHUNK_FROM characters is encoded piece by piece (`chunks`: the same
        ids), each piece cached, as BPE caches words: prose repeats its words, which made
        long prompts take ~20 s/MB with Gemma's vocabulary."""
        if len(text) <= CHUNK_FROM:
            return self._encode(text)
        out: list[int] = []
        cache = self._cache
        for piece in self.chunks(text):
            ids = cache.get(piece)
            if ids is None:
                ids = tuple(self._encode(piece))
                if len(cache) > 200_000:   # bound memory on adversarial input
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)
        return out

    def chunks(self, text: str) -> list[str]:
        """`text` cut before each SPACE_ESCAPE whose pair with the character before it is
        inside no vocabulary token. No merge crosses such a cut (a merge only ever forms a
        vocabulary token, which would hold that pair) and the byte fallback is per symbol,
        so the pieces encode independently to the ids of the whole (`rev_merge` is only
        consulted for symbols that are not tokens: single characters, never merged)."""
        if self._pairs is None:   # built on first use: ~0.3 s for Gemma's 262k tokens
            self._pairs = frozenset(t[i:i + 2] for t in self.token_to_id for i in range(len(t) - 1))
        pairs, out, start = self._pairs, [], 0
        p = text.find(SPACE_ESCAPE, 1)
        while p > 0:
            if text[p - 1:p + 1] not in pairs:
                out.append(text[start:p])
                start = p
            p = text.find(SPACE_ESCAPE, p + 1)
        out.append(text[start:])
        return out

    def _encode(self, text: str) -> list[int]:
        n = len(text)
        if n == 0:
            return []
        t2i, scores = self.token_to_id, self.scores
        # symbol i covers text[start[i]:start[i] + length[i]] (chars); nbytes is its UTF-8
        # size, which llama.cpp's staleness check compares
        start = list(range(n))
        length = [1] * n
        cbytes = [len(c.encode("utf-8")) for c in text]
        nbytes = list(cbytes)
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        heap: list[tuple[float, int, int, int]] = []
        rev_merge: dict[str, tuple[int, int]] = {}

        def try_add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            s = text[start[left]:start[left] + length[left] + length[right]]
            tid = t2i.get(s)
            if tid is None:
                return
            heapq.heappush(heap, (-scores[tid], left, right, nbytes[left] + nbytes[right]))
            rev_merge[s] = (left, right)

        for i in range(1, n):
            try_add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if nbytes[left] == 0 or nbytes[right] == 0 or nbytes[left] + nbytes[right] != size:
                continue
            length[left] += length[right]
            nbytes[left] += nbytes[right]
            length[right] = nbytes[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            try_add(prev[left], left)
            try_add(left, nxt[left])

        out: list[int] = []

        def resegment(i: int) -> None:
            s = text[start[i]:start[i] + length[i]]
            tid = t2i.get(s)
            if tid is not None:
                out.append(tid)
                return
            p = rev_merge.get(s)
            if p is None:
                ids = [self._byte_ids[b] for b in s.encode("utf-8")]
                if None not in ids:
                    out.extend(ids)  # type: ignore[arg-type]
                elif self.unk_id is not None:
                    out.append(self.unk_id)
                else:   # llama.cpp throws here too (byte_to_token: token_to_id.at)
                    raise InputError(f"cannot encode {s[:20]!r}: the vocabulary has no byte tokens for it "
                                     "and no unknown token")
                return
            resegment(p[0])
            resegment(p[1])

        i = 0
        while i != -1:
            resegment(i)
            i = nxt[i]
        return out
