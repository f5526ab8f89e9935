"""PagedKVCache against the contiguous KVCache on tiny random HF decoders (full attention,
all-sliding, alternating sliding): chunked prefill + decode, prefix sharing, fork with
copy-on-write, rollback, sliding-window eviction, storage precisions, the memory budget."""
from __future__ import annotations


import numpy as np
import pytest

from support.families import BY_NAME, checkpoint_from_hf_dir, hf_model, prompt, rel_err, save_hf  # noqa: E402

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.errors import InputError  # noqa: E402
from edgeformer.models import Decoder  # noqa: E402
from edgeformer.quant.metrics import kl_divergence  # noqa: E402
from edgeformer.runtime.kv_cache import CapacityError, PagedKVCache  # noqa: E402

pytest.importorskip("torch")
BS = 4        # small blocks: a 33-token prompt spans 9 of them, the window (11) 3-4


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("paged")
    out = {}
    for name in ("smollm", "mistral", "gemma2"):   # full / every layer sliding / alternating
        d = save_hf(hf_model(BY_NAME[name]), root / name)
        out[name] = Decoder(checkpoint_from_hf_dir(d), get_backend("numpy"))
    return out


def paged(dec, dtype="f32", num_pages=400, **kw):
    return PagedKVCache.for_model(dec, num_pages=num_pages, block_size=BS, dtype=dtype, max_chunk=8, **kw)


def run(dec, view, toks, chunk=8):
    """Feed toks in chunks (committing each); all positions' logits."""
    outs = []
    for a in range(0, len(toks), chunk):
        outs.append(dec.forward(np.asarray(toks[a:a + chunk]), view))
        view.commit(toks[a:a + chunk])
    return np.concatenate(outs)


def contiguous(dec, toks):
    return dec.forward(np.asarray(toks), dec.make_cache(128))


