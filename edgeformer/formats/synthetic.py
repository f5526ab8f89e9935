"""Synthetic checkpoints: the tensors a `DecoderConfig` implies, filled with random
weights, in memory (`synthetic_checkpoint`) or as a GGUF file (`write_random_gguf`).

The file is a complete llama.cpp-style GGUF: `config.to_gguf()` metadata, every tensor
`formats.validate.expected_tensors` lists (tied configs omit `output.weight`), rope
tensors llama.cpp derives from the config, and a byte-level toy vocabulary so the
tokenizer loads. Matrices are N(0, std) (norm weights 1) so activations stay finite;
only `TILE_ROWS` rows of each matrix are quantized and then tiled, because speed does not
depend on values and the reference quantizers are slow.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from edgeformer.config import DecoderConfig
from edgeformer.errors import ConfigError
from edgeformer.formats.checkpoint import Checkpoint, TokenizerSpec
from edgeformer.formats.gguf import TensorToWrite, write_gguf
from edgeformer.formats.tensor_map import extra_gguf_tensors
from edgeformer.formats.validate import expected_tensors
from edgeformer.quant import quantize
from edgeformer.quant.qtypes import QTensor, QType, nbytes

TILE_ROWS = 64


@dataclass(frozen=True)
class ShapeTensor:
    """A tensor's qtype, shape and byte size, without data (what pricing needs)."""

    qtype: QType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return nbytes(self.qtype, self.shape)


def as_qtype(q: QType | str) -> QType:
    """`q` as a QType; ConfigError naming the known ones for an unknown name."""
    try:
        return q if isinstance(q, QType) else QType[str(q).upper()]
    except KeyError:
        raise ConfigError(f"unknown qtype {q!r}; known: {', '.join(t.name for t in QType)}") from None


def config_tensors(config: DecoderConfig, qtype: QType | str = QType.Q4_0,
                   embed_qtype: QType | str | None = None,
                   output_qtype: QType | str | None = None) -> dict[str, ShapeTensor]:
    """The tensors a config implies (`formats.validate.expected_tensors`): 2-D matrices in
    `qtype`, the token embedding in `embed_qtype` and an untied output in `output_qtype`
    (both default to `qtype`), 1-D vectors in F32 (as llama.cpp's converter writes them).
    A matrix whose row length is not a multiple of the qtype's block falls back to F16,
    as llama.cpp's quantizer does. Tied configs have no `output.weight`."""
    main = as_qtype(qtype)
    out: dict[str, ShapeTensor] = {}
    for name, shape in expected_tensors(config).items():
        if name == "output.weight" and config.tie_embeddings:
            continue
        q = (QType.F32 if len(shape) == 1 else
             as_qtype(embed_qtype or main) if name == "token_embd.weight" else
             as_qtype(output_qtype or main) if name == "output.weight" else main)
        if len(shape) > 1 and shape[-1] % q.block_size:
            q = QType.F16
        out[name] = ShapeTensor(q, tuple(shape))
    return out


def random_matrix(qtype: QType | str, n: int, k: int, rng: np.random.Generator | None = None,
                  std: float = 0.02) -> QTensor:
    """A random (n, k) QTensor in `qtype`: `TILE_ROWS` rows of N(0, std) quantized, then
    tiled to n rows (`rng` default: seed 0)."""
    qtype = as_qtype(qtype)
    rng = rng if rng is not None else np.random.default_rng(0)
    rows = min(n, TILE_ROWS)
    q = quantize((rng.standard_normal((rows, k)) * std).astype(np.float32), qtype)
    data = np.tile(q.data.reshape(rows, -1), (-(-n // rows), 1))[:n].reshape(-1)
    return QTensor(np.ascontiguousarray(data), qtype, (n, k))


def synthetic_checkpoint(config: DecoderConfig, qtype: QType | str,
                         make_weight: Callable[[QType, int, int], QTensor] = random_matrix) -> Checkpoint:
    """An in-memory Checkpoint of random weights for `config` (matrices from
    `make_weight(qtype, n, k)`, default `random_matrix`; vectors ones): no file, no
    quantizer pass over every row."""
    tensors: dict[str, QTensor] = {}
    for name, st in config_tensors(config, qtype).items():
        if len(st.shape) == 1:
            tensors[name] = QTensor.from_array(np.ones(st.shape, np.float32))
        else:
            tensors[name] = make_weight(st.qtype, st.shape[0], st.shape[1])
    tensors.update({k: QTensor.from_array(v) for k, v in extra_gguf_tensors(config).items()})
    return Checkpoint(Path("<synthetic>"), "gguf", config, tensors, {}, TokenizerSpec())


def _loader(shape: tuple[int, ...], qtype: QType, rng: np.random.Generator) -> Callable[[], QTensor]:
    """What writes one tensor: ones for a vector (norms), a random matrix otherwise."""
    if len(shape) == 1:
        return lambda: QTensor.from_array(np.ones(shape[0], np.float32))
    return lambda: random_matrix(qtype, shape[0], shape[1], rng)


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
    length is not a multiple of its block fall back to F16, as in `config_tensors`).
    Returns the path. ConfigError on an unknown qtype; whatever `config.to_gguf()`
    raises for configs GGUF cannot express."""
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
        tensors.append(TensorToWrite(name, QType.F32, arr.shape, partial(QTensor.from_array, arr)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(path, md, tensors)
    return path
