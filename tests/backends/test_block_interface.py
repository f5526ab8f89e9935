"""The backend interface for whole blocks: declared abilities, the model-neutral block
description the fused step receives, and plugin discovery through the entry-point group."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from edgeformer.backends.base import ENTRY_POINT_GROUP, backend_class, backend_names, get_backend
from edgeformer.backends.blocks import DecoderStack
from edgeformer.backends.numpy_ref import NumpyBackend
from edgeformer.config import DecoderConfig
from edgeformer.errors import UnsupportedError
from edgeformer.formats.synthetic import synthetic_checkpoint
from edgeformer.models.decoder import Decoder

# Gemma 3's traits at toy size: sliding layers with their own rope, q/k norms, post norms,
# soft-capped attention (gemma2's), GQA
GEMMA3 = DecoderConfig(arch="gemma3", vocab_size=96, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16,
                       ffn_dim=96, max_seq_len=64, rope_theta=1e6, rope_local_theta=1e4, qk_norm=True,
                       post_norms=True, activation="gelu_tanh", embed_scale=8.0, attn_softcap=30.0,
                       sliding_window=5, layer_types=("sliding", "full", "sliding", "full"), tie_embeddings=True)


class _Recording(NumpyBackend):
    """The numpy backend declaring a fused step that records what it receives and
    declines (returns None), so the decoder must run the op-by-op path."""

    name = "recording"
    fused_decode = True

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def decode_step(self, stack, x, pos, cache, ropes):
        self.calls.append((stack, x.shape, pos, cache.offset, {k: (r[0].copy(), r[1]) for k, r in ropes.items()}))
        return None


def _model(backend, cfg: DecoderConfig = GEMMA3, qtype: str = "Q8_0") -> Decoder:
    return Decoder(synthetic_checkpoint(cfg, qtype), backend)      # the same weights every time (seed 0)


def test_stack_describes_the_blocks_without_model_fields() -> None:
    m = _model(get_backend("numpy"))
    s = m.stack
    assert isinstance(s, DecoderStack) and len(s.blocks) == GEMMA3.n_layers
    assert (s.dim, s.ffn_dim, s.activation, s.norm_eps, s.rope_varies) == (64, 96, GEMMA3.activation,
                                                                            GEMMA3.norm_eps, False)
    for i, b in enumerate(s.blocks):
        a = b.attention
        sliding = GEMMA3.is_sliding(i)
        assert (a.n_heads, a.n_kv_heads, a.head_dim, a.scale) == (4, 2, 16, m.attn_scale)
        assert a.rope == ("sliding" if sliding else "full") and a.window == (5 if sliding else None)
        assert a.softcap == GEMMA3.attn_softcap and a.neox == GEMMA3.rope_neox
        assert len(b.qkv) == 3 and len(b.gate_up) == 2            # numpy does not join weights
        assert b.q_norm is not None and b.post_attn_norm is not None and b.post_ffn_norm is not None
        assert [p.weight.shape for p in b.projections()] == [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64),
                                                             (96, 64), (64, 96)]
        assert all(p.weight.qtype.name == "Q8_0" for p in b.projections())
    assert {b.attention.rope for b in s.blocks} == {"full", "sliding"}


def test_a_joining_backend_gets_joined_projections() -> None:
    from edgeformer.backends.null import NullBackend
    s = _model(NullBackend(fuse=True)).stack
    assert all(len(b.qkv) == 1 and len(b.gate_up) == 1 for b in s.blocks)
    assert s.blocks[0].qkv[0].weight.shape == (64 + 2 * 32, 64)
    assert s.blocks[0].gate_up[0].weight.shape == (2 * 96, 64)


def test_backends_declare_abilities() -> None:
    from edgeformer.backends.base import Backend
    from edgeformer.backends.null import NullBackend
    assert not Backend.fused_decode and not Backend.joins_weights and not Backend.paged_attention
    assert not Backend.device_memory and Backend.row_invariant_rows == 0
    assert "no fused decode step" in NumpyBackend.why_not_fused(_model(get_backend("numpy")).stack)
    assert not NumpyBackend.fused_decode and not NullBackend().joins_weights and NullBackend(fuse=True).joins_weights
    cpu = backend_class("cpu")
    assert cpu.fused_decode and cpu.joins_weights and cpu.row_invariant_rows > 0


def test_fused_step_receives_the_stack_and_both_ropes_and_may_decline() -> None:
    """The decoder hands a fused-decode backend its stack, the step's position, the cache
    and both ropes at pos + 1 positions; a declined step (None) runs op by op, with the
    reference's logits."""
    be = _Recording()
    m, ref = _model(be), _model(get_backend("numpy"))
    toks = np.random.default_rng(0).integers(0, 96, 7)
    c, rc = m.make_cache(16), ref.make_cache(16)
    np.testing.assert_array_equal(m.forward(toks[:6], c), ref.forward(toks[:6], rc))
    assert be.calls == []                                          # prefill: T > 1 is never fused
    out = m.forward(toks[6:], c, last_only=True)
    np.testing.assert_array_equal(out, ref.forward(toks[6:], rc, last_only=True))
    [(stack, shape, pos, offset, ropes)] = be.calls
    assert stack is m.stack and shape == (1, 64) and pos == 6 and offset == 6
    for key, rope in (("full", m.rope_full), ("sliding", m.rope_sliding)):
        inv, ms = rope.frequencies(7)
        np.testing.assert_array_equal(ropes[key][0], inv)
        assert ropes[key][1] == ms
    assert not np.array_equal(ropes["full"][0], ropes["sliding"][0])     # Gemma 3: two rope bases


