"""DecoderConfig from HF config.json and GGUF metadata, to_gguf, and tensor names, checked
against transformers' configs and llama.cpp's gguf-py (`Keys`, `TensorNameMap`)."""
from __future__ import annotations

import dataclasses
import json

import gguf
import pytest
from support.families import FAMILIES
from safetensors.numpy import load_file

from edgeformer.config import FAMILIES as FAMILY_TRAITS
from edgeformer.config import GGUF_ARCHS, HF_MODEL_TYPES, DecoderConfig
from edgeformer.errors import ConfigError, UnsupportedError
from edgeformer.formats.tensor_map import hf_to_gguf_name

NAMES = [f.name for f in FAMILIES]
GGUF_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3,
             "gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3,
             "phi3": gguf.MODEL_ARCH.PHI3}


def _hf(built, name):
    b = built(name)
    return b, json.loads((b.dir / "config.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_from_hf_reads_what_transformers_uses(built, name):
    b, raw = _hf(built, name)
    hf = b.model.config
    c = DecoderConfig.from_hf(raw)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads, head_dim,
        hf.intermediate_size, hf.vocab_size)
    assert c.norm_eps == hf.rms_norm_eps and c.max_seq_len == hf.max_position_embeddings
    assert c.tie_embeddings == bool(hf.tie_word_embeddings)
    hf_types = getattr(hf, "layer_types", None)
    if hf.sliding_window if hasattr(hf, "sliding_window") else False:
        want = hf_types or ["sliding_attention"] * hf.num_hidden_layers
        assert [c.is_sliding(i) for i in range(c.n_layers)] == [t == "sliding_attention" for t in want]
        assert c.sliding_window == hf.sliding_window
    else:
        assert c.sliding_window is None and not any(c.is_sliding(i) for i in range(c.n_layers))
    if hasattr(hf, "query_pre_attn_scalar"):
        assert c.attn_scale == pytest.approx(hf.query_pre_attn_scalar ** -0.5)


@pytest.mark.parametrize("name", NAMES)
def test_gguf_round_trip_keeps_the_config(built, name):
    _, raw = _hf(built, name)
    c = DecoderConfig.from_hf(raw)
    md = c.to_gguf()
    names = ["token_embd.weight"] + ([] if c.tie_embeddings else ["output.weight"])
    back = DecoderConfig.from_gguf(md, names)
    # what travels as tensors (llama3 rope_freqs, longrope factors) or is HF-only
    skip = {"rope_scaling", "extra"}
    for f in dataclasses.fields(DecoderConfig):
        if f.name not in skip:
            assert getattr(back, f.name) == pytest.approx(getattr(c, f.name)), f.name
    s, t = c.rope_scaling, back.rope_scaling
    if s is None or s.kind == "llama3":
        assert t is None
    else:
        assert (t.kind, t.factor, t.original_max_position_embeddings) == (
            s.kind, pytest.approx(s.factor), s.original_max_position_embeddings)


@pytest.mark.parametrize("name", NAMES)
def test_to_gguf_uses_llama_cpp_key_names(built, name):
    _, raw = _hf(built, name)
    c = DecoderConfig.from_hf(raw)
    known = set()
    for group in (gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope):
        known |= {v.replace("{arch}", c.arch) for k, v in vars(group).items() if k.isupper() and isinstance(v, str)}
    md = c.to_gguf()
    assert md.pop("general.architecture") == c.arch == gguf.MODEL_ARCH_NAMES[GGUF_ARCH[c.arch]]
    assert set(md) <= known, set(md) - known


@pytest.mark.parametrize("name", NAMES)
def test_tensor_names_match_gguf_py(built, name):
    b, raw = _hf(built, name)
    c = DecoderConfig.from_hf(raw)
    ref = gguf.get_tensor_name_map(GGUF_ARCH[c.arch], c.n_layers)
    for hf_name in load_file(b.dir / "model.safetensors"):
        base, _, suffix = hf_name.rpartition(".")
        assert hf_to_gguf_name(c.arch, hf_name) == f"{ref.get_name(base)}.{suffix}", hf_name


def test_gemma3_multimodal_prefixes_and_skips():
    assert hf_to_gguf_name("gemma3", "model.language_model.layers.2.self_attn.q_norm.weight") == \
        "blk.2.attn_q_norm.weight"
    assert hf_to_gguf_name("gemma3", "model.vision_tower.vision_model.embeddings.patch_embedding.weight") is None
    assert hf_to_gguf_name("gemma2", "lm_head.weight") is None     # llama.cpp ties Gemma 1/2
    with pytest.raises(UnsupportedError, match="no GGUF name"):
        hf_to_gguf_name("llama", "model.layers.0.mlp.experts.0.weight")


def test_unknown_model_type_and_rope_type_name_the_supported_ones():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_attention_heads=2,
                num_hidden_layers=1, intermediate_size=4)
    with pytest.raises(UnsupportedError, match="supported: llama, mistral, qwen2"):
        DecoderConfig.from_hf({**base, "model_type": "gpt_neox"})
    with pytest.raises(UnsupportedError, match="supported: default, linear, dynamic, yarn, llama3, longrope"):
        DecoderConfig.from_hf({**base, "rope_scaling": {"rope_type": "su-per", "factor": 2.0}})
    with pytest.raises(ConfigError, match="hidden_size"):
        DecoderConfig.from_hf({k: v for k, v in base.items() if k != "hidden_size"})
    with pytest.raises(UnsupportedError, match="supported: llama, qwen2"):
        DecoderConfig.from_gguf({"general.architecture": "mamba"})
    with pytest.raises(ConfigError, match="llama.block_count"):
        DecoderConfig.from_gguf({"general.architecture": "llama", "llama.embedding_length": 8})
    with pytest.raises(UnsupportedError, match="supported: llama, qwen2"):
        hf_to_gguf_name("mamba", "model.embed_tokens.weight")


