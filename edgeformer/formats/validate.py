"""Check a Checkpoint's tensors against its config: every tensor the decoder needs is
there, with the shape the config implies (GGUF names, row-major shapes)."""
from __future__ import annotations

from typing import Any

from edgeformer.errors import FormatError


# Checked for shape when present, never required: llama.cpp ties the output matrix to
# token_embd whenever `output.weight` is absent (llama-model.cpp, TENSOR_NOT_REQUIRED), and
# `DecoderConfig.from_gguf` cannot know about tying from metadata alone.
OPTIONAL = frozenset({"output.weight"})


def expected_tensors(config: Any) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> row-major shape that a `DecoderConfig` requires.

    Shapes are ggml's `ne` reversed: a linear layer mapping n_in -> n_out is (n_out, n_in).
    `output.weight` is listed but optional (see `OPTIONAL`). Optional extras
    (e.g. `rope_freqs.weight`) are not listed."""
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (c.vocab_size, c.dim),
        "output_norm.weight": (c.dim,),
    }
    out["output.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = (c.dim,)
        out[b + "ffn_norm.weight"] = (c.dim,)
        if c.fused_qkv:
            out[b + "attn_qkv.weight"] = (q + 2 * kv, c.dim)
        else:
            out[b + "attn_q.weight"] = (q, c.dim)
            out[b + "attn_k.weight"] = (kv, c.dim)
            out[b + "attn_v.weight"] = (kv, c.dim)
        if c.attn_bias:
            out[b + "attn_q.bias"], out[b + "attn_k.bias"], out[b + "attn_v.bias"] = (q,), (kv,), (kv,)
        if c.qk_norm:
            out[b + "attn_q_norm.weight"] = (c.head_dim,)
            out[b + "attn_k_norm.weight"] = (c.head_dim,)
        out[b + "attn_output.weight"] = (c.dim, q)
        if c.post_norms:
            out[b + "post_attention_norm.weight"] = (c.dim,)
            out[b + "post_ffw_norm.weight"] = (c.dim,)
        if c.fused_gate_up:
            out[b + "ffn_up.weight"] = (2 * c.ffn_dim, c.dim)
        else:
            out[b + "ffn_gate.weight"] = (c.ffn_dim, c.dim)
            out[b + "ffn_up.weight"] = (c.ffn_dim, c.dim)
        out[b + "ffn_down.weight"] = (c.dim, c.ffn_dim)
    return out


def validate_checkpoint(ckpt: Any) -> None:
    """Raise FormatError naming the file if a tensor the config needs is missing or has
    a shape that disagrees with the config. Reads only tensor infos, no data."""
    infos = getattr(ckpt.tensors, "infos", None) or {}
    have = {name: tuple(infos[name][1]) if name in infos else tuple(ckpt.tensors[name].shape)
            for name in ckpt.tensors}
    want = expected_tensors(ckpt.config)
    missing = [n for n in want if n not in have and n not in OPTIONAL]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FormatError(ckpt.path, f"missing tensor(s) the {ckpt.config.arch} config needs: "
                                     f"{', '.join(missing[:5])}{more}")
    for name, shape in want.items():
        if name in have and have[name] != shape:
            raise FormatError(ckpt.path, f"tensor {name!r} has shape {list(have[name])}, "
                                         f"the config implies {list(shape)}")
