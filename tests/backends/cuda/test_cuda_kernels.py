"""Each cuda kernel against its numpy reference (`kernels/*.py`) on small awkward shapes,
within the op's own bound (`OpSpec.max_nmse`): T = 1 (GEMV, decode) and T > 1 in each row
tile (16/32/64), N = 1 and N not a multiple of any tile, K an odd multiple of the block
(32, or 256 for K-quants), weights both quantized from floats and uniform random blocks
(every code and sub-scale pattern). Attention: prefill flash and the split-K decode
kernel, the latter forced to several splits and reading `runtime.kv_cache` pages in place
in every storage dtype, sliding-window pages dropped included."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.conformance import nmse
from edgeformer.backends.cuda import CudaBackend
from edgeformer.kernels import OPS
from edgeformer.kernels.activation import activation_ref, glu_ref, softcap_ref
from edgeformer.kernels.attention import attention_ref
from edgeformer.kernels.embed import embed_ref
from edgeformer.kernels.inputs import plant, randn, random_qtensor
from edgeformer.kernels.linear import linear_ref
from edgeformer.kernels.norm import layer_norm_ref, rms_norm_ref
from edgeformer.kernels.rope import rope_ref
from edgeformer.quant.qtypes import QType

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

NATIVE = (QType.F32, QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q4_K, QType.Q6_K)


def _close(op: str, out: np.ndarray, ref: np.ndarray, dtype: str = "F32") -> None:
    bound = OPS[op].max_nmse.get(dtype, OPS[op].max_nmse["default"])
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    e = nmse(out, ref)
    assert e <= bound, f"{op} {dtype}: nmse {e:.3g} > {bound:.3g}"


@pytest.mark.parametrize("q", NATIVE, ids=lambda q: q.name)
def test_linear_every_row_path(backend: CudaBackend, q: QType) -> None:
    """T = 1 (GEMV) and T = 5, 20, 70 (GEMM row tiles of 16, 32, 64); N = 1, 45 and 67
    (ragged output tiles); K an odd number of blocks; a bias; 3-D x."""
    rng = np.random.default_rng(int(q))
    b = q.block_size
    ks = (33, 65) if b == 1 else (96, 160) if b == 32 else (256, 768)
    for method in ("quantize", "bytes") if b > 1 else ("quantize",):
        for t, n, k in ((1, 45, ks[0]), (5, 1, ks[1]), (20, 67, ks[0]), (70, 45, ks[1])):
            w = random_qtensor(q, (n, k), rng, 0.1, method=method)
            x = randn(rng, t, k)
            bias = randn(rng, n) if t == 5 else None
            h = backend.prepare_weight(w).handle
            _close("linear", backend.kernels["linear"](x, h, bias), linear_ref(x, w, bias), q.name)
    w = random_qtensor(q, (9, ks[0]), rng, 0.1)
    x3 = randn(rng, 2, 3, ks[0])
    _close("linear", backend.kernels["linear"](x3, backend.prepare_weight(w).handle), linear_ref(x3, w), q.name)


@pytest.mark.parametrize("q", NATIVE, ids=lambda q: q.name)
def test_embed_rows(backend: CudaBackend, q: QType) -> None:
    rng = np.random.default_rng(int(q) + 100)
    d = {1: 1100, 32: 96, 256: 512}[q.block_size]     # 1100: two column slices, the second ragged
    table = random_qtensor(q, (37, d), rng, method="bytes" if q.block_size > 1 else "quantize")
    ids = np.array([36, 0, 5, 5, 17])
    _close("embed", backend.kernels["embed"](backend.prepare_weight(table).handle, ids), embed_ref(table, ids), q.name)


def test_norms_any_width(backend: CudaBackend) -> None:
    """Widths of 1, odd, and past one 4096-wide slice (the kernels loop over slices)."""
    rng = np.random.default_rng(2)
    for shape in ((1, 1), (5, 33), (3, 1025), (2, 3, 4100)):
        x, w, b = randn(rng, *shape, scale=3.0), randn(rng, shape[-1]), randn(rng, shape[-1])
        _close("rms_norm", backend.kernels["rms_norm"](x, w, 1e-6), rms_norm_ref(x, w, 1e-6))
        _close("rms_norm", backend.kernels["rms_norm"](x, None, 1e-5), rms_norm_ref(x, None, 1e-5))
        _close("layer_norm", backend.kernels["layer_norm"](x + 5, w, b, 1e-5), layer_norm_ref(x + 5, w, b, 1e-5))
        _close("layer_norm", backend.kernels["layer_norm"](x, None, None, 1e-5), layer_norm_ref(x, None, None, 1e-5))


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "interleaved"])
def test_rope_partial_and_scaled(backend: CudaBackend, neox: bool) -> None:
    rng = np.random.default_rng(3)
    for t, h, d, r, ms in ((1, 3, 64, 64, 1.0), (5, 2, 80, 40, 1.0), (7, 4, 128, 96, 1.23), (2, 1, 2, 2, 1.0)):
        x = randn(rng, t, h, d)
        pos = np.sort(rng.integers(0, 9000, t))
        inv = (1.0 / 10000.0 ** (np.arange(0, r, 2) / r)).astype(np.float32)
        out = backend.kernels["rope"](x, pos, inv, neox=neox, mscale=ms)
        _close("rope", out, rope_ref(x, pos, inv, neox=neox, mscale=ms))
        assert np.array_equal(out[..., r:], x[..., r:])       # dims past R pass through untouched


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh", "relu"])
def test_activations(backend: CudaBackend, kind: str) -> None:
    rng = np.random.default_rng(4)
    for shape in ((1,), (3, 333), (1025,)):                  # 1025: a second, ragged block
        x, u = randn(rng, *shape, scale=4.0), randn(rng, *shape)
        _close("activation", backend.kernels["activation"](x, kind), activation_ref(x, kind))
        if kind != "relu":
            _close("glu", backend.kernels["glu"](x, u, kind), glu_ref(x, u, kind))
    x = randn(rng, 45, 65, scale=100.0)
    _close("softcap", backend.kernels["softcap"](x, 30.0), softcap_ref(x, 30.0))
    small = randn(rng, 1000, scale=1e-3)                     # tanh near 0, where exp-based tanh cancels
    _close("softcap", backend.kernels["softcap"](small, 50.0), softcap_ref(small, 50.0))


def _attn_case(rng, t, s, hq, hkv, d, dv=None):
    return randn(rng, t, hq, d), randn(rng, s, hkv, d), randn(rng, s, hkv, dv or d)


@pytest.mark.parametrize("attrs", [dict(), dict(window=7), dict(softcap=20.0), dict(causal=False)],
                         ids=["causal", "window7", "softcap", "noncausal"])
def test_flash_prefill(backend: CudaBackend, attrs: dict) -> None:
    """T = 5 (one 16-row tile), 33 and 70 (64-row tiles, a ragged one); GQA 1, 3, 4;
    explicit offset positions; Dv != D."""
    rng = np.random.default_rng(5)
    for t, s, hq, hkv, d, dv, offset in ((5, 5, 3, 1, 32, None, 0), (33, 45, 6, 2, 64, 48, 100),
                                         (70, 70, 4, 4, 16, None, 7)):
        q, k, v = _attn_case(rng, t, s, hq, hkv, d, dv)
        kp = np.arange(offset, offset + s)
        qp = kp[s - t:]
        kw = dict(scale=d ** -0.5, **attrs)
        _close("attention", backend.kernels["attention"](q, k, v, qp, kp, **kw), attention_ref(q, k, v, qp, kp, **kw))


def _decode(backend, q, k, v, pos0, qpos, splits, **kw):
    from edgeformer.backends.cuda.attention import paged_decode_t
    dev = backend.device
    table = torch.zeros(1, dtype=torch.int64, device=dev)
    kt, vt = (torch.from_numpy(a).to(dev).unsqueeze(0) for a in (k, v))
    o = paged_decode_t(torch.from_numpy(q[0]).to(dev), kt, vt, table, pos0, k.shape[0], qpos, splits=splits, **kw)
    return o.cpu().numpy()[None]


@pytest.mark.parametrize("attrs", [dict(), dict(window=100), dict(softcap=30.0)], ids=["causal", "window", "softcap"])
def test_split_k_decode_any_split_count(backend: CudaBackend, attrs: dict) -> None:
    """One query over 300 keys (positions from 40) in 1, 3 and 10 key splits, GQA groups
    of 1, 4 and 7 (padded to 16 rows): each merge gives the reference."""
    rng = np.random.default_rng(6)
    for hq, hkv in ((2, 2), (8, 2), (7, 1)):
        q, k, v = _attn_case(rng, 1, 300, hq, hkv, 64)
        kp = np.arange(40, 340)
        ref = attention_ref(q, k, v, kp[-1:], kp, scale=0.125, **attrs)
        for splits in (1, 3, 10):
            _close("attention", _decode(backend, q, k, v, 40, 339, splits, scale=0.125, **attrs), ref)


@pytest.mark.parametrize("attrs", [dict(), dict(window=37), dict(softcap=30.0)], ids=["causal", "window", "softcap"])
def test_split_k_decode_position_from_device_memory(backend: CudaBackend, attrs: dict) -> None:
    """The launch a CUDA graph replays: one launch sized for a 300-slot store (10
    splits), the query's position and the key count read from `meta` on the device. At
    positions 0, 1, 31, 32, 150 and 299 (keys 0..pos visible, the slots past them holding
    garbage) it gives the reference over the keys written so far."""
    from edgeformer.backends.cuda.attention import paged_decode_t
    rng = np.random.default_rng(9)
    dev = backend.device
    for hq, hkv in ((8, 2), (3, 3)):
        q, k, v = _attn_case(rng, 1, 300, hq, hkv, 32)
        kt, vt = (torch.from_numpy(a).to(dev).unsqueeze(0) for a in (k, v))
        table = torch.zeros(1, dtype=torch.int64, device=dev)
        meta = torch.zeros(2, dtype=torch.int64, device=dev)
        for pos in (0, 1, 31, 32, 150, 299):
            meta.copy_(torch.tensor([pos, pos + 1]))
            out = paged_decode_t(torch.from_numpy(q[0]).to(dev), kt, vt, table, 0, 300, -1, scale=0.2,
                                 splits=10, meta=meta, **attrs).cpu().numpy()[None]
            kp = np.arange(pos + 1)
            ref = attention_ref(q, k[:pos + 1], v[:pos + 1], kp[-1:], kp, scale=0.2, **attrs)
            _close("attention", out, ref)


def test_split_k_decode_nan_stays_where_the_reference_has_it(backend: CudaBackend) -> None:
    """A NaN in the value of a key the window hides never reaches the output; one in a
    visible key's value makes only that output element NaN, across split merges; a NaN
    score (in k) makes its query heads' rows NaN, and so does a NaN in the query (no
    key counts then: every split's sum is 0, and the merge must still give NaN)."""
    rng = np.random.default_rng(7)
    q, k, v = _attn_case(rng, 1, 200, 4, 2, 32)
    kp = np.arange(200)
    hidden = plant(v, (10, 1, 3))
    kw = dict(scale=0.2, window=50)
    for splits in (1, 4):
        out = _decode(backend, q, k, hidden, 0, 199, splits, **kw)
        _close("attention", out, attention_ref(q, k, hidden, kp[-1:], kp, **kw))
        seen = _decode(backend, q, k, plant(v, (190, 1, 3)), 0, 199, splits, **kw)
        ref = attention_ref(q, k, plant(v, (190, 1, 3)), kp[-1:], kp, **kw)
        assert np.array_equal(np.isfinite(seen), np.isfinite(ref)) and (~np.isfinite(ref)).sum() == 2
        bad_k = _decode(backend, q, plant(k, (170, 0, 0)), v, 0, 199, splits, **kw)
        ref_k = attention_ref(q, plant(k, (170, 0, 0)), v, kp[-1:], kp, **kw)
        assert np.array_equal(np.isfinite(bad_k), np.isfinite(ref_k)) and (~np.isfinite(ref_k)).sum() == 2 * 32
        bad_q = _decode(backend, plant(q, (0, 3, 5)), k, v, 0, 199, splits, **kw)
        ref_q = attention_ref(plant(q, (0, 3, 5)), k, v, kp[-1:], kp, **kw)
        assert np.array_equal(np.isfinite(bad_q), np.isfinite(ref_q)) and (~np.isfinite(ref_q)).sum() == 32


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "int8"])
def test_paged_decode_reads_pages_in_place(backend: CudaBackend, dtype: str) -> None:
    """Keys and values written through `runtime.kv_cache` (pages allocated out of order
    after a release, 37 tokens: a partly filled last page), read in place through the
    block table; the reference is attention over what `update_and_fetch` gathers. A
    sliding layer whose first blocks left the window reads from its first live page."""
    from edgeformer.backends.cuda.attention import paged_decode_t, upload_pages
    from edgeformer.runtime.kv_cache import PagedKVCache
    rng = np.random.default_rng(8)
    hkv, hd, bs = 2, 32, 16
    cache = PagedKVCache(2, hkv, hd, max_seq_len=256, num_pages=64, block_size=bs, dtype=dtype,
                         sliding=[False, True], window=20, prefix_sharing=False)
    cache.new_sequence().check_room(40)                     # taken pages: this sequence's are not 0, 1, ...
    seq = cache.new_sequence()
    for step in (30, 6, 1):                                 # two chunks, then the decode step at 36
        seq.check_room(step)
        fetched = [seq.update_and_fetch(layer, randn(rng, step, hkv, hd), randn(rng, step, hkv, hd))
                   for layer in (0, 1)]
        if step > 1:
            seq.commit(list(range(len(seq.tokens), len(seq.tokens) + step)))
    full, sliding = fetched
    assert seq.first[1] > 0 and sliding[2][0] > 0           # the sliding layer dropped its first block
    pool = cache.pool
    pages = upload_pages(pool.k, pool.v, dtype, backend.device, getattr(pool, "k_scale", None),
                         getattr(pool, "v_scale", None))
    q = randn(rng, 1, 6, hd)
    for layer, (k_all, v_all, k_pos) in ((0, full), (1, sliding)):
        g, j = cache.layer_group[layer]
        first = seq.first[g]
        ids = [int(seq.tables[g][b].pages[j]) for b in range(first, len(seq.tables[g]))]
        assert ids != sorted(ids) or ids[0] > 0
        table = torch.tensor(ids, dtype=torch.int64, device=backend.device)
        window = 20 if layer == 1 else None
        out = paged_decode_t(torch.from_numpy(q[0]).to(backend.device), table=table, pos0=first * bs,
                             n_keys=k_all.shape[0], q_pos=36, scale=hd ** -0.5, window=window, splits=2, **pages)
        ref = attention_ref(q, k_all, v_all, np.array([36]), k_pos, scale=hd ** -0.5, window=window)
        _close("attention", out.cpu().numpy()[None], ref)


