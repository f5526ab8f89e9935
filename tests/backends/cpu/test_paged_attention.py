"""CPU attention reading a paged KV cache's pages in place (`PagedKV` views) gives the bits
of attention over the same keys gathered into float32 (`PagedKV.dense`), for every
storage dtype, awkward lengths, GQA, sliding windows whose first blocks were dropped,
chunks and single decode rows, and non-finite values (the exact kernel's rules)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.cpu import attention as cpu_attn
from edgeformer.backends.cpu import CpuBackend
from edgeformer.kernels import OPS
from edgeformer.kernels.kv_pages import PagedKV
from edgeformer.runtime.kv_cache import PagedKVCache

WINDOW = 40


def _filled(dtype: str, s: int, hkv: int, d: int, rng: np.random.Generator) -> tuple:
    """A two-layer cache (full, sliding) holding s random positions of one sequence,
    written in uneven chunks; its views of both layers after the last chunk."""
    cache = PagedKVCache(2, hkv, d, max_seq_len=512, num_pages=128, block_size=16, dtype=dtype,
                         sliding=[False, True], window=WINDOW, paged_views=True)
    seq = cache.new_sequence()
    n, views = 0, []
    while n < s:
        t = min(s - n, int(rng.integers(1, 40)))
        seq.check_room(t)
        views = [seq.update_and_fetch(layer, 3 * rng.standard_normal((t, hkv, d), dtype=np.float32),
                                      rng.standard_normal((t, hkv, d), dtype=np.float32)) for layer in (0, 1)]
        seq.commit(list(range(n, n + t)))    # drops the sliding layer's blocks out of the window
        n += t
    return seq, views, t


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "int8"])
@pytest.mark.parametrize("s", [1, 15, 16, 17, 100, 333])
def test_pages_in_place_match_gathered(dtype: str, s: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(s)
    hq, hkv, d = 6, 2, 24                          # GQA 3, a head dim that is no multiple of 16
    seq, views, last = _filled(dtype, s, hkv, d, rng)
    assert s < WINDOW + 16 or seq.first[1] > 0     # long sequences dropped sliding blocks
    for layer, (k, v, k_pos) in enumerate(views):
        assert isinstance(k, PagedKV) and isinstance(v, PagedKV) and k.shape == (k_pos.size, hkv, d)
        window = WINDOW if layer else None
        for t in sorted({1, last, s}):               # a decode row, the last chunk, the whole prompt
            q = rng.standard_normal((t, hq, d), dtype=np.float32)
            pos = np.arange(s - t, s)
            kw = dict(scale=0.2, causal=True, window=window, softcap=30.0 if t == last else None)
            want = cpu_attn.attention(q, k.dense(), v.dense(), pos, k_pos, **kw)
            with monkeypatch.context() as m:       # in place: no gather (finite values need none)
                m.setattr(PagedKV, "dense", None)
                got = cpu_attn.attention(q, k, v, pos, k_pos, **kw)
            assert np.array_equal(got, want), (dtype, s, layer, t)


def test_non_finite_pages_follow_the_exact_rules() -> None:
    """A NaN value the query sees, and an inf key: the gathered path's output (the exact
    kernel redoes such tasks), NaNs where it has them."""
    rng = np.random.default_rng(1)
    _, views, _ = _filled("f32", 70, 2, 32, rng)
    k, v, k_pos = views[0]
    v.pages[v.table[1], 3, 0, 5] = np.nan
    k.pages[k.table[2], 7, 1, 0] = np.inf
    q = rng.standard_normal((4, 4, 32), dtype=np.float32)
    pos = np.arange(66, 70)
    got = cpu_attn.attention(q, k, v, pos, k_pos, scale=0.2)
    want = cpu_attn.attention(q, k.dense(), v.dense(), pos, k_pos, scale=0.2)
    assert np.isnan(got).any() and np.array_equal(got, want, equal_nan=True)


def test_cpu_backend_declares_paged_attention() -> None:
    assert CpuBackend.paged_attention


def test_priced_by_the_bytes_stored() -> None:
    """The tracer prices a paged call: the FLOPs of the gathered one, keys and values read
    as stored (f16: half the float32 bytes)."""
    rng = np.random.default_rng(2)
    _, views, _ = _filled("f16", 40, 2, 32, rng)
    k, v, k_pos = views[0]
    q, pos = rng.standard_normal((1, 4, 32), dtype=np.float32), np.array([39])
    paged = OPS["attention"].cost(q, k, v, pos, k_pos, scale=0.2)
    dense = OPS["attention"].cost(q, k.dense(), v.dense(), pos, k_pos, scale=0.2)
    assert paged.flops == dense.flops > 0
    assert paged.bytes_read == dense.bytes_read - k.nbytes - v.nbytes and k.nbytes == 40 * 2 * 32 * 2


def _sequences(dtype: str, lens: list[int], seed: int) -> tuple[PagedKVCache, list]:
    """A two-layer cache (full, sliding) with one sequence per entry of `lens`, each holding
    that many random positions written in uneven chunks (the same for the same seed)."""
    rng = np.random.default_rng(seed)
    cache = PagedKVCache(2, 2, 24, max_seq_len=512, num_pages=512, block_size=16, dtype=dtype,
                         sliding=[False, True], window=WINDOW, paged_views=True)
    seqs = []
    for s in lens:
        seq, n = cache.new_sequence(), 0
        while n < s:
            t = min(s - n, int(rng.integers(1, 40)))
            seq.check_room(t)
            for layer in (0, 1):
                seq.update_and_fetch(layer, 3 * rng.standard_normal((t, 2, 24), dtype=np.float32),
                                     rng.standard_normal((t, 2, 24), dtype=np.float32))
            seq.commit(list(range(n, n + t)))
            n += t
        seqs.append(seq)
    return cache, seqs


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "int8"])
def test_batch_of_sequences_matches_each_alone(dtype: str) -> None:
    """One write and one attention call for several sequences (`BlockTable.join`, a
    `PagedKVBatch`): the pages hold what per-sequence writes store, and every query row gets
    the bits attention on its sequence alone gives it (decode rows and chunks, a sliding
    layer that dropped blocks, an empty-then-one-token sequence)."""
    held, new = [1, 17, 70, 333, 40, 0], [1, 3, 1, 5, 1, 1]
    rng = np.random.default_rng(7)
    rows = sum(new)
    k_new = [3 * rng.standard_normal((rows, 2, 24), dtype=np.float32) for _ in (0, 1)]
    v_new = [rng.standard_normal((rows, 2, 24), dtype=np.float32) for _ in (0, 1)]
    q = rng.standard_normal((rows, 6, 24), dtype=np.float32)
    bounds = np.concatenate([[0], np.cumsum(new)])
    (c1, one), (c2, many) = _sequences(dtype, held, 3), _sequences(dtype, held, 3)
    for s, t in zip(one + many, new + new):
        s.check_room(t)
    kvb = many[0].join(many, new)
    assert kvb is not None and many[0].join(many + [many[0]], new + [1]) is None   # a sequence twice
    for layer in (0, 1):
        kw = dict(scale=0.2, causal=True, window=WINDOW if layer else None, softcap=30.0 if layer else None)
        kb, vb = kvb.update_and_fetch(layer, k_new[layer], v_new[layer])
        got = cpu_attn.attention(q, kb, vb, kvb.positions, None, **kw)
        for b, s in enumerate(one):
            a, e = bounds[b], bounds[b + 1]
            k, v, k_pos = s.update_and_fetch(layer, k_new[layer][a:e], v_new[layer][a:e])
            pos = np.arange(held[b], held[b] + new[b])
            assert np.array_equal(kvb.positions[a:e], pos)
            assert np.array_equal(kb.positions(b), k_pos) and np.array_equal(kb.segment(b).dense(), k.dense())
            assert np.array_equal(vb.segment(b).dense(), v.dense())
            want = cpu_attn.attention(q[a:e], k, v, pos, k_pos, **kw)
            assert np.array_equal(got[a:e], want), (dtype, layer, b)
            ref = OPS["attention"].reference(q[a:e], k.dense(), v.dense(), pos, k_pos, **kw)
            np.testing.assert_allclose(got[a:e], ref, rtol=1e-4, atol=1e-5)
    assert [s._len for s in many] == [s._len for s in one]
    assert np.array_equal(c1.pool.k, c2.pool.k) and np.array_equal(c1.pool.v, c2.pool.v)


def test_no_join_without_paged_views_or_across_caches() -> None:
    _, a = _sequences("f16", [5], 1)
    _, b = _sequences("f16", [5], 1)
    assert a[0].join([a[0], b[0]], [1, 1]) is None
    dense = PagedKVCache(2, 2, 24, max_seq_len=64, num_pages=64, block_size=16, sliding=[False, True], window=WINDOW)
    s = dense.new_sequence()
    assert s.join([s], [1]) is None
