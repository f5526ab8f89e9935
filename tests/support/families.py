"""Tiny, oddly sized random-weight HF models, one per decoder family, and the plumbing
to compare edgeformer's `Decoder` with `transformers` on them (used by the parity tests
and `parity_table.py`). Nothing is downloaded: every model is built from a config."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 211
WINDOW = 11          # sliding window; prompts of 33 tokens run past it
PROMPT_LENS = (1, 7, 33)
N_DECODE = 8


def _factors(n: int, lo: float, hi: float, seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).uniform(lo, hi, n)]


@dataclass
class Family:
    name: str
    model_type: str
    kwargs: dict[str, Any]
    notes: str = ""
    skip_incremental: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES: list[Family] = [
    Family("llama3", "llama", dict(
        hidden_size=72, intermediate_size=37, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=128,
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16, "rope_theta": 500000.0}),
        "untied, GQA 3:1, llama3 rope"),
    Family("smollm", "llama", dict(
        hidden_size=96, intermediate_size=37, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3,
        tie_word_embeddings=True, max_position_embeddings=128,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
        "tied, MHA head_dim 32, linear rope"),
    Family("mistral", "mistral", dict(
        hidden_size=72, intermediate_size=37, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        sliding_window=WINDOW, max_position_embeddings=128, tie_word_embeddings=False),
        "sliding window on every layer"),
    Family("qwen2", "qwen2", dict(
        hidden_size=96, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, max_position_embeddings=128,
        tie_word_embeddings=True),
        "qkv bias, tied, layer 1 sliding"),
    Family("qwen3", "qwen3", dict(
        hidden_size=72, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=20, max_position_embeddings=128, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                         "rope_theta": 10000.0}),
        "q/k norm, head_dim 20 != 72/4, yarn rope"),
    Family("gemma", "gemma", dict(
        hidden_size=72, intermediate_size=37, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        head_dim=24, max_position_embeddings=128),
        "(1+w) norms, sqrt(dim) embedding scale, GeGLU"),
    Family("gemma2", "gemma2", dict(
        hidden_size=72, intermediate_size=37, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
        head_dim=24, query_pre_attn_scalar=18, attn_logit_softcapping=1.5, final_logit_softcapping=3.0,
        sliding_window=WINDOW, max_position_embeddings=128),
        "softcaps, pre/post norms, alternating sliding, query_pre_attn_scalar"),
    Family("gemma3", "gemma3_text", dict(
        hidden_size=72, intermediate_size=37, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
        head_dim=32, query_pre_attn_scalar=32, sliding_window=WINDOW, max_position_embeddings=128,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        "q/k norm, local rope base, linear rope on global layers"),
    Family("phi3", "phi3", dict(
        hidden_size=96, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, original_max_position_embeddings=32, partial_rotary_factor=0.75,
        sliding_window=WINDOW, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        rope_parameters={"rope_type": "longrope", "short_factor": _factors(9, 1.0, 1.5, 1),
                         "long_factor": _factors(9, 1.0, 6.0, 2), "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.75}),
        "fused qkv/gate_up, longrope (long past 32), partial rotary 0.75"),
]
BY_NAME = {f.name: f for f in FAMILIES}


def hf_model(fam: Family, seed: int = 0):
    """The float32 eager HF model of `fam`, every parameter redrawn so nothing is trivial:
    matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm weights around their identity."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(fam.model_type, vocab_size=VOCAB, **fam.kwargs)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    zero_centered = fam.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((0.0 if zero_centered else 1.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif p.ndim == 2 and "embed" not in name:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn_like(p))
    return model


def save_hf(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.as_tensor(tokens[None], dtype=torch.long)).logits[0].float().numpy()


def round_matrices_f16(model) -> None:
    """Round the weights a GGUF F16 file stores as F16 (2-D matrices), in place, so the
    HF reference sees exactly the values the file holds."""
    import torch
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())


def checkpoint_from_hf_dir(path: Path):
    """Checkpoint of an HF directory: `formats.load_checkpoint` once the HF reader exists,
    else built here from config.json + model.safetensors through `tensor_map`."""
    try:
        import edgeformer.formats.hf  # noqa: F401
        import edgeformer.formats.validate  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        from edgeformer.formats import load_checkpoint
        return load_checkpoint(path)
    from safetensors.numpy import load_file

    from edgeformer.config import DecoderConfig
    from edgeformer.formats.checkpoint import Checkpoint, TokenizerSpec
    from edgeformer.formats.tensor_map import hf_to_gguf_name, transform_hf_tensor
    from edgeformer.quant.qtypes import QTensor
    meta = json.loads((path / "config.json").read_text())
    config = DecoderConfig.from_hf(meta)
    tensors = {}
    for name, a in load_file(path / "model.safetensors").items():
        g = hf_to_gguf_name(config.arch, name)
        if g is not None:
            tensors[g] = QTensor.from_array(np.ascontiguousarray(transform_hf_tensor(config, g, a)))
    return Checkpoint(path=path, format="hf", config=config, tensors=tensors, metadata=meta,
                      tokenizer=TokenizerSpec())


def write_gguf_reference(hf_dir: Path, out: Path, f16: bool) -> Path:
    """A GGUF file of the HF model written by the `gguf` package's GGUFWriter (llama.cpp's
    own writer) from `DecoderConfig.to_gguf()` and the tensor_map tensors; 2-D matrices in
    F16 when `f16` (llama.cpp's `--outtype f16` keeps 1-D tensors F32)."""
    import gguf

    from edgeformer.formats.tensor_map import extra_gguf_tensors
    from edgeformer.quant import dequantize
    ck = checkpoint_from_hf_dir(hf_dir)
    md = ck.config.to_gguf()
    w = gguf.GGUFWriter(str(out), md.pop("general.architecture"))
    for k, v in md.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, list(v))
    arrays = {n: dequantize(ck.tensors[n]) for n in ck.tensors}
    arrays.update(extra_gguf_tensors(ck.config))
    for n, a in arrays.items():
        a = np.asarray(a, dtype=np.float32)
        w.add_tensor(n, a.astype(np.float16) if f16 and a.ndim == 2 else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def convert_gguf(hf_dir: Path, out: Path, qtype: str) -> Path:
    """The HF model converted by `edgeformer.formats.convert` (F32 or F16)."""
    import warnings

    from edgeformer.formats.convert import convert
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no tokenizer.json.*")
        convert(hf_dir, out, qtype)
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (b the reference)."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


def prompt(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed + n).integers(0, VOCAB, n)
