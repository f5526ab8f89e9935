"""KVCache contract and Decoder input errors: rollback, growth, context overflow."""
from __future__ import annotations

import numpy as np
import pytest
from support.families import checkpoint_from_hf_dir, prompt, rel_err

from edgeformer.backends import get_backend
from edgeformer.errors import InputError
from edgeformer.models import Decoder, KVCache


@pytest.fixture(scope="module")
def dec(built):
    return Decoder(checkpoint_from_hf_dir(built("qwen2").dir), get_backend("numpy"))


def test_truncate_rolls_back_to_a_fresh_run(dec):
    toks = prompt(30)
    cache = dec.make_cache(64)
    dec.forward(toks[:20], cache)
    dec.forward(np.array([5, 6, 7]), cache)          # rejected draft tokens
    cache.truncate(20)
    assert cache.offset == 20
    got = dec.forward(toks[20:], cache)
    want = dec.forward(toks, dec.make_cache(64))[20:]
    assert rel_err(got, want) <= 1e-6


def test_storage_grows_past_its_initial_capacity():
    c = KVCache(n_layers=2, n_kv_heads=1, head_dim=3, max_seq_len=50, initial=4)
    rng = np.random.default_rng(0)
    ks = rng.standard_normal((23, 1, 3)).astype(np.float32)
    for lo, hi in [(0, 3), (3, 4), (4, 17), (17, 23)]:
        for layer in range(2):
            k_all, v_all, pos = c.update_and_fetch(layer, ks[lo:hi], -ks[lo:hi])
        np.testing.assert_array_equal(k_all, ks[:hi])
        np.testing.assert_array_equal(v_all, -ks[:hi])
        np.testing.assert_array_equal(pos, np.arange(hi))
    assert c.offset == 23 and c.capacity >= 23
    assert c.nbytes == 2 * 23 * 1 * 6 * 4


def test_context_overflow_is_an_input_error_and_leaves_the_cache(dec):
    cache = dec.make_cache(10)
    dec.forward(prompt(8), cache)
    with pytest.raises(InputError, match="exceed"):
        dec.forward(prompt(3), cache)
    assert cache.offset == 8
    with pytest.raises(InputError, match="exceeds the model context"):
        dec.make_cache(dec.config.max_seq_len + 1)


@pytest.mark.parametrize("bad", [np.array([], dtype=np.int64), np.array([[1, 2]]), np.array([0.5]),
                                 np.array([211]), np.array([-1])])
def test_bad_tokens_are_input_errors(dec, bad):
    cache = dec.make_cache(16)
    with pytest.raises(InputError):
        dec.forward(bad, cache)
    assert cache.offset == 0
