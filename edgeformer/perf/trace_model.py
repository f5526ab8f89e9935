"""Price a decoder without its weights: run the real `Decoder.forward` on a null backend.

The null backend (`backends/null.py`, like tinygrad's `ops_null`) runs the whole pipeline
but computes nothing: each kernel returns zeros of the op's output shape. Weights are
shape-only stand-ins carrying qtype, shape and byte size. The decoder code, its KV cache
and the `Tracer` are the real ones, so the priced op list *is* the executed op list:

    cfg = DecoderConfig(...)                      # or shape_checkpoint("model.gguf")
    trace = trace_decoder(cfg, prompt_len=128, qtype="Q4_0")
    trace.prefill, trace.decode                   # lists of backends.trace.OpRecord

KV-cache bytes come from `kv_cache_bytes`, which follows `models/cache.py`'s growth
policy (initial 256 positions, doubling, capped at max_seq_len) to the byte.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.backends.base import backend_class, backend_names, default_backend_name
from edgeformer.backends.null import NullBackend
from edgeformer.backends.trace import OpRecord, Tracer
from edgeformer.config import DecoderConfig
from edgeformer.errors import ConfigError, InputError, UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.checkpoint import Checkpoint, TokenizerSpec
from edgeformer.formats.synthetic import ShapeTensor, config_tensors
from edgeformer.formats.tensor_map import extra_gguf_tensors
from edgeformer.models.cache import KVCache
from edgeformer.models.decoder import DEFAULT_CACHE_LEN, Decoder
from edgeformer.models.shipped import resolve_model
from edgeformer.quant.qtypes import QTensor, QType

# models/cache.py's first allocation (KVCache(initial=256)); kv_cache_bytes mirrors it
KV_INITIAL = 256
KV_DTYPES = {"f32": np.float32, "f16": np.float16, "int8": np.int8}


class _ShapeTensors(Mapping[str, Any]):
    """name -> ShapeTensor, with real QTensors for the few tensors read as data (rope)."""

    def __init__(self, shapes: dict[str, ShapeTensor], real: Mapping[str, QTensor]) -> None:
        self._shapes, self._real = shapes, real

    def __getitem__(self, name: str) -> Any:
        return self._real[name] if name in self._real else self._shapes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def shape_checkpoint(source: DecoderConfig | str | os.PathLike | Checkpoint,
                     qtype: QType | str = QType.Q4_0, **kw: Any) -> Checkpoint:
    """A Checkpoint whose tensors are shape-only: from a real file/Checkpoint (same names,
    qtypes and shapes as stored; rope tensors read for real) or from a DecoderConfig
    (`config_tensors(config, qtype, **kw)`)."""
    if isinstance(source, DecoderConfig):
        extra = {k: QTensor.from_array(v) for k, v in extra_gguf_tensors(source).items()}
        shapes = config_tensors(source, qtype, **kw)
        shapes.update({k: ShapeTensor(QType.F32, v.shape) for k, v in extra.items()})
        return Checkpoint(Path("<config>"), "shape", source, _ShapeTensors(shapes, extra), {},
                          TokenizerSpec())
    ckpt = source if isinstance(source, Checkpoint) else _load(source)
    infos = getattr(ckpt.tensors, "infos", {}) or {}
    shapes = {n: ShapeTensor(*infos[n]) if n in infos else
              ShapeTensor(ckpt.tensors[n].qtype, tuple(ckpt.tensors[n].shape)) for n in ckpt.tensors}
    rope = [n for n in shapes if n.startswith("rope_")]
    real = {n: ckpt.tensors[n] for n in rope}
    return Checkpoint(ckpt.path, "shape", ckpt.config, _ShapeTensors(shapes, real), ckpt.metadata,
                      ckpt.tokenizer, file_bytes=ckpt.file_bytes)


def _load(path: str | os.PathLike) -> Checkpoint:
    return load_checkpoint(resolve_model(path))


@dataclass(frozen=True)
class ModelTrace:
    """Op lists of one prefill over `prompt_len` tokens and of one decode step at
    `context_len` cached positions (the step's token is position `context_len`)."""

    config: DecoderConfig
    prompt_len: int
    context_len: int
    prefill: list[OpRecord]
    decode: list[OpRecord]
    kv_dtype: str
    weight_bytes: int          # every stored tensor, as the file holds it
    kv_bytes: int              # KV cache allocation after the decode step
    weight_bytes_by_qtype: dict[str, int] = field(default_factory=dict)   # qtype name -> bytes
    fused_decode: bool = False   # the backend runs the decode step through its fused `decode_layers`

    @property
    def decode_dram_bytes(self) -> float:
        """Bytes of model state one decode step reads: `dram_bytes` summed over the step
        (every weight as stored, once; a tied embedding once, as the output head; one
        embedding row; norm vectors and biases; rope frequencies; the K/V attention
        reads, the step's own position included)."""
        return sum(dram_bytes(r) for r in self.decode)


def _act_operand_bytes(rec: OpRecord) -> float:
    """Bytes of a record's float32 activation operands (inputs only): everything but the
    weight / bias of a linear, the embedding table, norm vectors and attention's K/V."""
    def n(i: int) -> int:
        shape = rec.shapes[i] if len(rec.shapes) > i else None
        return int(np.prod(shape)) if shape is not None else 0
    if rec.op in ("linear", "attention"):
        return 4.0 * n(0)
    if rec.op == "embed":
        return 0.0
    if rec.op in ("add", "mul", "glu"):
        return 4.0 * (n(0) + n(1))
    return 4.0 * n(0)


def dram_bytes(rec: OpRecord) -> float:
    """The part of a record's traced bytes (`cost.bytes_read + bytes_written`, from the
    op's own cost function) that is model state in memory: weights, biases, norm vectors,
    embedding rows, cached K/V. The rest, float32 activations each op reads from the one
    before it and writes for the next (a few KiB per op at one token), stays in L1/L2
    and, on the cpu backend's fused decode path, in registers: outputs (activations, or
    the K/V append, which `update_and_fetch` does outside the op list) are not counted."""
    return max(0.0, float(rec.cost.bytes_read) - _act_operand_bytes(rec) - _ids_bytes(rec))


def _ids_bytes(rec: OpRecord) -> float:
    # embed reads its int64 token ids (8 bytes each) besides the table rows
    return 8.0 * int(np.prod(rec.shapes[1])) if rec.op == "embed" and len(rec.shapes) > 1 and rec.shapes[1] else 0.0


def fused_decode(model: Any, backend: str | None) -> bool:
    """Whether `backend` would run one-token steps of `model` (a Decoder, typically on
    the null backend, weight fusion mirrored) through its fused `decode_step`: asks the
    backend class's own `why_not_fused` about the model's block description (weights
    carry the file's qtypes; a qtype the backend dequantizes at load has no fused kernel
    either way)."""
    cls = backend_class(backend or default_backend_name())
    return bool(cls is not None and cls.fused_decode and cls.why_not_fused(model.stack) is None)


def backend_fuses(backend: str | None) -> bool:
    """Whether the Decoder fuses weights on `backend` (None: the fastest available one,
    what `edgeformer run` uses): it does when the backend `joins_weights`."""
    if backend is None:
        backend = default_backend_name()
    cls = backend_class(backend)
    if cls is None:
        raise UnsupportedError(f"unknown backend {backend!r}; known: {', '.join(backend_names())}")
    return bool(cls.joins_weights)


def null_decoder(ckpt: Checkpoint, backend: str | None = None) -> Any:
    """A `Decoder` over the null backend (weights are shape-only), executing the op list
    `backend` would (weight fusion included)."""
    return Decoder(ckpt, NullBackend(fuse=backend_fuses(backend)))


def _cache(model: Any, max_seq_len: int, kv_dtype: str) -> Any:
    c = model.config
    if kv_dtype == "f32":   # exactly what the runtime allocates
        return model.make_cache(max_seq_len)
    return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, max_seq_len, dtype=KV_DTYPES[kv_dtype])


