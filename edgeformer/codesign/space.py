"""The co-design search space: decoder shapes x weight qtype x KV-cache precision.

A `Candidate` is one point: (n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim,
vocab_size, tied) plus the weight qtype and KV precision. `SearchSpace.candidates()`
enumerates the grid, keeping only consistent shapes (dim = n_heads x head_dim, n_heads a
multiple of n_kv_heads) inside a parameter range.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import product

from edgeformer.config import DecoderConfig
from edgeformer.errors import InputError

KV_DTYPES = ("f32", "f16", "int8")


@dataclass(frozen=True)
class Candidate:
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    tied: bool
    qtype: str = "Q4_0"
    kv_dtype: str = "f16"

    def config(self, max_seq_len: int = 8192) -> DecoderConfig:
        """A llama-architecture DecoderConfig of this shape (SwiGLU, RMSNorm, rope)."""
        return DecoderConfig(arch="llama", vocab_size=self.vocab_size, dim=self.dim, n_layers=self.n_layers,
                             n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                             ffn_dim=self.ffn_dim, max_seq_len=max_seq_len, tie_embeddings=self.tied,
                             rope_theta=100000.0, rope_neox=False)

    @property
    def embed_params(self) -> int:
        """Embedding (and, untied, output) matrix parameters."""
        return self.vocab_size * self.dim * (1 if self.tied else 2)

    @property
    def layer_params(self) -> int:
        """Matrices and norms of one block (q, k, v, o; gate, up, down; 2 norms)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return self.dim * (q + 2 * kv) + q * self.dim + 3 * self.dim * self.ffn_dim + 2 * self.dim

    @property
    def params(self) -> int:
        """Total parameters (embeddings counted once if tied), as Hoffmann et al. count N."""
        return self.n_layers * self.layer_params + self.embed_params + self.dim

    @property
    def shape_key(self) -> tuple:
        """The shape without qtype / KV precision."""
        return (self.n_layers, self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.ffn_dim,
                self.vocab_size, self.tied)

    def label(self) -> str:
        """A compact one-line description."""
        return (f"L{self.n_layers} d{self.dim} h{self.n_heads}/{self.n_kv_heads}x{self.head_dim} "
                f"ffn{self.ffn_dim} V{self.vocab_size}{' tied' if self.tied else ''} "
                f"{self.qtype} kv:{self.kv_dtype}")


def _round(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


@dataclass(frozen=True)
class SearchSpace:
    """Axes of the grid; `ffn_mults` are multiples of dim rounded to `ffn_round`;
    `kv_groups` are query heads per KV head."""

    layers: tuple[int, ...] = (8, 12, 16, 20, 24, 30, 32)
    dims: tuple[int, ...] = (384, 512, 576, 768, 896, 1024, 1280, 1536, 2048)
    head_dims: tuple[int, ...] = (64,)
    kv_groups: tuple[int, ...] = (1, 3, 4)
    ffn_mults: tuple[float, ...] = (8 / 3, 4.0)
    ffn_round: int = 256
    vocabs: tuple[int, ...] = (32768, 49152)
    tied: tuple[bool, ...] = (True, False)
    qtypes: tuple[str, ...] = ("Q8_0", "Q4_0", "Q4_K")
    kv_dtypes: tuple[str, ...] = ("f16", "int8")
    params: tuple[float, float] = field(default=(100e6, 1e9))

    def __post_init__(self) -> None:
        bad = set(self.kv_dtypes) - set(KV_DTYPES)
        if bad:
            raise InputError(f"unknown KV precision(s) {sorted(bad)}; known: {', '.join(KV_DTYPES)}")
        lo, hi = self.params
        if not 0 < lo <= hi:
            raise InputError(f"parameter range must satisfy 0 < low <= high, got {lo:g}..{hi:g}")

    def shapes(self) -> Iterator[Candidate]:
        """Consistent shapes within `params` (qtype/kv_dtype left at defaults)."""
        lo, hi = self.params
        for n_layers, dim, hd, g, mult, vocab, tied in product(self.layers, self.dims, self.head_dims,
                                                              self.kv_groups, self.ffn_mults, self.vocabs, self.tied):
            if dim % hd:
                continue
            heads = dim // hd
            if heads % g:
                continue
            c = Candidate(n_layers, dim, heads, heads // g, hd, _round(mult * dim, self.ffn_round), vocab, tied)
            if lo <= c.params <= hi:
                yield c

    def candidates(self) -> Iterator[Candidate]:
        """Every shape x qtype x KV precision."""
        for c in self.shapes():
            for q in self.qtypes:
                for kv in self.kv_dtypes:
                    yield replace(c, qtype=q, kv_dtype=kv)


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_count(s: str) -> float:
    """"100M" -> 1e8, "1B" -> 1e9, "2.5e8" -> 2.5e8. InputError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmbg]?)\s*", s.lower())
    if not m:
        raise InputError(f"not a count: {s!r} (use e.g. 100M, 1B, 2.5e8)")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def parse_range(s: str) -> tuple[float, float]:
    """"100M..1B" -> (1e8, 1e9)."""
    parts = s.split("..")
    if len(parts) != 2:
        raise InputError(f"a parameter range looks like 100M..1B, got {s!r}")
    lo, hi = parse_count(parts[0]), parse_count(parts[1])
    if not 0 < lo <= hi:
        raise InputError(f"parameter range must satisfy 0 < low <= high, got {s!r}")
    return lo, hi
