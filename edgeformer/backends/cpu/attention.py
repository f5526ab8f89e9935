"""attention: GQA scaled dot-product attention with causal-by-position masking, sliding
window and logit soft-capping; same semantics as `kernels.attention.attention_ref`.

Two kernels:
- `_attn_rows` (decode, short chunks, and any input holding NaN/Inf): one task per
  (query token, kv head); the G query heads sharing a kv head go together, key-major, so
  each key/value row is read once per task. Exact softmax (max, exp, sum) over a per-task
  score scratch. Decode (T=1) parallelises over kv heads.
- `_flash` (prefill, encoders: many queries): FlashAttention-style blocking. One task per
  (kv head, block of BQ queries, halved while that leaves under two tasks per thread);
  the block's BQ*G query rows meet the keys BK at a time: a
  register-tiled Q.K^T micro-kernel (`_qk_tile`: ROWS rows x 32 keys of <16 x float>
  accumulators) fills a (rows, BK) score tile, masking/soft-cap/online softmax run on it
  (running max and sum per row, `fast_exp`), and `_pv_tile` adds P.V into the output rows.
  K is packed once per call as (Hkv, D, S) so a key block is a contiguous row per dim, V
  as (Hkv, S, Dv padded to 16). Key blocks that no query of the block can see (causal,
  window, with ascending key positions) are skipped.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu.common import JIT, PARALLEL_MIN, jit_pair
from edgeformer.backends.cpu.simd import _V16F, _data, _fma, _fsplat, _vload, fast_exp


def _attn_rows(q, k, v, qp, kp, scale, causal, window, softcap, out):
    t_, hq, d = q.shape
    s_, hkv, dv = v.shape
    g_ = hq // hkv
    ksorted = True                               # cache positions ascend: visible keys are one range
    for j in range(1, s_):
        if kp[j] < kp[j - 1]:
            ksorted = False
    for task in prange(t_ * hkv):
        t = task // hkv
        h = task - t * hkv
        # keys outside [j0, j1) are masked for sure (causal prefill: half of them)
        j0, j1 = 0, s_
        if ksorted:
            if causal:
                j1 = np.searchsorted(kp, qp[t], side="right")
            if window < (1 << 61):
                j0 = np.searchsorted(kp, qp[t] - window, side="right")
        sc = np.empty((g_, s_), np.float32)      # scores, then probabilities
        m = np.full(g_, -np.inf, np.float32)
        vis = np.zeros(s_, np.bool_)
        for g in range(g_):
            sc[g, :j0] = -np.inf
            sc[g, j1:] = -np.inf
        for j in range(j0, j1):                  # key-major: one key row serves all G heads
            diff = qp[t] - kp[j]
            vis[j] = (not causal or diff >= 0) and diff < window
            if not vis[j]:
                for g in range(g_):
                    sc[g, j] = -np.inf
                continue
            kr = k[j, h]
            for g in range(g_):
                qr = q[t, h * g_ + g]
                acc = np.float32(0.0)
                for i in range(d):
                    acc += qr[i] * kr[i]
                x = acc * scale
                if softcap > 0:
                    x = np.tanh(x / softcap) * softcap
                sc[g, j] = x
                m[g] = max(m[g], x)
        den = np.zeros(g_, np.float32)
        for g in range(g_):                      # contiguous over keys: vectorised exp
            mg = m[g] if m[g] != -np.inf else np.float32(0.0)
            row = sc[g]
            for j in range(j0, j1):
                e = fast_exp(row[j] - mg)
                row[j] = e
                den[g] += e
        o = out[t, h * g_:(h + 1) * g_]          # (G, Dv)
        o[:] = 0.0
        for j in range(j0, j1):
            if not vis[j]:                       # never touch masked values (NaN-safe)
                continue
            vr = v[j, h]
            for g in range(g_):
                p = sc[g, j]
                og = o[g]
                for i in range(dv):
                    og[i] += p * vr[i]
        for g in range(g_):
            if den[g] > 0:                       # else no visible key: zeros, as the reference
                inv = np.float32(1.0) / den[g]
                og = o[g]
                for i in range(dv):
                    og[i] *= inv


_attn_ser, _attn_par = jit_pair(_attn_rows)


# ---------------------------------------------------------------- blocked (flash) prefill

BQ = 64      # queries per task (x G heads = score-tile rows); 64 rows x BK keys = 16 KiB of L1
BQ_MIN = 16  # smaller blocks when there are too few tasks to feed every thread
BK = 64      # keys per block (a multiple of 32: the micro-kernels' key tile)
ROWS = 4     # rows per micro-kernel call: ROWS x 2 <16 x float> accumulators (8 FMA chains
#              cover the FMA latency x throughput of 2-pipe x86 cores)


def _tile_codegen(nc: int, qk: bool):
    """IR of a ROWS x (16 nc) tile: for rr < ROWS, lanes c < 16 nc,
    acc[rr, c] = sum_{i<n} a[aoff + rr*lda + i] * b[boff + i*ldb + c], then
    qk: c[coff + rr*ldc + c] = acc (store); else c[...] += acc."""
    def codegen(context, builder, sig, args):
        a_ary, aoff, lda, b_ary, boff, ldb, c_ary, coff, ldc, n = args
        ap, bp, cp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 3, 6))
        zero = ir.Constant(_V16F, None)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nc)] for _ in range(ROWS)]
        with cgutils.for_range(builder, n) as loop:
            i = loop.index
            bb = builder.add(boff, builder.mul(i, ldb))
            bv = [_vload(builder, bp, builder.add(bb, ir.Constant(bb.type, 16 * c)), 16) for c in range(nc)]
            for rr in range(ROWS):
                ai = builder.add(builder.add(aoff, builder.mul(ir.Constant(lda.type, rr), lda)), i)
                av = _fsplat(builder, builder.load(builder.gep(ap, [ai])), 16)
                for c in range(nc):
                    builder.store(_fma(builder, av, bv[c], builder.load(acc[rr][c])), acc[rr][c])
        for rr in range(ROWS):
            cb = builder.add(coff, builder.mul(ir.Constant(ldc.type, rr), ldc))
            for c in range(nc):
                p = builder.bitcast(builder.gep(cp, [builder.add(cb, ir.Constant(cb.type, 16 * c))]),
                                    _V16F.as_pointer())
                x = builder.load(acc[rr][c])
                if not qk:
                    x = builder.fadd(builder.load(p, align=4), x)
                builder.store(x, p, align=4)
        return context.get_dummy_value()
    return codegen


def _tile_intrinsic(nc: int, qk: bool):
    @intrinsic
    def tile(typingctx, a, aoff, lda, b, boff, ldb, c, coff, ldc, n):
        ip = types.intp
        return types.void(a, ip, ip, b, ip, ip, c, ip, ip, ip), _tile_codegen(nc, qk)
    return tile


_qk_tile = _tile_intrinsic(2, True)     # scores: ROWS queries x 32 keys, reduce over D
_pv_tile = _tile_intrinsic(2, False)    # out += P.V: ROWS rows x 32 of Dv, reduce over keys
_pv_tile16 = _tile_intrinsic(1, False)  # the last 16 columns when Dv % 32 == 16


def _pack_kv(k, v, sp, dvp, kt, vp):
    """kt[h, i, j] = k[j, h, i]; vp[h, j, :dv] = v[j, h]; padding stays zero."""
    s_, hkv, d = k.shape
    dv = v.shape[2]
    for h in prange(hkv):
        for j in range(s_):
            for i in range(d):
                kt[h, i, j] = k[j, h, i]
            for i in range(dv):
                vp[h, j, i] = v[j, h, i]


@njit(inline="always", **JIT)
def _softmax_step(row, orow, m, den, r, bk, full, tq, kpb, causal, window, softcap):
    """Online softmax of score row r over one key block: soft-cap, mask (unless `full`:
    every key visible; keys past bk are padding), raise the running max m[r] (rescaling
    the output row and den[r]), turn row into exp(score - max) and add it to den[r]."""
    if softcap > 0:
        for j in range(bk):
            row[j] = np.tanh(row[j] / softcap) * softcap
    if not full:
        for j in range(BK):
            if j >= bk:
                row[j] = -np.inf
            else:
                diff = tq - kpb[j]
                if (causal and diff < 0) or diff >= window:
                    row[j] = -np.inf
    mx = m[r]
    for j in range(BK):
        mx = max(mx, row[j])
    if mx == -np.inf:                        # nothing visible yet: p = 0
        for j in range(BK):
            row[j] = 0.0
        return
    alpha = fast_exp(m[r] - mx)              # exp(-inf) = 0 on the first visible block
    m[r] = mx
    ps = np.float32(0.0)
    for j in range(BK):
        e = fast_exp(row[j] - mx)
        row[j] = e
        ps += e
    den[r] = den[r] * alpha + ps
    if alpha != 1.0:
        for i in range(orow.shape[0]):
            orow[i] *= alpha


def _flash(q, kt, vp, qp, kp, s_, bq, scale, causal, window, softcap, out):
    t_, hq, d = q.shape
    hkv, sp, dvp = vp.shape
    dv = out.shape[2]
    g_ = hq // hkv
    ksorted = True
    for j in range(1, s_):
        if kp[j] < kp[j - 1]:
            ksorted = False
    nqb = (t_ + bq - 1) // bq
    for task in prange(hkv * nqb):
        h = task // nqb
        b = task - h * nqb
        # zigzag 0, n-1, 1, n-2, ...: causal blocks grow with b, and prange hands each thread
        # a contiguous run of tasks; pairing big with small evens the threads' work out
        t0 = (b // 2 if b % 2 == 0 else nqb - 1 - b // 2) * bq
        t1 = min(t_, t0 + bq)
        r_ = (t1 - t0) * g_
        rp = (r_ + ROWS - 1) // ROWS * ROWS
        qs = np.zeros((rp, d), np.float32)               # row r = query t0 + r // G, head h*G + r % G
        qlo, qhi = qp[t0], qp[t0]
        for tt in range(t1 - t0):
            qlo = min(qlo, qp[t0 + tt])
            qhi = max(qhi, qp[t0 + tt])
            for g in range(g_):
                for i in range(d):
                    qs[tt * g_ + g, i] = q[t0 + tt, h * g_ + g, i] * scale
        j0, j1 = 0, s_                                   # keys outside are masked for every row
        if ksorted:
            if causal:
                j1 = np.searchsorted(kp[:s_], qhi, side="right")
            if window < (1 << 61):
                j0 = np.searchsorted(kp[:s_], qlo - window, side="right")
        o = np.zeros((rp, dvp), np.float32)
        m = np.full(rp, -np.inf, np.float32)
        den = np.zeros(rp, np.float32)
        sc = np.zeros((rp, BK), np.float32)
        kbase = h * d * sp
        vbase = h * sp * dvp
        for jb in range(j0, j1, BK):
            bk = min(BK, j1 - jb)
            for r in range(0, rp, ROWS):
                for c in range(0, BK, 32):
                    _qk_tile(qs, r * d, d, kt, kbase + jb + c, sp, sc, r * BK + c, BK, d)
            # every row sees every key of the block: no per-score mask
            full = ksorted and bk == BK and (not causal or kp[jb + BK - 1] <= qlo) \
                and qhi - kp[jb] < window
            for r in range(r_):
                _softmax_step(sc[r], o[r], m, den, r, bk, full, qp[t0 + r // g_], kp[jb:jb + bk],
                              causal, window, softcap)
            for r in range(0, rp, ROWS):
                vb = vbase + jb * dvp
                c = 0
                while c + 32 <= dvp:
                    _pv_tile(sc, r * BK, BK, vp, vb + c, dvp, o, r * dvp + c, dvp, BK)
                    c += 32
                if c < dvp:
                    _pv_tile16(sc, r * BK, BK, vp, vb + c, dvp, o, r * dvp + c, dvp, BK)
        for r in range(r_):
            tt = r // g_
            hh = h * g_ + r - tt * g_
            inv = np.float32(1.0) / den[r] if den[r] > 0 else np.float32(0.0)   # no key: zeros
            for i in range(dv):
                out[t0 + tt, hh, i] = o[r, i] * inv


_pack_ser, _pack_par = jit_pair(_pack_kv)
_flash_ser, _flash_par = jit_pair(_flash)
# fewer queries or (query, key) pairs: packing K/V per call costs more than blocking saves
# (measured, 1 thread: causal GQA T=S=16 exact 25 us vs blocked 41; T=S=32 74 vs 70;
# bidirectional T=S=18, 12 heads x 32 (MiniLM sentence) 74 vs 52)
FLASH_MIN_T, FLASH_MIN_PAIRS = 16, 300


def _flash_attention(q, k, v, qp, kp, scale, causal, window, softcap, out, parallel):
    s, hkv, d = k.shape
    dv = v.shape[2]
    sp = s + BK                                          # a key block may start at any j < S
    dvp = (dv + 15) // 16 * 16
    kt = np.zeros((hkv, d, sp), np.float32)
    vp = np.zeros((hkv, sp, dvp), np.float32)
    (_pack_par if parallel else _pack_ser)(k, v, sp, dvp, kt, vp)
    bq = BQ
    while parallel and bq > BQ_MIN and hkv * -(-q.shape[0] // bq) < 2 * get_num_threads():
        bq //= 2                                         # e.g. a 64-token chunk of an MQA model
    (_flash_par if parallel else _flash_ser)(q, kt, vp, qp, kp, s, bq, scale, causal, window, softcap, out)


_NO_WINDOW = 1 << 62   # "no window": every diff is below it


def _i64(a: np.ndarray) -> np.ndarray:
    return a if isinstance(a, np.ndarray) and a.dtype == np.int64 and a.flags.c_contiguous \
        else np.ascontiguousarray(a, dtype=np.int64)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
              q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
              scale: float, causal: bool = True, window: int | None = None,
              softcap: float | None = None) -> np.ndarray:
    """q: (T, Hq, D); k: (S, Hkv, D); v: (S, Hkv, Dv) -> (T, Hq, Dv) float32.
    Contract of `kernels.attention.attention_ref` (positions default to the last T of S)."""
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    if k.shape != (s, hkv, d) or hq % hkv or (q_pos is not None and np.shape(q_pos) != (t,)) \
            or (k_pos is not None and np.shape(k_pos) != (s,)):
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} (positions "
                         f"{np.shape(q_pos)}, {np.shape(k_pos)}) are inconsistent")
    if q_pos is None:
        q_pos = np.arange(s - t, s)
    if k_pos is None:
        k_pos = np.arange(s)
    out = np.empty((t, hq, dv), np.float32)
    q, k, v = _f32(q), _f32(k), _f32(v)
    qp, kp = _i64(q_pos), _i64(k_pos)
    win, cap = _NO_WINDOW if window is None else int(window), np.float32(softcap or 0.0)
    # the blocked kernel lets masked keys' zero weights meet their values and takes the row
    # max without NaN rules: inputs with NaN/Inf (a sum catches them; an overflowing sum
    # merely picks the exact kernel) go to `_attn_rows`, which keeps the contract there
    if t >= FLASH_MIN_T and t * s >= FLASH_MIN_PAIRS and np.isfinite(q.sum() + k.sum() + v.sum()):
        _flash_attention(q, k, v, qp, kp, np.float32(scale), bool(causal), win, cap, out,
                         t * hq * s * d >= PARALLEL_MIN)
        return out
    # decode-sized work (one token, a short cache) runs serially: waking the thread pool
    # (~10-30 us with OMP_WAIT_POLICY=PASSIVE) costs more than the few heads' dot products
    fn = _attn_par if t * hkv > 1 and t * hq * s * d >= PARALLEL_MIN else _attn_ser
    fn(q, k, v, qp, kp, np.float32(scale), bool(causal), win, cap, out)
    return out