def trace_decoder(source: DecoderConfig | str | os.PathLike | Checkpoint, prompt_len: int = 128,
                  context_len: int | None = None, qtype: QType | str = QType.Q4_0,
                  kv_dtype: str = "f32", max_seq_len: int | None = None,
                  last_only: bool = True, backend: str | None = None, batch: int = 1,
                  **kw: Any) -> ModelTrace:
    """Trace prefill (`prompt_len` tokens into an empty cache, logits of the last token
    only when `last_only`, as generation runs it) and one decode step after
    `context_len` cached tokens (default `prompt_len`) on the null backend.
    `batch` > 1: the decode step is `Decoder.forward_batch` over `batch` sequences, each
    with its own cache of `context_len` positions (`kv_bytes` is then all caches').
    `kv_dtype` is "f32" (the runtime's cache), "f16" or "int8" (priced only).
    `max_seq_len` sizes the cache (default: Decoder.make_cache's default, raised to fit).
    `backend`: whose op list to trace (weight fusion differs; default the fastest
    available). InputError when the lengths exceed the model context."""
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"kv_dtype {kv_dtype!r}; known: {', '.join(KV_DTYPES)}")
    ckpt = source if isinstance(source, Checkpoint) and source.format == "shape" else \
        shape_checkpoint(source, qtype, **kw)
    model = null_decoder(ckpt, backend)
    c = model.config
    ctx = prompt_len if context_len is None else context_len
    if prompt_len < 1 or ctx < 0:
        raise InputError(f"prompt_len must be >= 1 and context_len >= 0, got {prompt_len}, {ctx}")
    need = max(prompt_len, ctx + 1)
    if max_seq_len is None:
        max_seq_len = max(min(c.max_seq_len, DEFAULT_CACHE_LEN), need)
    if need > min(max_seq_len, c.max_seq_len):
        raise InputError(f"{need} positions exceed the context ({min(max_seq_len, c.max_seq_len)})")
    tracer = Tracer()
    cache = _cache(model, max_seq_len, kv_dtype)
    with tracer.attach(model.ops):
        model.forward(np.zeros(prompt_len, np.int64), cache, last_only=last_only)
    prefill = tracer.records
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    caches = [_cache(model, max_seq_len, kv_dtype) for _ in range(batch)]
    if ctx:   # fill the caches as a prefill would (same lengths and allocation), untraced
        kz = np.zeros((ctx, c.n_kv_heads, c.head_dim), caches[0].dtype)
        for cache in caches:
            for i in range(c.n_layers):
                cache.update_and_fetch(i, kz, kz)
    tracer = Tracer()
    with tracer.attach(model.ops):
        if batch == 1:
            model.forward(np.zeros(1, np.int64), caches[0], last_only=True)
        else:
            model.forward_batch([(np.zeros(1, np.int64), cache) for cache in caches], last_only=True)
    kv = sum(k.nbytes + v.nbytes for cache in caches for k, v in zip(cache.keys, cache.values))
    by_q: dict[str, int] = {}
    for t in ckpt.tensors.values():
        by_q[t.qtype.name] = by_q.get(t.qtype.name, 0) + t.nbytes
    return ModelTrace(c, prompt_len, ctx, prefill, tracer.records, kv_dtype, sum(by_q.values()), kv, by_q,
                      batch == 1 and kv_dtype == "f32" and fused_decode(model, backend))


