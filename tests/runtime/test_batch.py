"""Batched forward: `Decoder.forward_batch` equals per-sequence `forward`, and with the
row-invariant linear every sequence's logits are bit-identical whatever else is in the
batch, on the numpy and the Numba cpu backends."""
from __future__ import annotations


import numpy as np
import pytest

from support.families import BY_NAME, checkpoint_from_hf_dir, hf_model, prompt, rel_err, save_hf  # noqa: E402

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.backends.base import Ops  # noqa: E402
from edgeformer.backends.row_invariant import row_invariant_linear  # noqa: E402
from edgeformer.models import Decoder  # noqa: E402
from edgeformer.runtime.kv_cache import PagedKVCache  # noqa: E402

pytest.importorskip("torch")


def _backend(name: str):
    return get_backend(name)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf(hf_model(BY_NAME["gemma2"]), tmp_path_factory.mktemp("batch") / "gemma2")


@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_linear_rows_do_not_depend_on_the_batch(backend, qtype):
    from edgeformer.quant.qtypes import QTensor
    from edgeformer.quant.quantize import quantize
    be = _backend(backend)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 256)).astype(np.float32)
    w = be.prepare_weight(QTensor.from_array(a) if qtype == "F32" else quantize(a, qtype), "w")
    x = rng.standard_normal((40, 256)).astype(np.float32)
    lin = row_invariant_linear(Ops(be))
    alone = np.concatenate([lin(x[i:i + 1], w) for i in range(40)])
    for rows in ([0, 1], list(range(7)), list(range(17)), list(range(39, -1, -1))):
        assert np.array_equal(lin(x[rows], w), alone[rows])
    if backend == "numpy":   # the reason for the blocking: plain BLAS is not row-invariant
        ops = Ops(be)
        assert not all(np.array_equal(ops.linear(x[:m], w)[0], ops.linear(x[:1], w)[0]) for m in (2, 5, 16, 40))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_forward_batch_is_batch_invariant_and_matches_forward(hf_dir, backend):
    dec = Decoder(checkpoint_from_hf_dir(hf_dir), _backend(backend))
    lin = row_invariant_linear(dec.ops)
    prompts = [list(prompt(n, seed=n)) for n in (13, 5, 21, 1, 9)]

    def run(batch: list[int], steps: int = 4) -> dict[int, list[np.ndarray]]:
        """Prompts of `batch` together (whole prompt, then `steps` greedy tokens each)."""
        cache = PagedKVCache.for_model(dec, num_pages=200, block_size=4, dtype="f32")
        views = {i: cache.new_sequence() for i in batch}
        feed = {i: prompts[i] for i in batch}
        out: dict[int, list[np.ndarray]] = {i: [] for i in batch}
        for _ in range(steps):
            logits = dec.forward_batch([(np.array(feed[i]), views[i]) for i in batch], linear=lin)
            for i, lg in zip(batch, logits):
                views[i].commit(feed[i])
                out[i].append(lg)
                feed[i] = [int(np.argmax(lg[-1]))]
        return out

    together = run([0, 1, 2, 3, 4])
    for i in range(5):
        alone = run([i])[i]
        assert all(np.array_equal(a, b) for a, b in zip(alone, together[i])), f"sequence {i}"
    mixed = run([3, 0])                       # other companions, other order
    assert all(np.array_equal(a, b) for a, b in zip(mixed[0], together[0]))
    # and the batched path computes the same function as forward (plain linear, contiguous cache)
    c = dec.make_cache(64)
    want = dec.forward(np.array(prompts[2]), c, last_only=True)
    assert rel_err(together[2][0], want) <= 1e-5


@pytest.mark.parametrize("dtype", ["f32", "f16", "int8"])
def test_one_attention_call_per_layer_gives_the_per_sequence_bits(hf_dir, dtype, monkeypatch):
    """On a cache whose pages the backend reads in place, forward_batch writes every
    sequence's K/V and attends for all of them in one call per layer (`BlockTable.join`):
    the logits are those of the per-sequence path, bit for bit (Gemma 2: sliding layers,
    soft-capping; prompts and decode rows in one step; sequences of different lengths)."""
    from edgeformer.runtime.kv_cache import BlockTable
    dec = Decoder(checkpoint_from_hf_dir(hf_dir), _backend("cpu"))
    lin = row_invariant_linear(dec.ops)
    joins = []

    def run(joined: bool) -> list[np.ndarray]:
        cache = PagedKVCache.for_model(dec, num_pages=400, block_size=4, dtype=dtype, paged_views=True)
        views = [cache.new_sequence() for _ in range(4)]
        feed = [list(prompt(n, seed=n)) for n in (13, 5, 21, 1)]
        out = []
        for step in range(5):
            live = [i for i in range(4) if step >= i // 2]       # later sequences join later
            with monkeypatch.context() as m:
                if not joined:
                    m.setattr(BlockTable, "join", lambda self, seqs, lens: None)
                else:
                    m.setattr(BlockTable, "join", lambda self, seqs, lens, f=BlockTable.join: joins.append(1)
                              or f(self, seqs, lens))
                logits = dec.forward_batch([(np.array(feed[i]), views[i]) for i in live], linear=lin)
            for i, lg in zip(live, logits):
                views[i].commit(feed[i])
                out.append(lg)
                feed[i] = [int(np.argmax(lg[-1]))]
        return out

    per_sequence, joined = run(False), run(True)
    assert joins and all(np.array_equal(a, b) for a, b in zip(per_sequence, joined))
