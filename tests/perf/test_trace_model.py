"""The priced op list is the executed one: the null-backend trace of a model equals the
Tracer's record of a real forward (numpy / cpu backend) op for op, shape for shape, cost
for cost; KV-cache bytes match `models/cache.py`'s allocation to the byte; decode bytes
match the file's weight bytes plus the cached K/V."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends import get_backend
from edgeformer.backends.trace import trace_forward
from edgeformer.config import DecoderConfig, RopeScaling
from edgeformer.formats import load_checkpoint
from edgeformer.formats.synthetic import write_random_gguf
from edgeformer.models.cache import KVCache
from edgeformer.models.decoder import Decoder
from edgeformer.perf.trace_model import (kv_bytes_read, kv_cache_bytes, trace_decoder,
                                         trace_decoder_repeated)
from edgeformer.quant.qtypes import nbytes

CONFIGS = {
    "llama_gqa_tied": DecoderConfig(arch="llama", vocab_size=211, dim=64, n_layers=3, n_heads=4, n_kv_heads=2,
                                    head_dim=16, ffn_dim=96, max_seq_len=512, tie_embeddings=True, rope_neox=False),
    "llama3_untied": DecoderConfig(arch="llama", vocab_size=300, dim=96, n_layers=2, n_heads=3, n_kv_heads=1,
                                   head_dim=32, ffn_dim=64, max_seq_len=512, rope_theta=500000.0, rope_neox=False,
                                   rope_scaling=RopeScaling("llama3", 8.0, 64, 1.0, 4.0)),
    "qwen2_bias": DecoderConfig(arch="qwen2", vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                head_dim=16, ffn_dim=160, max_seq_len=512, attn_bias=True, tie_embeddings=True),
}


def _key(r):
    return (r.op, r.name, r.layer, r.shapes, r.weight_qtype, r.attrs, r.cost)


def _executed(path, backend: str, prompt: int, max_seq_len: int | None = None):
    model = Decoder(load_checkpoint(path), get_backend(backend))
    cache = model.make_cache(max_seq_len)
    toks = np.arange(prompt) % model.config.vocab_size
    pre = trace_forward(lambda: model.forward(toks, cache, last_only=True), model.ops)
    dec = trace_forward(lambda: model.forward(np.array([1]), cache, last_only=True), model.ops)
    return pre, dec, cache


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("qtype,backend", [("Q8_0", "numpy"), ("F32", "numpy"), ("Q8_0", "cpu"), ("Q4_0", "cpu")])
def test_priced_ops_equal_executed_ops(tmp_path, name, qtype, backend):
    if get_backend(backend).available() is not None:
        pytest.skip(f"backend {backend} unavailable")
    cfg = CONFIGS[name]
    path = write_random_gguf(cfg, tmp_path / "m.gguf", qtype)
    pre, dec, cache = _executed(path, backend, 7)
    for source in (path, cfg):          # from the file, and from the config alone
        tr = trace_decoder(source, prompt_len=7, context_len=7, qtype=qtype, backend=backend)
        assert [_key(r) for r in tr.prefill] == [_key(r) for r in pre]
        assert [_key(r) for r in tr.decode] == [_key(r) for r in dec]
        assert tr.kv_bytes == sum(k.nbytes + v.nbytes for k, v in zip(cache.keys, cache.values))
    rep = trace_decoder_repeated(cfg, 7, 7, qtype=qtype, backend=backend)
    assert [_key(r) for r in rep.decode] == [_key(r) for r in dec]


def test_shipped_smollm2_trace_and_decode_bytes():
    from tests.conftest import shipped_path
    path = shipped_path("smollm2-135m-instruct")
    backend = "cpu" if get_backend("cpu").available() is None else "numpy"
    pre, dec, cache = _executed(path, backend, 9)
    tr = trace_decoder(path, prompt_len=9, context_len=9, backend=backend)
    assert len(tr.prefill) == len(pre) and len(tr.decode) == len(dec)
    assert [_key(r) for r in tr.prefill] == [_key(r) for r in pre]
    assert [_key(r) for r in tr.decode] == [_key(r) for r in dec]
    alloc = sum(k.nbytes + v.nbytes for k, v in zip(cache.keys, cache.values))
    assert tr.kv_bytes == alloc == kv_cache_bytes(tr.config, [9, 1])
    # bytes one decode step must read: every matrix (the tied embedding once, as the
    # output projection), one embedding row, the norm vectors, the cached K/V
    ck = load_checkpoint(path)
    infos = ck.tensors.infos
    mats = sum(nbytes(*infos[n]) for n in infos if len(infos[n][1]) == 2)
    vecs = sum(nbytes(*infos[n]) for n in infos if len(infos[n][1]) == 1 and "norm" in n)
    q, (v, d) = infos["token_embd.weight"]
    row = nbytes(q, (1, d))
    expect = mats + vecs + row + kv_bytes_read(tr.config, 10)
    assert cache.nbytes == kv_bytes_read(tr.config, 10)
    # the trace's weight + KV operands: within 1 % (in fact 0.1 %) of what must be read
    w_kv = sum(_weight_kv_bytes(r) for r in tr.decode)
    assert abs(w_kv - expect) / expect < 1e-3, (w_kv, expect)
    # everything the trace reads adds float32 activation operands (x into each of ~450
    # ops): 1.6 % at this context, bounded here at 2 %
    traced = sum(r.cost.bytes_read for r in tr.decode)
    assert 0 < (traced - w_kv) / expect < 0.02, (traced, expect)
    # the part of the traced bytes that is model state in memory (`dram_bytes`: the
    # activation operands excluded): within 1 % of every tensor in the file (the tied
    # embedding read once, as the output head) plus the cached K/V
    tensors = sum(nbytes(*infos[n]) for n in infos)
    state = tensors + kv_bytes_read(tr.config, 10)
    assert abs(tr.decode_dram_bytes - state) / state < 0.01, (tr.decode_dram_bytes, state)
    assert tr.decode_dram_bytes < traced


def _weight_kv_bytes(r) -> float:
    if r.op == "linear":
        return nbytes(_q(r.weight_qtype), r.shapes[1]) + (4 * r.shapes[2][0] if r.shapes[2] else 0)
    if r.op == "embed":
        return r.cost.bytes_read - 8 * int(np.prod(r.shapes[1]))
    if r.op == "attention":
        return 4 * (int(np.prod(r.shapes[1])) + int(np.prod(r.shapes[2])))
    if r.op in ("rms_norm", "layer_norm") and r.shapes[1] is not None:
        return 4 * int(np.prod(r.shapes[1]))
    return 0.0


def _q(name):
    from edgeformer.quant.qtypes import QType
    return QType[name]


@pytest.mark.parametrize("max_seq_len", [64, 300, 1000, 4096])
def test_kv_bytes_equal_cache_allocation(max_seq_len):
    cfg = CONFIGS["llama_gqa_tied"]
    cache = KVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, max_seq_len)
    pos, history = 0, []
    for step in (1, 20, 235, 1, 1, 300, 1, 443):
        step = min(step, max_seq_len - pos)
        if step <= 0:
            break
        k = np.zeros((step, cfg.n_kv_heads, cfg.head_dim), np.float32)
        for i in range(cfg.n_layers):
            cache.update_and_fetch(i, k, k)
        pos += step
        history.append(step)
        alloc = sum(a.nbytes + b.nbytes for a, b in zip(cache.keys, cache.values))
        assert kv_cache_bytes(cfg, history, max_seq_len) == alloc


def test_trace_rejects_context_past_model():
    from edgeformer.errors import InputError
    with pytest.raises(InputError):
        trace_decoder(CONFIGS["qwen2_bias"], prompt_len=600)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_batched_decode_trace_equals_executed(tmp_path, backend):
    if get_backend(backend).available() is not None:
        pytest.skip(f"backend {backend} unavailable")
    cfg = CONFIGS["qwen2_bias"]
    path = write_random_gguf(cfg, tmp_path / "m.gguf", "Q8_0")
    model = Decoder(load_checkpoint(path), get_backend(backend))
    caches = [model.make_cache() for _ in range(3)]
    for j, cache in enumerate(caches):
        model.forward(np.arange(5) + j, cache, last_only=True)
    dec = trace_forward(lambda: model.forward_batch([(np.array([j + 1]), c) for j, c in enumerate(caches)]),
                        model.ops)
    tr = trace_decoder(path, prompt_len=5, context_len=5, batch=3, backend=backend)
    assert [_key(r) for r in tr.decode] == [_key(r) for r in dec]
    assert tr.kv_bytes == sum(k.nbytes + v.nbytes for c in caches for k, v in zip(c.keys, c.values))
    assert not tr.fused_decode     # forward_batch never takes the fused one-token path
