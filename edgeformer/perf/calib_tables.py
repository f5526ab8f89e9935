"""Measured tables the roofline's closed form cannot capture, for the host calibration.

- **GEMM rate by (qtype, K, T)**: the cpu backend's prefill kernels process tokens in
  groups of 4 over L1-sized token blocks (quantized weights) or a register-tiled GEMM
  (float weights), so FLOP/s depends on the row length K and the token count T in ways
  a single efficiency misses. `measure_gemm_grid` times `Ops.linear` at a few (K, T)
  points per qtype (N fixed); `gemm_rate` interpolates log(rate) bilinearly in
  (log K, log T), clamped at the grid's edges.
- **Prefill attention rate by length**: causal attention is O(T^2) and its FLOP/s falls
  as K/V outgrow the caches, so it is measured at two lengths (`ATTN_LENGTHS`) and
  interpolated in log(length).
- **Fused decode**: the cpu backend runs a one-token step as two Numba calls per block
  (`backends/cpu/block.py`), not the op-by-op list the tracer prices. Two synthetic
  models' fused steps are timed and `fit_fused` solves
      measured = head/tail ops + other in-block ops (no per-op dispatch)
                 + n_layers * d_block + scale * GEMV price + attention bytes(c) / R
  for the per-block overhead `d_block` (a tiny model: all overhead), the fused GEMVs'
  time relative to the GEMV microbenchmarks' price and the fused attention's K/V read
  rate `R` (a ~100 MB model at two context lengths). The one-token attention's time
  follows the cached K/V bytes, not its FLOPs: measured on the "main" model's shape at
  16 query heads over 2..16 KV heads (one thread, contexts 32 -> 1536) it cost 35-45 ns
  per (position, KV head, K or V) row of 64 floats at every group size, i.e. 5.7-7.3
  GB/s, while its FLOP/s went from 3 (MHA) to 23 (8 queries per KV head) GFLOP/s. A
  FLOP rate fitted at one group size priced multi-head attention 4x too fast.

Every loop runs >= `min_time` s (the host clock ticks in ms steps). No validation model is
used: the decode models here have their own dimensions (`FUSED_MODELS`).
"""
from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.config import DecoderConfig
from edgeformer.formats.synthetic import random_matrix, synthetic_checkpoint
from edgeformer.kernels import OPS
from edgeformer.models.decoder import Decoder
from edgeformer.perf.clock import CLOCKS
from edgeformer.quant import QTensor

GEMM_N = 256                       # output rows: enough tasks; rate ~ independent of N
GEMM_KS = (512, 2048, 8192)        # row lengths spanning 576 .. 8192 (down projections)
GEMM_TS = (8, 32, 128, 512)        # tokens per call: batched decode rows .. prefill chunks
STREAM_T = 32                      # up to here a grid point streams its weights from DRAM
ATTN_LENGTHS = (256, 2048)         # causal prefill attention, T = S
FUSED_CONTEXTS = (32, 1536)
# "main": ~100 MB of Q8_0 weights (3x this host's 32 MiB L3, so a step streams them from
# DRAM as a real model's does); "tiny": ~no bytes, so its step is the per-block overhead.
# Own dimensions, not one of `validate.DIMS`.
FUSED_MODELS: dict[str, dict[str, Any]] = {
    "tiny": dict(arch="llama", vocab_size=256, dim=64, n_layers=16, n_heads=2, n_kv_heads=1,
                 head_dim=32, ffn_dim=128, max_seq_len=2048, tie_embeddings=False),
    "main": dict(arch="llama", vocab_size=8192, dim=1024, n_layers=8, n_heads=16, n_kv_heads=4,
                 head_dim=64, ffn_dim=2816, max_seq_len=2048, tie_embeddings=False),
}
FUSED_QTYPE = "Q8_0"
PREFILL_TOKENS = 512
PREFILL_LAYERS = 4       # the "main" model's blocks, fewer of them: a ~0.4 s prefill


def calib_weight(qtype: Any, n: int, k: int) -> QTensor:
    """A random (n, k) weight for the benchmarks: a few quantized rows tiled (values do
    not change a kernel's speed, and the reference quantizers are slow)."""
    return random_matrix(qtype, n, k, std=0.05)


