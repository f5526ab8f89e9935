"""KV page storage: the conversions of the paged cache's storage dtypes (f32, f16, bf16,
int8) and `PagedKV`, one layer's keys or values of one sequence left in the pool's pages,
which a backend with `paged_attention` reads in place and any other gets as `dense()`.

Reading a page value as float32 is exact: f16 as numpy casts it, bf16 as the top half of
a float32, int8 as float32(value) * scale (one f32 scale per token and head).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ITEMSIZE = {"f32": 4, "f16": 2, "bf16": 2, "int8": 1}


def to_bf16(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # round to nearest even on the 16 dropped bits (NaN payloads are not preserved)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


def quant_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, D) f32 -> int8 values and (T, H) scales, symmetric per token and head."""
    amax = np.max(np.abs(x), axis=-1)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    inv = np.where(scale > 0, np.float32(1.0) / np.where(scale > 0, scale, 1), np.float32(0.0))
    q = np.clip(np.rint(x * inv[..., None]), -127, 127).astype(np.int8)
    return q, scale


# float32 value of every float16 bit pattern (numpy's own cast, so identical bits, NaNs too)
_F16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@dataclass(frozen=True, eq=False)
class PagedKV:
    """The first `n` token slots of `table`'s pages, in order: (n, H, D) keys or values of
    one layer of one sequence as stored. `pages`: the pool's (num_pages, block_size, H, D)
    array (float32, float16, uint16 bf16 bits or int8), `scale`: int8's (num_pages,
    block_size, H) float32 scales, `dtype`: the storage name."""

    pages: np.ndarray
    scale: np.ndarray | None
    table: np.ndarray          # int64 page ids
    n: int
    dtype: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n,) + tuple(self.pages.shape[2:])

    @property
    def nbytes(self) -> int:
        """Bytes a reader of the n slots touches (values and scales as stored)."""
        h, d = self.pages.shape[2:]
        return self.n * h * (d * ITEMSIZE[self.dtype] + (4 if self.dtype == "int8" else 0))

    def dense(self) -> np.ndarray:
        """The n slots as contiguous float32 (n, H, D)."""
        x = self.pages[self.table]                                # (P, bs, H, D)
        x = x.reshape((-1,) + x.shape[2:])[:self.n]
        if self.dtype == "int8":
            assert self.scale is not None
            return x * self.scale[self.table].reshape(-1, x.shape[1])[:self.n, :, None]
        if self.dtype == "bf16":
            return from_bf16(x)
        if self.dtype == "f16":    # exact, through a 65536-entry table: 2x numpy's f16 cast
            return np.take(_F16_TABLE, x.view(np.uint16))
        return x.astype(np.float32)


@dataclass(frozen=True, eq=False)
class PagedKVBatch:
    """One layer's keys or values of several sequences, left in one pool's pages, for one
    attention call over all their query rows: sequence b owns query rows rows[b]:rows[b+1]
    and sees its n[b] keys at positions start[b], start[b] + 1, ..., stored in the pages
    tables[b, :] lists in order (`PagedKV` of each is `segment(b)`). tables: (B, P) int64
    (rows padded past a sequence's pages), start, n: (B,) int64, rows: (B + 1,) int64."""

    pages: np.ndarray
    scale: np.ndarray | None
    tables: np.ndarray
    start: np.ndarray
    n: np.ndarray
    rows: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(keys of all sequences, H, D)."""
        return (int(self.n.sum()),) + tuple(self.pages.shape[2:])

    def segment(self, b: int) -> PagedKV:
        bs = self.pages.shape[1]
        n = int(self.n[b])
        return PagedKV(self.pages, self.scale, self.tables[b, :-(-n // bs)], n, self.dtype)

    def positions(self, b: int) -> np.ndarray:
        return np.arange(int(self.start[b]), int(self.start[b] + self.n[b]))