def test_values_of_the_wrong_type_are_config_errors():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_attention_heads=2,
                num_hidden_layers=1, intermediate_size=4)
    for bad in ({"hidden_size": "big"}, {"model_type": "mistral", "layer_types": 3, "sliding_window": 4},
                {"rope_parameters": "x"}, {"hidden_size": float("inf")}):
        with pytest.raises(ConfigError, match="bad value"):
            DecoderConfig.from_hf({**base, **bad})
    md = DecoderConfig.from_hf(base).to_gguf()
    with pytest.raises(ConfigError, match="bad value"):
        DecoderConfig.from_gguf({**md, "llama.block_count": "one"})
    with pytest.raises(UnsupportedError, match="supported: llama, qwen2"):
        DecoderConfig.from_gguf({**md, "general.architecture": ["llama"]})


def test_values_that_make_no_model_are_refused_naming_the_field():
    """Zero or absurd counts, NaN / inf / zero floats: a ConfigError naming the field, before
    any per-layer work (issue 16: a block_count of 3,000,000 built a 3.6 GB list, 2**64-1 hung)."""
    import time
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_attention_heads=2,
                num_hidden_layers=1, intermediate_size=4)
    md = DecoderConfig.from_hf(base).to_gguf()
    t0 = time.perf_counter()
    for key, value, field in (("llama.block_count", 3_000_000, "n_layers"), ("llama.block_count", 2**64 - 1, "n_layers"),
                              ("llama.attention.head_count", 0, "n_heads"), ("llama.context_length", 2**40, "max_seq_len"),
                              ("llama.embedding_length", -8, "dim"),
                              ("llama.attention.layer_norm_rms_epsilon", float("nan"), "norm_eps"),
                              ("llama.attention.layer_norm_rms_epsilon", 0.0, "norm_eps"),
                              ("llama.rope.freq_base", float("inf"), "rope_theta")):
        with pytest.raises(ConfigError, match=field):
            DecoderConfig.from_gguf({**md, key: value})
    for key, value, field in (("num_hidden_layers", 3_000_000, "n_layers"), ("num_attention_heads", 0, "n_heads"),
                              ("rms_norm_eps", float("nan"), "norm_eps"), ("rope_theta", -1.0, "rope_theta")):
        with pytest.raises(ConfigError, match=field):
            DecoderConfig.from_hf({**base, key: value})
    assert time.perf_counter() - t0 < 2.0
    with pytest.raises(ConfigError, match="attn_softcap"):
        DecoderConfig(arch="gemma2", vocab_size=8, dim=8, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=8, ffn_dim=8,
                      max_seq_len=8, attn_softcap=float("nan"))


