"""Whole models on the cuda backend against the numpy reference backend: greedy tokens
equal and logits within 10x the linear bound per step (docs/BRINGUP.md step 7), and the
fused decode step (`block.py`) giving exactly the op path's logits, with the backend's
device cache, a host one and a paged one (sliding-window blocks dropped as it goes); the
device cache through growth and rollback; on a GPU, CUDA graph replay against eager.

Weights are random and untiled (synthetic checkpoints tile 64 rows by default, which
makes many logits tie and the greedy tokens repeat), large enough that the tokens vary.
The `gpu` tests repeat this at sizes where every qtype has whole K-quant blocks.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeformer.backends.base import get_backend
from edgeformer.backends.conformance import nmse
from edgeformer.backends.cuda import CudaBackend
from edgeformer.backends.trace import Tracer
from edgeformer.config import DecoderConfig
from edgeformer.formats.synthetic import synthetic_checkpoint
from edgeformer.kernels import OPS
from edgeformer.models.decoder import Decoder
from edgeformer.quant import quantize

pytest.importorskip("torch")
pytest.importorskip("triton")

QWEN2 = DecoderConfig(arch="qwen2", vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                      ffn_dim=96, max_seq_len=64, attn_bias=True)
# Gemma 3's traits: a sliding and a full layer with their own ropes, q/k norms, post norms,
# gelu_tanh, an attention soft-cap (Gemma 2's), embedding scale, tied embeddings
GEMMA3 = DecoderConfig(arch="gemma3", vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                       ffn_dim=96, max_seq_len=64, rope_theta=1e6, rope_local_theta=1e4, qk_norm=True,
                       post_norms=True, activation="gelu_tanh", embed_scale=8.0, attn_softcap=30.0,
                       sliding_window=5, layer_types=("sliding", "full"), tie_embeddings=True)
PROMPT = np.array([3, 17, 42, 5, 9, 11, 60])


def _checkpoint(cfg: DecoderConfig, qtype: str, std: float = 0.5):
    rng = np.random.default_rng(1)
    return synthetic_checkpoint(cfg, qtype, make_weight=lambda q, n, k: quantize(
        (rng.standard_normal((n, k)) * std).astype(np.float32), q))


def _greedy(model: Decoder, cache, steps: int, observed: bool = False, commit: bool = False):
    """Prompt, then `steps` greedy tokens: (tokens, logits per step). `observed` runs with
    a tracer attached (the decoder then takes the op path)."""
    toks, logits = [], []
    nxt = PROMPT
    for _ in range(steps + 1):
        if observed:
            with Tracer().attach(model.ops):
                out = model.forward(nxt, cache, last_only=True)
        else:
            out = model.forward(nxt, cache, last_only=True)
        if commit:
            cache.commit(nxt.tolist())
        logits.append(out[0])
        nxt = np.array([int(np.argmax(out))])
        toks.append(int(nxt[0]))
    return toks, logits


def _parity(backend: CudaBackend, cfg: DecoderConfig, qtype: str, steps: int) -> None:
    ck = _checkpoint(cfg, qtype)
    with warnings.catch_warnings():
        # no op falls back to the reference (Backend.kernel's warning)
        warnings.filterwarnings("error", message="backend 'cuda' has no", category=RuntimeWarning)
        model = Decoder(ck, backend)
        toks, logits = _greedy(model, model.make_cache(32), steps)
    ref = Decoder(ck, get_backend("numpy"))
    want, want_logits = _greedy(ref, ref.make_cache(32), steps)
    assert len(set(want)) > 2, "degenerate model: the greedy tokens hardly vary"
    assert toks == want
    bound = 10 * OPS["linear"].max_nmse.get(qtype, OPS["linear"].max_nmse["default"])
    for got, exp in zip(logits, want_logits):
        assert nmse(got, exp) <= bound


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_greedy_decoding_matches_numpy(backend: CudaBackend, qtype: str) -> None:
    _parity(backend, QWEN2, qtype, steps=6)


def test_fused_step_is_the_op_path(backend: CudaBackend) -> None:
    """Gemma 3's traits through the fused step and through the op path: identical logits
    at every step, on the device cache (`make_cache`) and on a host KVCache; the fused
    step also on a paged cache whose sliding layer drops blocks."""
    from edgeformer.backends.cuda.cache import DeviceKVCache
    from edgeformer.models.cache import KVCache
    from edgeformer.runtime.kv_cache import PagedKVCache
    ck = _checkpoint(GEMMA3, "Q8_0")
    model = Decoder(ck, backend)
    assert CudaBackend.why_not_fused(model.stack) is None
    assert isinstance(model.make_cache(32), DeviceKVCache)
    fused, fused_logits = _greedy(model, model.make_cache(32), 5)
    op, op_logits = _greedy(model, model.make_cache(32), 5, observed=True)
    assert fused == op and all(np.array_equal(a, b) for a, b in zip(fused_logits, op_logits))
    c = GEMMA3
    h_toks, h_logits = _greedy(model, KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 32), 5)
    assert h_toks == fused and all(np.array_equal(a, b) for a, b in zip(h_logits, fused_logits))
    paged = PagedKVCache.for_model(model, max_seq_len=32, num_pages=32, block_size=4, dtype="f32",
                                   prefix_sharing=False).new_sequence()
    p_toks, p_logits = _greedy(model, paged, 5, commit=True)
    assert paged.first[1] > 0                                 # the sliding layer's first blocks were dropped
    assert p_toks == fused and all(np.array_equal(a, b) for a, b in zip(p_logits, fused_logits))
    ref = Decoder(ck, get_backend("numpy"))
    assert _greedy(ref, ref.make_cache(32), 5)[0] == fused


def test_device_cache_grows_and_rolls_back(backend: CudaBackend) -> None:
    """The device cache from 8 slots: the fused step across two doublings (a new step
    state per capacity) and a rollback (truncate, then the same tokens again) gives the
    numpy reference's tokens and, after the rollback, the same logits as before it."""
    from edgeformer.backends.cuda.cache import DeviceKVCache
    ck = _checkpoint(GEMMA3, "Q8_0")
    model = Decoder(ck, backend)
    c = GEMMA3
    cache = DeviceKVCache(c.n_layers, c.n_kv_heads, c.head_dim, 40, backend.device, initial=8)
    toks, logits = _greedy(model, cache, 20)
    assert cache.capacity == 32 and cache.offset == len(PROMPT) + 20
    ref = Decoder(ck, get_backend("numpy"))
    want, want_logits = _greedy(ref, ref.make_cache(40), 20)
    assert toks == want
    bound = 10 * OPS["linear"].max_nmse.get("Q8_0", OPS["linear"].max_nmse["default"])
    assert all(nmse(a, b) <= bound for a, b in zip(logits, want_logits))
    cache.truncate(len(PROMPT) + 9)                 # back to before toks[9] was fed
    again = model.forward(np.array([toks[9]]), cache, last_only=True)[0]
    assert np.array_equal(again, logits[10])