def kv_capacity(appends: Sequence[int], max_seq_len: int, initial: int = KV_INITIAL) -> int:
    """Positions a `models.cache.KVCache` layer has allocated after appending chunks of
    `appends` positions in order: it starts at min(max_seq_len, initial) and, when a chunk
    does not fit, grows to min(max_seq_len, max(need, 2 x capacity)); so the allocation
    depends on the history, not only on the total."""
    cap, n = min(max_seq_len, initial), 0
    for t in appends:
        n += t
        if n > cap:
            cap = min(max_seq_len, max(n, 2 * cap))
    return cap


def kv_cache_bytes(config: DecoderConfig, n_positions: int | Sequence[int], max_seq_len: int | None = None,
                   kv_dtype: str = "f32") -> int:
    """Bytes a KVCache for `config` has allocated (keys + values, every layer) after
    `n_positions` were appended: an int (one chunk, e.g. a prefill) or the chunk sizes in
    order (a prefill then 1-token decode steps: [prompt, 1, 1, ...]). `max_seq_len` as
    passed to `make_cache` (default its default). Matches `models/cache.py` to the byte."""
    if max_seq_len is None:
        max_seq_len = min(config.max_seq_len, DEFAULT_CACHE_LEN)
    appends = [n_positions] if isinstance(n_positions, int) else list(n_positions)
    item = np.dtype(KV_DTYPES[kv_dtype]).itemsize
    per_pos = config.n_kv_heads * 2 * config.head_dim * item
    return config.n_layers * kv_capacity(appends, max_seq_len) * per_pos