def test_every_model_type_and_architecture_leads_to_one_family_row():
    assert set(HF_MODEL_TYPES) == {mt for f in FAMILY_TRAITS.values() for mt in f.hf_model_types}
    assert HF_MODEL_TYPES["mistral"].arch == "llama" and GGUF_ARCHS["llama"] is FAMILY_TRAITS["llama"]
    assert all(GGUF_ARCHS[f.arch].arch == f.arch for f in FAMILY_TRAITS.values())
    assert set(GGUF_ARCH) == set(GGUF_ARCHS)


def test_legacy_hf_rope_keys():
    """Pre-5.x config.json: rope_theta + rope_scaling with "type"; Gemma 3's
    rope_local_base_freq and sliding_window_pattern."""
    c = DecoderConfig.from_hf(dict(model_type="llama", vocab_size=10, hidden_size=8, num_attention_heads=2,
                                   num_hidden_layers=1, intermediate_size=4, rope_theta=123.0,
                                   rope_scaling={"type": "linear", "factor": 2.0}))
    assert c.rope_theta == 123.0 and c.rope_scaling.kind == "linear" and c.rope_scaling.factor == 2.0
    g = DecoderConfig.from_hf(dict(model_type="gemma3_text", vocab_size=10, hidden_size=8, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=4, num_hidden_layers=7, intermediate_size=4,
                                   rope_theta=1e6, rope_local_base_freq=1e4, sliding_window=5,
                                   sliding_window_pattern=6, rope_scaling={"rope_type": "linear", "factor": 8.0}))
    assert (g.rope_theta, g.rope_local_theta, g.rope_scaling.factor) == (1e6, 1e4, 8.0)
    assert [g.is_sliding(i) for i in range(7)] == [True] * 5 + [False, True]


def test_from_gguf_applies_llama_cpp_defaults():
    md = {"general.architecture": "gemma2", "gemma2.embedding_length": 4608, "gemma2.block_count": 46,
          "gemma2.attention.head_count": 32, "gemma2.attention.head_count_kv": 16, "gemma2.context_length": 8192,
          "gemma2.feed_forward_length": 36864, "gemma2.attention.key_length": 128, "gemma2.vocab_size": 256000,
          "gemma2.attention.layer_norm_rms_epsilon": 1e-6}
    c = DecoderConfig.from_gguf(md)
    assert (c.sliding_window, c.attn_softcap, c.final_softcap, c.tie_embeddings) == (4096, 50.0, 30.0, True)
    assert [c.is_sliding(i) for i in range(4)] == [True, False, True, False]
    assert c.attn_scale == pytest.approx((4608 / 32) ** -0.5)       # llama.cpp's 27B rule
    g3 = {k.replace("gemma2", "gemma3"): v.replace("gemma2", "gemma3") if isinstance(v, str) else v
          for k, v in md.items()} | {
        "gemma3.block_count": 7, "gemma3.attention.sliding_window": 512}
    c3 = DecoderConfig.from_gguf(g3, ["token_embd.weight"])
    assert [c3.is_sliding(i) for i in range(7)] == [True] * 5 + [False, True]
    assert (c3.rope_local_theta, c3.attn_scale, c3.attn_softcap) == (10000.0, None, None)


def test_gemma3_multimodal_config_fills_text_defaults():
    """gemma-3-4b style config.json: text_config omits keys Gemma3TextConfig defaults."""
    from transformers import Gemma3Config
    raw = {"model_type": "gemma3", "tie_word_embeddings": True,
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "sliding_window": 1024,
                           "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
           "vision_config": {"model_type": "siglip_vision_model"}}
    hf = Gemma3Config(**{k: v for k, v in raw.items() if k != "model_type"}).text_config
    c = DecoderConfig.from_hf(raw)
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len) == (
        hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim, hf.vocab_size, hf.max_position_embeddings)
    assert (c.rope_theta, c.rope_local_theta) == (hf.rope_parameters["full_attention"]["rope_theta"],
                                                  hf.rope_parameters["sliding_attention"]["rope_theta"])
    assert c.rope_scaling.kind == "linear" and c.rope_scaling.factor == 8.0
    assert [c.is_sliding(i) for i in range(c.n_layers)] == [t == "sliding_attention" for t in hf.layer_types]
    assert c.attn_scale == hf.query_pre_attn_scalar ** -0.5 and c.tie_embeddings