def measure_gemm_grid(ops: Any, be: Any, qtypes: Iterable[str], bench: Callable[..., float],
                      min_time: float, ks: Sequence[int] = GEMM_KS, ts: Sequence[int] = GEMM_TS,
                      stream_bytes: int = 96 * 2**20) -> dict[str, list[dict[str, float]]]:
    """qtype -> [{k, t, s, flops}]: seconds per `ops.linear` of a (t, k) input with an
    (GEMM_N, k) weight, one loop of >= min_time s (after a warm-up call). For t <=
    `STREAM_T` the loop cycles through copies of the weight totalling >= `stream_bytes`,
    so they come from DRAM as a model's weights do (each is used once per forward); at
    larger t the compute hides that read."""
    out: dict[str, list[dict[str, float]]] = {}
    rng = np.random.default_rng(5)
    for q in qtypes:
        pts = []
        for k in ks:
            qt = calib_weight(q, GEMM_N, k)
            copies = min(512, max(1, -(-stream_bytes // qt.nbytes)))
            ws = [be.prepare_weight(QTensor(qt.data.copy(), qt.qtype, qt.shape), f"grid_{q}_{k}_{i}")
                  for i in range(copies)]
            for t in ts:
                x = rng.standard_normal((t, k)).astype(np.float32)
                c = OPS["linear"].cost(x, ws[0], None)
                cyc = ws if t <= STREAM_T else ws[:1]

                def run(cyc=cyc, x=x) -> None:
                    for w in cyc:
                        ops.linear(x, w, None)
                s = bench(run, min_time, 1) / len(cyc)
                pts.append({"k": float(k), "t": float(t), "s": s, "flops": c.flops})
            del ws
        out[q] = pts
    return out


def measure_attention_lengths(ops: Any, bench: Callable[..., float], min_time: float,
                              lengths: Sequence[int] = ATTN_LENGTHS) -> list[dict[str, float]]:
    """[{len, s, flops}]: causal self-attention of `len` tokens (SmolLM2-like heads:
    9 query, 3 kv, head_dim 64), best of 2 loops of >= min_time s."""
    rng = np.random.default_rng(6)
    out = []
    for n in lengths:
        q = rng.standard_normal((n, 9, 64)).astype(np.float32)
        k = rng.standard_normal((n, 3, 64)).astype(np.float32)
        v = rng.standard_normal((n, 3, 64)).astype(np.float32)
        pos = np.arange(n)
        kw = dict(scale=0.125, causal=True, window=None, softcap=None)
        c = OPS["attention"].cost(q, k, v, pos, pos, **kw)
        s = bench(lambda: ops.attention(q, k, v, pos, pos, **kw), min_time, 2)
        out.append({"len": float(n), "s": s, "flops": c.flops})
    return out


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation on sorted `xs`, clamped at the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = next(j for j in range(1, len(xs)) if xs[j] >= x)
    f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + f * (ys[i] - ys[i - 1])


def gemm_rate(points: list[dict[str, float]], k: float, t: float, overhead_s: float = 0.0) -> float:
    """FLOP/s of a (t, k) x (n, k)^T linear: log(rate) interpolated bilinearly in
    (log k, log t) over a measured grid (`measure_gemm_grid` points; rate = flops /
    (s - overhead_s)), clamped at the grid's edges."""
    ks = sorted({p["k"] for p in points})
    ts = sorted({p["t"] for p in points})
    table = {(p["k"], p["t"]): math.log(p["flops"] / max(p["s"] - overhead_s, 1e-12)) for p in points}
    lk, lt = math.log(k), math.log(max(t, 1.0))
    by_k = [_interp([math.log(x) for x in ts], [table[(kk, tt)] for tt in ts], lt) for kk in ks]
    return math.exp(_interp([math.log(x) for x in ks], by_k, lk))


def attention_rate(points: list[dict[str, float]], length: float, overhead_s: float = 0.0) -> float:
    """FLOP/s of causal prefill attention over `length` keys: log(rate) interpolated in
    log(length) between the measured lengths, clamped outside them."""
    pts = sorted(points, key=lambda p: p["len"])
    return math.exp(_interp([math.log(p["len"]) for p in pts],
                            [math.log(p["flops"] / max(p["s"] - overhead_s, 1e-12)) for p in pts],
                            math.log(max(length, 1.0))))


# ------------------------------------------------------------------ fused decode

def measure_fused_decode(be: Any, bench: Callable[..., float], min_time: float,
                         contexts: Sequence[int] = FUSED_CONTEXTS,
                         models: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """[{model, ctx, s}]: seconds per one-token `Decoder.forward` through the backend's
    fused path, for each of `models` (default `FUSED_MODELS`, in `FUSED_QTYPE`): the
    "tiny" one at the first context, the "main" one at each of `contexts`. The cache is
    truncated back after each step, so every timed step sees exactly `ctx` positions.
    Empty when the backend has no fused decode (for these models)."""
    if not be.fused_decode:
        return []
    out: list[dict[str, Any]] = []
    rng = np.random.default_rng(7)
    tok = np.array([1])
    for key, dims in (models or FUSED_MODELS).items():
        cfg = DecoderConfig(**dims)
        model = Decoder(synthetic_checkpoint(cfg, FUSED_QTYPE, calib_weight), be)
        if be.why_not_fused(model.stack, be.activations) is not None:
            return []
        for ctx in contexts if key == "main" else contexts[:1]:
            cache = model.make_cache(cfg.max_seq_len)
            for i in range(cfg.n_layers):
                k = rng.standard_normal((ctx, cfg.n_kv_heads, cfg.head_dim)).astype(np.float32) * 0.1
                cache.update_and_fetch(i, k, k.copy())

            def step(model=model, cache=cache, ctx=ctx) -> None:
                model.forward(tok, cache, last_only=True)
                cache.truncate(ctx)
            out.append({"model": key, "ctx": float(ctx), "s": bench(step, min_time, 2)})
        del model
    return out


@dataclass(frozen=True)
class FusedDecode:
    """The fused one-token step's terms: `block_s` seconds of overhead per block (two
    Numba calls and the cache append), `gemv_scale` the ratio of the fused path's GEMV
    time to the GEMV microbenchmarks' price, `attn_bytes_s` the fused attention's rate in
    bytes (of its operands: the cached K/V, mostly) per second."""

    block_s: float
    attn_bytes_s: float
    gemv_scale: float = 1.0


# price_parts(model key, ctx) -> (seconds of every op but in-block GEMVs and attention,
#                                 in-block GEMV seconds, in-block attention bytes, n_layers)
PriceParts = Callable[[str, int], tuple[float, float, float, int]]


def fit_fused(points: list[dict[str, Any]], price_parts: PriceParts) -> FusedDecode | None:
    """Fit the fused step's terms to `measure_fused_decode` points:
        tiny:        s = other + gemv + n_layers * block_s       (its weights are ~0 bytes)
        main at c_i: s_i = other_i + n_layers * block_s + gemv_scale * gemv_i + attn_bytes_i / R
    (block_s from the tiny model, then the 2x2 system at the two contexts). None without
    the three points or when the system is singular or gives a non-positive R or scale;
    block_s is kept >= 0."""
    tiny = [p for p in points if p["model"] == "tiny"]
    main = sorted((p for p in points if p["model"] == "main"), key=lambda p: p["ctx"])
    if not tiny or len(main) < 2:
        return None
    o0, g0, f0, n0 = price_parts("tiny", int(tiny[0]["ctx"]))
    block = max(0.0, (tiny[0]["s"] - o0 - g0) / n0)
    (o1, g1, f1, n), (o2, g2, f2, _) = (price_parts("main", int(p["ctx"])) for p in main[:2])
    y1, y2 = main[0]["s"] - o1 - n * block, main[1]["s"] - o2 - n * block
    det = g1 * f2 - g2 * f1
    if det == 0:
        return None
    scale, inv_rate = (y1 * f2 - y2 * f1) / det, (g1 * y2 - g2 * y1) / det
    if scale <= 0 or inv_rate <= 0:
        return None
    return FusedDecode(block, 1.0 / inv_rate, scale)


# ------------------------------------------------------------------ prefill glue

def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`), so the next large
    allocations fault their pages in as a fresh process's first prefill does."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def prefill_config() -> dict[str, Any]:
    """The synthetic model whose prefill `measure_prefill` times."""
    return {**FUSED_MODELS["main"], "n_layers": PREFILL_LAYERS}


def measure_prefill(be: Any, tokens: int = PREFILL_TOKENS, config: dict[str, Any] | None = None,
                    trials: int = 2, clock: str = "wall") -> dict[str, float]:
    """{tokens, s}: seconds of one `Decoder.forward` over `tokens` tokens into a fresh
    cache (last-token logits, as generation runs it) of `config` (default
    `prefill_config()`), after warm-ups at 4 and 96 tokens; freed memory is returned to the OS
    before each trial, so it pays the first-touch page faults a real first prefill
    does. Best of `trials` as `clock` ("wall" or "cpu") counts; each call is one prefill
    of >= ~0.2 s, so the host clock's ms steps do not matter."""
    now = CLOCKS[clock]
    cfg = DecoderConfig(**(config or prefill_config()))
    model = Decoder(synthetic_checkpoint(cfg, FUSED_QTYPE, calib_weight), be)
    toks = np.random.default_rng(8).integers(0, cfg.vocab_size, tokens)
    model.forward(toks[:4], model.make_cache(64), last_only=True)
    model.forward(toks[:96], model.make_cache(128), last_only=True)    # the long-prompt kernels too
    best = float("inf")
    for _ in range(trials):
        cache = model.make_cache(tokens + 1)
        _release_free_memory()
        t0 = now()
        model.forward(toks, cache, last_only=True)
        best = min(best, now() - t0)
        del cache
    return {"tokens": float(tokens), "s": best}
