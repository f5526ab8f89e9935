"""Write random-weight GGUF files for a `DecoderConfig` (a co-design candidate, or a
validation model at a real model's dimensions), quantized with our quantizer.

The file is a complete llama.cpp-style GGUF: `config.to_gguf()` metadata, every tensor
`formats.validate.expected_tensors` lists (tied configs omit `output.weight`), rope
tensors llama.cpp derives from the config, and a byte-level toy vocabulary so the
tokenizer loads. Matrices are N(0, 0.02) (norm weights 1) so activations stay finite;
only 64 rows of each matrix are quantized and then tiled, because speed does not depend
on values and the reference quantizers are slow.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeformer.config import DecoderConfig
from edgeformer.quant.qtypes import QTensor, QType

TILE_ROWS = 64


def _loader(shape: tuple[int, ...], qtype: QType, rng: np.random.Generator) -> Callable[[], QTensor]:
    """What writes one tensor: ones for a vector (norms), a random matrix otherwise."""
    if len(shape) == 1:
        return lambda: QTensor.from_array(np.ones(shape[0], np.float32))
    return lambda: _matrix(shape, qtype, rng)


def _matrix(shape: tuple[int, ...], qtype: QType, rng: np.random.Generator) -> QTensor:
    from edgeformer.quant import quantize
    n, k = shape
    rows = min(n, TILE_ROWS)
    q = quantize((rng.standard_normal((rows, k)) * 0.02).astype(np.float32), qtype)
    data = np.tile(q.data.reshape(rows, -1), (-(-n // rows), 1))[:n].reshape(-1)
    return QTensor(np.ascontiguousarray(data), qtype, (n, k))


def _vocab_metadata(vocab_size: int) -> dict:
    """A gpt2-style byte vocabulary padded with dummy tokens, so tokenizers load."""
    tokens = [f"<t{i}>" for i in range(vocab_size)]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [1] * vocab_size, "tokenizer.ggml.merges": [],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": min(1, vocab_size - 1)}


def write_random_gguf(config: DecoderConfig, path: str | os.PathLike, qtype: QType | str = QType.Q4_0,
                      seed: int = 0, embed_qtype: QType | str | None = None,
                      with_vocab: bool = True) -> Path:
    """Write a random-weight GGUF for `config` with matrices in `qtype` (rows whose
    length is not a multiple of its block fall back to F16, as in
    `perf.trace_model.config_tensors`). Returns the path. ConfigError on an unknown
    qtype; whatever `config.to_gguf()` raises for configs GGUF cannot express."""
    from edgeformer.formats.gguf import TensorToWrite, write_gguf
    from edgeformer.formats.tensor_map import extra_gguf_tensors
    from edgeformer.perf.trace_model import config_tensors
    path = Path(path)
    rng = np.random.default_rng(seed)
    md = dict(config.to_gguf())
    md["general.name"] = f"edgeformer random {config.arch} {config.n_layers}x{config.dim}"
    if with_vocab:
        md.update(_vocab_metadata(config.vocab_size))
    tensors = []
    for name, st in config_tensors(config, qtype, embed_qtype=embed_qtype).items():
        tensors.append(TensorToWrite(name, st.qtype, st.shape, _loader(st.shape, st.qtype, rng)))
    for name, arr in extra_gguf_tensors(config).items():
        tensors.append(TensorToWrite(name, QType.F32, arr.shape, lambda a=arr: QTensor.from_array(a)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(path, md, tensors)
    return path


def build_candidate(cand: object, out: str | os.PathLike, max_seq_len: int = 2048,
                    backend: str | None = None) -> Path:
    """Write a co-design candidate's random-weight GGUF under `out` (named after its
    shape, qtype), load it with `backend` (default: the default backend) and run a
    4-token forward. RuntimeError when the logits come out wrong."""
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    c = cand.config(max_seq_len)                       # type: ignore[attr-defined]
    tag = cand.label().split(" kv:")[0].replace("/", "-").replace(" ", "_")   # type: ignore[attr-defined]
    path = write_random_gguf(c, Path(out) / f"codesign_{tag}.gguf", cand.qtype)   # type: ignore[attr-defined]
    model = Decoder(load_checkpoint(path), get_backend(backend))
    logits = model.forward(np.arange(4), model.make_cache(16))
    if logits.shape != (4, c.vocab_size) or not np.isfinite(logits).all():
        raise RuntimeError(f"built model {path} produced bad logits {logits.shape}")
    return path