def test_why_not_fused_names_what_is_not_covered() -> None:
    from edgeformer.backends.null import NullBackend
    stack = Decoder(_checkpoint(GEMMA3, "Q8_0"), NullBackend(fuse=True)).stack
    assert CudaBackend.why_not_fused(stack) is None
    assert "float32" in CudaBackend.why_not_fused(stack, activations="int8")


# ---- on a GPU: sizes where every qtype has whole blocks, more steps ----

GPU_LLAMA = DecoderConfig(arch="llama", vocab_size=1000, dim=512, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=64,
                          ffn_dim=1536, max_seq_len=256)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ["BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_gpu_greedy_decoding_matches_numpy(backend: CudaBackend, qtype: str) -> None:
    _parity(backend, GPU_LLAMA, qtype, steps=16)


@pytest.mark.gpu
def test_gpu_fused_step_is_the_op_path(backend: CudaBackend) -> None:
    model = Decoder(_checkpoint(GEMMA3, "Q8_0"), backend)
    fused = _greedy(model, model.make_cache(32), 8)
    op = _greedy(model, model.make_cache(32), 8, observed=True)
    assert fused[0] == op[0] and all(np.array_equal(a, b) for a, b in zip(fused[1], op[1]))


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_is_the_eager_step(backend: CudaBackend) -> None:
    """The fused step captured and replayed as a CUDA graph (from its second run at a
    capacity, again after the cache grows) gives the eager step's logits, bit for bit."""
    from edgeformer.backends.cuda.cache import DeviceKVCache
    ck = _checkpoint(GEMMA3, "Q8_0")
    c = GEMMA3
    runs = []
    for graphs in (True, False):
        model = Decoder(ck, CudaBackend(device="cuda", graphs=graphs))
        cache = DeviceKVCache(c.n_layers, c.n_kv_heads, c.head_dim, 40, model.backend.device, initial=8)
        runs.append(_greedy(model, cache, 20))
    assert runs[0][0] == runs[1][0] and all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