def kv_bytes_read(config: DecoderConfig, n_positions: int, kv_dtype: str = "f32") -> int:
    """Bytes of keys and values one decode step reads when `n_positions` are cached
    (the step's own position included): the cached positions, not the allocation."""
    item = np.dtype(KV_DTYPES[kv_dtype]).itemsize
    return config.n_layers * n_positions * config.n_kv_heads * 2 * config.head_dim * item


def with_dims(config: DecoderConfig, **dims: Any) -> DecoderConfig:
    """`dataclasses.replace` that keeps layer_types consistent with n_layers."""
    if "n_layers" in dims and config.layer_types:
        dims.setdefault("layer_types", ())
    return replace(config, **dims)


def trace_decoder_repeated(config: DecoderConfig, prompt_len: int = 128, context_len: int | None = None,
                           qtype: QType | str = QType.Q4_0, kv_dtype: str = "f32",
                           max_seq_len: int | None = None, backend: str | None = None,
                           **kw: Any) -> ModelTrace:
    """`trace_decoder` for configs whose layers are all alike (no `layer_types`): trace
    a 2-layer copy and repeat layer 1's records for layers 2..n_layers-1. Gives the same
    records (op, name, layer, shapes, costs) as the full trace (a test holds it to that)
    at the cost of a 2-layer trace; the co-design search prices thousands of shapes."""
    if config.layer_types or config.n_layers <= 2:
        return trace_decoder(config, prompt_len, context_len, qtype, kv_dtype, max_seq_len, backend=backend, **kw)
    small = with_dims(config, n_layers=2)
    tr = trace_decoder(small, prompt_len, context_len, qtype, kv_dtype, max_seq_len, backend=backend, **kw)
    n = config.n_layers
    by_q = dict(tr.weight_bytes_by_qtype)
    for name, t in config_tensors(small, qtype, **kw).items():
        if name.startswith("blk.1."):
            by_q[t.qtype.name] = by_q.get(t.qtype.name, 0) + (n - 2) * t.nbytes
    return replace(tr, config=config, prefill=_repeat(tr.prefill, n), decode=_repeat(tr.decode, n),
                   weight_bytes=sum(by_q.values()), kv_bytes=tr.kv_bytes * n // 2,
                   weight_bytes_by_qtype=by_q)


def _repeat(records: list[OpRecord], n_layers: int) -> list[OpRecord]:
    head = [r for r in records if r.layer is None and r.index < _first(records, 0)]
    l1 = [r for r in records if r.layer == 1]
    body = [r for r in records if r.layer in (0, 1)]
    tail = [r for r in records if r.layer is None and r.index > _first(records, 1)]
    out = head + body + [replace(r, layer=i) for i in range(2, n_layers) for r in l1] + tail
    return [replace(r, index=i) for i, r in enumerate(out)]


def _first(records: list[OpRecord], layer: int) -> int:
    return next(r.index for r in records if r.layer == layer)