@pytest.mark.parametrize("name", ["smollm", "mistral", "gemma2"])
def test_chunked_prefill_and_decode_match_the_contiguous_cache(decoders, name):
    dec = decoders[name]
    toks = list(prompt(33)) + list(prompt(9, seed=5))
    cache = paged(dec)
    view = cache.new_sequence()
    got = np.concatenate([run(dec, view, toks[:33]), run(dec, view, toks[33:], chunk=1)])
    assert rel_err(got, contiguous(dec, toks)) <= 1e-5
    n_layers, n_blocks = dec.config.n_layers, -(-len(toks) // BS)
    if name == "smollm":
        assert view.held_pages == n_layers * n_blocks
    else:   # sliding layers hold only the blocks their window can still see
        n_sliding = sum(L.sliding for L in dec.layers)
        live = -(-(dec.config.sliding_window + BS) // BS)
        assert view.held_pages <= (n_layers - n_sliding) * n_blocks + n_sliding * live
        assert view.held_pages < n_layers * n_blocks
    view.release()
    assert cache.pool.used_pages == 0


@pytest.mark.parametrize("name", ["smollm", "gemma2"])
def test_prefix_sharing_skips_the_cached_prompt_and_matches(decoders, name):
    dec = decoders[name]
    system, user = list(prompt(30, seed=7)), list(prompt(6, seed=8))
    cache = paged(dec)
    a = cache.new_sequence(system)
    run(dec, a, system)
    b = cache.new_sequence(system + user)
    hit = b.offset
    assert hit == b.cached_tokens == (30 // BS) * BS                 # 7 whole blocks reused
    held = cache.pool.used_pages
    got = run(dec, b, (system + user)[hit:])
    want = contiguous(dec, system + user)[hit:]
    assert rel_err(got, want) <= 1e-5
    # b shares a's full blocks: it allocated pages only for the rest of its tokens
    assert cache.pool.used_pages - held <= dec.config.n_layers * 2
    a.release()
    b.release()
    assert cache.pool.used_pages == 0
    # released blocks stay cached: a third sequence gets b's prefix (8 whole blocks)
    assert cache.new_sequence(system + user).cached_tokens == 32


def test_fork_copies_on_write_after_divergence(decoders):
    dec = decoders["smollm"]
    base = list(prompt(30, seed=3))                 # ends mid-block: the last block is shared
    cache = paged(dec)
    a = cache.new_sequence()
    run(dec, a, base)
    b = a.fork()
    before = cache.pool.used_pages
    assert a.block_table() == b.block_table()
    ta, tb = [5, 6, 7, 8, 9], [100, 101, 102, 103, 104]
    got_a = run(dec, a, ta, chunk=1)
    got_b = run(dec, b, tb, chunk=2)
    assert a.block_table()[:7] == b.block_table()[:7]        # full blocks still shared
    assert a.block_table()[7] != b.block_table()[7]          # the partial one was copied
    assert cache.pool.used_pages > before
    assert rel_err(got_a, contiguous(dec, base + ta)[30:]) <= 1e-5
    assert rel_err(got_b, contiguous(dec, base + tb)[30:]) <= 1e-5


def test_truncate_into_a_cached_block_copies_it(decoders):
    dec = decoders["smollm"]
    toks = list(prompt(24, seed=11))
    cache = paged(dec)
    a = cache.new_sequence()
    run(dec, a, toks)
    b = cache.new_sequence(toks + [1])            # shares all 6 blocks of a
    assert b.cached_tokens == 24
    a.truncate(18)                                # rollback into shared block 4
    got = run(dec, a, [3, 4, 5], chunk=3)
    assert rel_err(got, contiguous(dec, toks[:18] + [3, 4, 5])[18:]) <= 1e-5
    got_b = run(dec, b, [1], chunk=1)             # b's copy of block 4 is untouched
    assert rel_err(got_b, contiguous(dec, toks + [1])[24:]) <= 1e-5


def test_sliding_rollback_past_freed_blocks_is_an_input_error(decoders):
    dec = decoders["mistral"]
    cache = paged(dec)
    v = cache.new_sequence()
    run(dec, v, list(prompt(33)))
    v.truncate(31)                               # inside the window: fine
    with pytest.raises(InputError, match="sliding window"):
        v.truncate(5)


# Bounds on the logit KL divergence (nats/position) each storage costs on these tiny
# random models; the real SmolLM2 figures are in the report (bench/paged_kv.py).
KLD_MAX = {"f16": 5e-8, "bf16": 5e-6, "int8": 5e-5}   # measured ~5e-9, 7e-7, 3e-6


@pytest.mark.parametrize("dtype", ["f16", "bf16", "int8"])
def test_storage_precision_costs_little(decoders, dtype):
    dec = decoders["gemma2"]
    toks = list(prompt(33)) + list(prompt(7, seed=2))
    ref = run(dec, paged(dec).new_sequence(), toks)
    got = run(dec, paged(dec, dtype).new_sequence(), toks)
    kld = kl_divergence(ref, got)
    assert 0 < kld <= KLD_MAX[dtype]


def test_budget_in_bytes_and_exhaustion(decoders):
    dec = decoders["smollm"]
    per_page = BS * dec.config.n_kv_heads * dec.config.head_dim * 2 * 2      # f16 keys + values
    cache = PagedKVCache.for_model(dec, budget_bytes=10 * per_page + 7, block_size=BS, dtype="f16")
    assert cache.pool.num_pages == 10
    v = cache.new_sequence()
    run(dec, v, list(prompt(20)))                 # 5 blocks x 2 layers: every page
    assert cache.pool.free_pages == 0
    with pytest.raises(CapacityError, match="KV cache full"):
        dec.forward(np.array([1]), v)
    assert v.offset == 20
    v.release()
    assert cache.pool.free_pages == 10
    with pytest.raises(CapacityError, match="less than one"):
        PagedKVCache.for_model(dec, budget_bytes=per_page, block_size=BS)
    with pytest.raises(InputError, match="dtype"):
        PagedKVCache.for_model(dec, num_pages=10, dtype="f8")
