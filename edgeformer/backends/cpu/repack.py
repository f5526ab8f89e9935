"""Repack a GGUF-layout QTensor once, at load, into the CPU kernels' layout, and dequantize
rows of a packed weight (embedding lookups).

Layout (`PackedWeight.arrays`, every array 2-D with one row per output, C-contiguous):
  Q8_0  qs int8 (N, K),     d f16-bits (N, K/32)
  Q4_0  qs uint8 (N, K/2),  d (N, K/32)                  nibbles in ggml block order
  Q4_1  qs uint8 (N, K/2),  d, m (N, K/32)
  Q5_0  qs uint8 (N, K/2),  qh uint8 (N, K/8), d (N, K/32)  qh: the block's uint32 bytes (LE)
  Q5_1  qs uint8 (N, K/2),  qh uint8 (N, K/8), d, m (N, K/32)
  Q4_K  qs uint8 (N, K/2),  sc, mn uint8 (N, K/32), d, dmin f16-bits (N, K/256)
  Q5_K  qs (N, K/2), qh (N, K/8), sc, mn (N, K/32), d, dmin (N, K/256)
  Q6_K  ql (N, K/2), qh (N, K/4), sc int8 (N, K/16), d (N, K/256)
  F16 / BF16 / F32  (ceil(N/16), K, 16) panels of uint16 bits / float32: 16 rows
              interleaved per column, zero rows padded (`panel_gemm.py`'s register tile)
With integer activations, Q8_0 / Q4_0 / Q4_1 quants are put in the lane layout at bind
(`set_lanes`: a byte permutation per row, whole groups of 16 blocks, `simd_rows._lanes`).
Scales stay half precision (converted in-register by `simd.f16_to_f32`) so a packed weight
reads the same bytes per token as the file: Q4_K/Q5_K's 6-bit packed scales are unpacked to
one byte each (+4 bytes per 256 weights, <3%) to keep bit twiddling out of the hot loop.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeformer.backends.cpu.panel_gemm import from_panels, to_panels
from edgeformer.errors import UnsupportedError
from edgeformer.quant.qtypes import QTensor, QType

# qtypes with a native kernel; others are dequantized to F32 at load (with a warning).
NATIVE = (QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q4_K, QType.Q5_K, QType.Q6_K,
          QType.F16, QType.BF16, QType.F32)


FLOAT = (QType.F32, QType.F16, QType.BF16)   # panel layout, `panel_gemm.py` kernels


class PackedWeight:
    """A weight in CPU-kernel layout: `kind` (the QType its arrays follow), logical
    (n, k), the arrays, and `kernel`, the Numba linear kernel bound at prepare time
    (`linear.bind`) so a call does no dispatch in Python, with `fields`, the arrays as the
    slot fields a quantized kernel takes (`kinds.slot`)."""

    __slots__ = ("kind", "n", "k", "arrays", "kernel", "fields", "act", "lanes")

    def __init__(self, kind: QType, n: int, k: int, arrays: tuple[np.ndarray, ...],
                 kernel: Callable[..., None] | None = None, act: np.ndarray | None = None) -> None:
        self.kind, self.n, self.k, self.arrays, self.kernel = kind, n, k, arrays, kernel
        self.fields: tuple[np.ndarray, ...] = ()
        # quantized kinds: an empty array of the activations' integer dtype (int16/int8),
        # or None for float32 activations against dequantized panels
        self.act = act
        self.lanes = False      # quants in the lane layout (`set_lanes`)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def __repr__(self) -> str:
        return f"PackedWeight({self.kind.name}, n={self.n}, k={self.k}, {self.nbytes} B)"


def _field(blocks: np.ndarray, lo: int, hi: int, dtype, n: int) -> np.ndarray:
    """Bytes [lo, hi) of every block, as a C-contiguous (n, -1) array of `dtype`."""
    return np.ascontiguousarray(blocks[:, :, lo:hi]).view(dtype).reshape(n, -1)


def _k4_scales(s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpack Q4_K/Q5_K 12-byte scale fields (n, nsb, 12) into 6-bit scales and mins, each
    (n, nsb * 8) uint8 (ggml-quants.c `get_scale_min_k4`)."""
    s = s.astype(np.uint8)
    sc = np.empty(s.shape[:2] + (8,), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc.reshape(n, -1), mn.reshape(n, -1)


def repack(qt: QTensor) -> PackedWeight:
    """QTensor (N, K) in a NATIVE qtype -> PackedWeight (arrays copied out of the file
    bytes; the QTensor can be dropped). Raises UnsupportedError for other qtypes/ranks."""
    if len(qt.shape) != 2:
        raise UnsupportedError(f"cpu backend: weights must be 2-D (N, K), got shape {qt.shape}")
    n, k = qt.shape
    q = qt.qtype
    if q not in NATIVE:
        raise UnsupportedError(f"cpu backend has no packed layout for {q.name}")
    if q in FLOAT:
        rows = np.asarray(qt.data).view(np.float32 if q == QType.F32 else np.uint16).reshape(n, k)
        return PackedWeight(q, n, k, (to_panels(rows),))
    blocks = np.asarray(qt.data).reshape(n, k // q.block_size, q.type_size)
    f = lambda lo, hi, dt=np.uint8: _field(blocks, lo, hi, dt, n)  # noqa: E731
    if q == QType.Q8_0:
        arrays = (f(2, 34, np.int8), f(0, 2, np.uint16))
    elif q == QType.Q4_0:
        arrays = (f(2, 18), f(0, 2, np.uint16))
    elif q == QType.Q4_1:
        arrays = (f(4, 20), f(0, 2, np.uint16), f(2, 4, np.uint16))
    elif q == QType.Q5_0:     # block_q5_0: d f16, qh u32, qs[16]
        arrays = (f(6, 22), f(2, 6), f(0, 2, np.uint16))
    elif q == QType.Q5_1:     # block_q5_1: d f16, m f16, qh u32, qs[16]
        arrays = (f(8, 24), f(4, 8), f(0, 2, np.uint16), f(2, 4, np.uint16))
    elif q == QType.Q4_K:
        sc, mn = _k4_scales(blocks[:, :, 4:16], n)
        arrays = (f(16, 144), sc, mn, f(0, 2, np.uint16), f(2, 4, np.uint16))
    elif q == QType.Q5_K:
        sc, mn = _k4_scales(blocks[:, :, 4:16], n)
        arrays = (f(48, 176), f(16, 48), sc, mn, f(0, 2, np.uint16), f(2, 4, np.uint16))
    else:  # Q6_K
        arrays = (f(0, 128), f(128, 192), f(192, 208, np.int8), f(208, 210, np.uint16))
    return PackedWeight(q, n, k, arrays)


LANE_KINDS = (QType.Q8_0, QType.Q4_0, QType.Q4_1)


def lanes_of(q: QType, qs: np.ndarray, k: int, on: bool) -> np.ndarray:
    """Rows of quants `qs` (row length k) into (on) or out of the lane layout (`simd_rows`'
    group layout; blocks past the last whole group of 16 keep their place): a transpose of
    each whole group (a gather by an index array took 0.33 s for SmolLM2's 49152 x 576 Q8_0
    head; this 0.13-0.16 s)."""
    n, g = qs.shape[0], k // 512
    if q == QType.Q8_0:      # [j, h, p, e] <-> [p, h, j, e]: axes 2 and 4 swap
        cut, shape, axes = g * 512, (16, 2, 8, 2) if on else (8, 2, 16, 2), (0, 1, 4, 3, 2, 5)
    else:                    # [j, p, e] <-> [p, j, e]
        cut, shape, axes = g * 256, (16, 8, 2) if on else (8, 16, 2), (0, 1, 3, 2, 4)
    out = np.empty_like(qs)
    out[:, cut:] = qs[:, cut:]
    out[:, :cut] = qs[:, :cut].reshape((n, g) + shape).transpose(axes).reshape(n, cut)
    return out


def set_lanes(w: PackedWeight, on: bool) -> None:
    """Put w's quants into (on) or out of the lane layout, in place (a no-op when already
    there, or for kinds without one)."""
    if w.kind not in LANE_KINDS or w.lanes == on:
        return
    w.arrays = (lanes_of(w.kind, w.arrays[0], w.k, on),) + w.arrays[1:]
    w.lanes = on


def concat_rows(parts: list[PackedWeight]) -> PackedWeight:
    """Packed weights of one kind and row length stacked by rows (every layout array has one
    row per output, so this is a row concatenation of each array)."""
    p0 = parts[0]
    if any(p.kind != p0.kind or p.k != p0.k or p.lanes != p0.lanes for p in parts):
        raise UnsupportedError("concat_rows: parts differ in qtype, row length or layout")
    if p0.kind in FLOAT:     # panels hold 16 rows each: re-panel the stacked rows
        rows = np.concatenate([from_panels(p.arrays[0], p.n) for p in parts])
        return PackedWeight(p0.kind, rows.shape[0], p0.k, (to_panels(rows),))
    arrays = tuple(np.concatenate([p.arrays[i] for p in parts]) for i in range(len(p0.arrays)))
    out = PackedWeight(p0.kind, sum(p.n for p in parts), p0.k, arrays)
    out.lanes = p0.lanes
    return out


def _h(a: np.ndarray) -> np.ndarray:
    return a.view(np.float16).astype(np.float32)


def dequantize_rows(w: PackedWeight, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of a packed weight as float32 (len(ids), K), bit-exact with the
    reference dequantizer (same float32 operation order as gguf-py / ggml)."""
    t, k, q = len(ids), w.k, w.kind
    if q in FLOAT:
        r = from_panels(w.arrays[0], w.n, ids)
        if q == QType.F32:
            return r.astype(np.float32, copy=True)
        if q == QType.F16:
            return r.view(np.float16).astype(np.float32)
        return (r.astype(np.uint32) << 16).view(np.float32)
    a = [x[ids] for x in w.arrays]
    if w.lanes:
        a[0] = lanes_of(q, a[0], k, False)
    if q == QType.Q8_0:
        return (_h(a[1])[:, :, None] * a[0].reshape(t, -1, 32)).reshape(t, k)
    if q in (QType.Q4_0, QType.Q4_1):
        qs = a[0].reshape(t, -1, 16)
        v = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)  # (t, nb, 32)
        if q == QType.Q4_0:
            return (_h(a[1])[:, :, None] * (v - 8)).reshape(t, k)
        return (_h(a[1])[:, :, None] * v + _h(a[2])[:, :, None]).reshape(t, k)
    if q in (QType.Q5_0, QType.Q5_1):
        qs = a[0].reshape(t, -1, 16)
        # bit j of a block's little-endian uint32 qh is the 5th bit of weight j
        qh = a[1].reshape(t, -1, 4, 1) >> np.arange(8, dtype=np.uint8)[None, None, None, :]
        v = np.concatenate([qs & 15, qs >> 4], axis=-1) | ((qh.reshape(t, -1, 32) & 1) << 4)
        if q == QType.Q5_0:
            return (_h(a[2])[:, :, None] * (v.astype(np.float32) - 16)).reshape(t, k)
        return (_h(a[2])[:, :, None] * v.astype(np.float32) + _h(a[3])[:, :, None]).reshape(t, k)
    if q in (QType.Q4_K, QType.Q5_K):
        qs = a[0].reshape(t, -1, 4, 32)                                   # (t, nsb, chunk, 32)
        v = np.stack([qs & 15, qs >> 4], axis=3).reshape(t, -1, 8, 32)    # sub-block s = 2c + half
        if q == QType.Q5_K:
            qh = a[1].reshape(t, -1, 1, 32)
            v = v | (((qh >> np.arange(8, dtype=np.uint8)[None, None, :, None]) & 1) << 4)
        sc, mn, d, dmin = a[-4:]
        d_ = (_h(d)[:, :, None] * sc.reshape(t, -1, 8).astype(np.float32))[..., None]
        m_ = (_h(dmin)[:, :, None] * mn.reshape(t, -1, 8).astype(np.float32))[..., None]
        return (d_ * v.astype(np.float32) - m_).reshape(t, k)
    if q == QType.Q6_K:
        ql = a[0].reshape(t, -1, 2, 2, 32)                                # (t, nsb, half, ql part, 32)
        qh = a[1].reshape(t, -1, 2, 1, 32)
        lo = np.stack([ql[..., 0, :] & 15, ql[..., 1, :] & 15, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4], axis=3)
        hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, None, :, None]) & 3
        v = (lo | (hi << 4)).astype(np.int8) - 32                       # (t, nsb, half, 4, 32)
        sc = a[2].reshape(t, -1, 2, 4, 2, 1).astype(np.float32)           # group of 16 -> scale
        d = _h(a[3])[:, :, None, None, None, None]
        return (d * sc * v.reshape(t, -1, 2, 4, 2, 16).astype(np.float32)).reshape(t, k)
    raise UnsupportedError(f"cpu backend cannot dequantize {q.name}")
