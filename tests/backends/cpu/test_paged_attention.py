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