def test_greedy_is_argmax_lowest_id_on_ties(backend: CudaBackend) -> None:
    from edgeformer.backends.cuda.sampling import greedy
    rng = np.random.default_rng(9)
    for v in (1, 7, 4096, 10000):
        x = randn(rng, v)
        assert greedy(torch.from_numpy(x).to(backend.device)) == int(np.argmax(x))
    x = randn(rng, 10000)
    for ids in ((9000, 5000), (4095, 4096), (100, 7000, 5000)):   # ties across blocks and at a block edge
        y = x.copy()
        y[list(ids)] = 50.0
        assert greedy(torch.from_numpy(y).to(backend.device)) == min(ids)
    y = np.full(300, -np.inf, np.float32)
    y[[250, 299]] = 0.0
    assert greedy(torch.from_numpy(y).to(backend.device)) == 250


@pytest.mark.parametrize("params", [dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
                                    dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
                                    dict(temperature=0.5, top_k=5, top_p=1.0, min_p=0.0),
                                    dict(temperature=2.0, top_k=0, top_p=1.0, min_p=0.2)],
                         ids=["llamacpp", "top_p", "top_k", "min_p"])
def test_sampling_matches_the_host_sampler(backend: CudaBackend, params: dict) -> None:
    """The device's candidate set and probabilities are `runtime.sampler.candidates`'; a
    draw with the same uniform number is the host sampler's token; many draws stay in
    the candidate set."""
    from edgeformer.backends.cuda.sampling import candidates, sample
    from edgeformer.runtime.sampler import SamplingParams
    from edgeformer.runtime.sampler import candidates as host_candidates
    from edgeformer.runtime.sampler import make_sampler
    rng = np.random.default_rng(10)
    logits = randn(rng, 2000, scale=3.0)
    logits[[5, 77]] = -np.inf
    dev = torch.from_numpy(logits).to(backend.device)
    want_ids, want_p = host_candidates(logits, **params)
    ids, p = candidates(dev, **params)
    assert np.array_equal(ids.cpu().numpy(), want_ids)
    np.testing.assert_allclose(p.cpu().numpy(), want_p, rtol=1e-9)
    host = make_sampler(SamplingParams(**params))
    for seed in range(20):
        u = np.random.default_rng(seed).random()
        assert sample(dev, u, **params) == host(logits, np.random.default_rng(seed))
    allowed = set(want_ids.tolist())
    draws = {sample(dev, float(u), **params) for u in rng.random(200)}
    assert draws <= allowed and len(draws) > 1