def test_observed_steps_are_not_fused() -> None:
    from edgeformer.backends.trace import Tracer
    be = _Recording()
    m = _model(be)
    c = m.make_cache(8)
    with Tracer().attach(m.ops):
        m.forward(np.array([1]), c)
    assert be.calls == []


# ------------------------------------------------------------------ plugins

PLUGIN = '''
from edgeformer.backends.numpy_ref import NumpyBackend


class PluginBackend(NumpyBackend):
    name = "plugdemo"
'''


def _install_fake_plugin(root, monkeypatch, name: str, target: str, module_src: str) -> None:
    """A distribution on sys.path the way pip leaves one: a module and a dist-info whose
    entry_points.txt names it in ENTRY_POINT_GROUP (found by importlib.metadata)."""
    (root / "edgeformer_plugdemo.py").write_text(module_src)
    info = root / "edgeformer_plugdemo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edgeformer-plugdemo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "edgeformer_plugdemo", raising=False)


def test_a_plugin_backend_is_found_through_its_entry_point(tmp_path, monkeypatch) -> None:
    from edgeformer.backends import base
    _install_fake_plugin(tmp_path, monkeypatch, "plugdemo", "edgeformer_plugdemo:PluginBackend", textwrap.dedent(PLUGIN))
    monkeypatch.setattr(base, "_BACKENDS", dict(base._BACKENDS))
    assert "plugdemo" in backend_names()
    assert "edgeformer_plugdemo" not in sys.modules                   # listed without importing it
    be = get_backend("plugdemo")
    assert type(be).__name__ == "PluginBackend" and be.name == "plugdemo"
    m = _model(be)
    ref = _model(get_backend("numpy"))
    np.testing.assert_array_equal(m.forward(np.array([1, 2]), m.make_cache(4)),
                                  ref.forward(np.array([1, 2]), ref.make_cache(4)))


def test_a_broken_plugin_is_named_in_the_error(tmp_path, monkeypatch) -> None:
    from edgeformer.backends import base
    _install_fake_plugin(tmp_path, monkeypatch, "brokendemo", "edgeformer_plugdemo:Missing", "x = 1\n")
    monkeypatch.setattr(base, "_BACKENDS", dict(base._BACKENDS))
    with pytest.raises(UnsupportedError, match="brokendemo.*edgeformer_plugdemo:Missing"):
        get_backend("brokendemo")
