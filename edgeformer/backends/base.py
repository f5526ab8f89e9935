"""Backend interface, the backend registry, and `Ops`: the facade models call.

A backend is a small vtable: `kernels` (op name -> callable with the op's reference
signature, weights replaced by the backend's prepared handles), `prepare_weight` (repack a
QTensor once at load), `unsupported` (reasons it cannot run a call; [] = supported).
A missing op falls back to `kernels/`' reference, with one warning naming it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeformer.errors import UnsupportedError
from edgeformer.kernels import OPS
from edgeformer.quant import dequantize
from edgeformer.quant.qtypes import QTensor, QType


@dataclass
class Weight:
    """A weight as models hold it: the source QTensor's metadata plus the backend's
    prepared handle. Cost functions read `shape`/`nbytes`/`qtype`; kernels get `handle`."""

    name: str
    qtype: QType
    shape: tuple[int, ...]
    nbytes: int
    handle: Any
    source: QTensor | None = None   # kept only where a reference fallback may need it


class Backend:
    name: ClassVar[str] = "base"
    kernels: dict[str, Callable[..., Any]] = {}

    @classmethod
    def available(cls) -> str | None:
        """None if usable on this machine, else why not."""
        return None

    # True for backends that compile kernels on first use (runtime/warmup.py runs them
    # before anything is timed)
    compiles: ClassVar[bool] = False
    # elements from which the row-wise kernels (norms, rope, gated activations) run
    # threaded: compiled kernels of their own, which the warm-up's prefill must reach (0: none)
    threaded_min: int = 0
    # how quantized weights meet activations (the cpu backend's setting, `--activations`);
    # float32 elsewhere
    activations: str = "f32"

    # Optional abilities, declared here and read by models, the runtime and perf (never
    # probed with hasattr). A backend that sets one implements the methods it names;
    # perf reads them from the class, so an instance may only narrow them.
    # joins_weights: `concat_weights` joins q|k|v and gate|up into one weight each
    joins_weights: bool = False
    # fused_decode: `decode_step` runs all blocks of a one-token step (`blocks.DecoderStack`)
    fused_decode: bool = False
    # batched rows: a linear's output rows are bit-identical for any row count up to
    # this many rows (0: not; `row_invariant.py` then runs fixed row blocks)
    row_invariant_rows: int = 0
    # paged_attention: attention takes `kernels.kv_pages.PagedKV` keys and values, and
    # `PagedKVBatch` ones (several sequences' query rows in one call, q_pos given), and reads
    # the pages in place (otherwise the runtime gathers them into contiguous float32)
    paged_attention: bool = False
    # device_memory: kernels take `to_device` arrays and return arrays `to_host` reads back
    device_memory: bool = False
    # device_cache: `make_cache` gives a sequence's KV cache in device memory (the
    # contract of models/cache.py's KVCache), which `decode_step` fills and reads in place
    device_cache: bool = False

    def kernels_cached(self) -> bool:
        """Whether the compiled kernels are on disk already (False: the first use compiles)."""
        return True

    def after_forward(self) -> None:
        """Called by models after each forward pass: housekeeping (the cpu backend hands
        the compiler's code pages back once its kernels are loaded). Default: nothing."""

    def describe(self) -> str:
        """One line for start-up logs: the backend and the settings it computes with."""
        return self.name

    def prepare_weight(self, qt: QTensor, name: str = "") -> Weight:
        """Turn a matmul/embedding weight into this backend's layout, once, at load."""
        raise NotImplementedError

    def prepare_vector(self, qt: QTensor) -> np.ndarray:
        """Small float vectors (norm weights, biases) as float32 host arrays."""
        return np.ascontiguousarray(dequantize(qt), dtype=np.float32)

    def concat_weights(self, ws: list[Weight], name: str = "") -> Weight | None:
        """One weight whose rows are `ws`' rows in order, or None when they cannot be
        joined (`joins_weights` backends)."""
        return None

    @classmethod
    def why_not_fused(cls, stack: Any, activations: str | None = None) -> str | None:
        """None if `decode_step` can run `stack` (a `blocks.DecoderStack`; its weights'
        qtypes as this backend prepares them), with the activation setting `activations`
        (None: the default), else the reason. A classmethod: perf asks it of a model
        traced on the null backend."""
        return f"backend {cls.name!r} has no fused decode step"

    def decode_step(self, stack: Any, x: np.ndarray, pos: int, cache: Any,
                    ropes: dict[str, tuple[np.ndarray, float]]) -> np.ndarray | None:
        """All blocks of `stack` for one token (`fused_decode` backends): x (1, dim) float32
        at position `pos`, keys/values appended to `cache` (`update_and_fetch` contract),
        ropes {"full", "sliding"} -> (inv_freq, mscale) for this step. The new x, or None
        when the stack is not covered (the caller then runs the op-by-op path)."""
        return None

    def make_cache(self, n_layers: int, n_kv_heads: int, head_dim: int, max_seq_len: int) -> Any:
        """One sequence's KV cache of up to `max_seq_len` positions in device memory
        (`device_cache` backends)."""
        raise NotImplementedError(f"backend {self.name!r} has no device cache")

    def measure_ceilings(self) -> dict[str, Any] | None:
        """The memory bandwidth and compute peak of the device this backend's kernels run
        on, measured there, for perf's calibration: {"device": name, "mem_bw": B/s, "fp32":
        FLOP/s, "bf16": FLOP/s or None, "mem_bytes": B, "how": how it was measured}. None
        (the default): the kernels run on the host CPU, whose ceilings perf measures itself."""
        return None

    def to_device(self, a: np.ndarray) -> Any:
        """A host array as the kernels take it (`device_memory` backends; else itself)."""
        return a

    def to_host(self, a: Any) -> np.ndarray:
        """A kernel's output as a host numpy array."""
        return np.asarray(a)

    def unsupported(self, op: str, **attrs: Any) -> list[str]:
        return [] if op in self.kernels else [f"{self.name} has no kernel for {op}"]

    def kernel(self, op: str) -> Callable[..., Any]:
        """The backend's kernel for `op`, or (one RuntimeWarning per op and backend) the
        numpy reference, which takes `Weight`s (`Ops` passes weights whole to it)."""
        k = self.kernels.get(op)
        if k is not None:
            return k
        if op not in OPS:
            raise UnsupportedError(f"unknown op {op!r}; known: {', '.join(OPS)}")
        fallbacks = self.__dict__.setdefault("_fallbacks", {})
        if op not in fallbacks:
            warnings.warn(f"backend {self.name!r} has no {op!r} kernel: using the numpy reference",
                          RuntimeWarning, stacklevel=4)   # the model line calling ops.<op>(...)
            ref = OPS[op].reference

            def fallback(*args: Any, **kw: Any) -> Any:
                return ref(*(_reference_operand(op, a) for a in args), **kw)
            fallbacks[op] = fallback
        return fallbacks[op]


def _reference_operand(op: str, a: Any) -> Any:
    """What the reference gets for an operand: a Weight's source QTensor (or its handle,
    when the backend's handle is a QTensor), anything else as it is."""
    if not isinstance(a, Weight):
        return a
    if a.source is not None:
        return a.source
    if isinstance(a.handle, QTensor):
        return a.handle
    raise UnsupportedError(f"{op} falls back to the numpy reference, which needs weight {a.name!r} as a "
                           f"QTensor: keep Weight.source in prepare_weight, or use a QTensor handle")


class Ops:
    """The facade models call: `ops.linear(x, w, b, name="attn_q", layer=3)`.

    Each call is tagged (op, name, layer) and offered to `observers` (the tracer that
    prices it with `OpSpec.cost`, the profiler that replays it) before it runs, so the op
    list that runs a model is the one that is timed and priced."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.observers: list[Callable[[str, tuple, dict, str | None, int | None], None]] = []

    def __call__(self, op: str, *args: Any, name: str | None = None, layer: int | None = None, **attrs: Any) -> Any:
        for obs in self.observers:
            obs(op, args, attrs, name, layer)
        kernel = self.backend.kernel(op)
        if op not in self.backend.kernels:          # the reference fallback takes Weights whole
            return kernel(*args, **attrs)
        return kernel(*(a.handle if isinstance(a, Weight) else a for a in args), **attrs)

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op.startswith("_") or op not in OPS:
            raise AttributeError(op)
        return lambda *args, **kw: self(op, *args, **kw)


# name -> "module:Class" of the built-in backends, imported on first use (so this module
# imports none of the backends it lists)
BUILTIN_BACKENDS = {"numpy": "edgeformer.backends.numpy_ref:NumpyBackend",
                    "cpu": "edgeformer.backends.cpu:CpuBackend",
                    "cuda": "edgeformer.backends.cuda:CudaBackend"}
# the entry-point group through which a separately installed package adds a backend:
#   [project.entry-points."edgeformer.backends"]
#   opencl = "edgeformer_opencl:OpenCLBackend"
ENTRY_POINT_GROUP = "edgeformer.backends"
_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(name: str, factory: type[Backend]) -> None:
    """Register a backend in this process (a plugin package is found through
    ENTRY_POINT_GROUP instead, without being imported first)."""
    _BACKENDS[name] = factory


def _plugins() -> dict[str, Any]:
    """name -> entry point of the installed backend plugins (not loaded)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def backend_class(name: str) -> type[Backend] | None:
    """The factory registered under `name`: registered in this process, built in, or a
    plugin's entry point (imported on first use); None if no backend has that name."""
    if name not in _BACKENDS:
        if name in BUILTIN_BACKENDS:
            module, cls = BUILTIN_BACKENDS[name].split(":")
            _BACKENDS[name] = getattr(importlib.import_module(module), cls)
        else:
            ep = _plugins().get(name)
            if ep is not None:
                try:
                    _BACKENDS[name] = ep.load()
                except Exception as e:  # noqa: BLE001 - a broken plugin is named, not a traceback
                    raise UnsupportedError(f"backend plugin {name!r} ({ep.value}) failed to load: "
                                           f"{type(e).__name__}: {e}") from e
    return _BACKENDS.get(name)


# the backend used when none is named: the first of these that runs here (fastest first)
PREFERENCE = ("cuda", "cpu", "numpy")


def default_backend_name() -> str:
    """The one default of `load()`, every command and the server: the first backend of
    PREFERENCE that is registered and whose `available()` is None. The numpy reference
    (always available) is the last resort; falling back to it says why on stderr, once."""
    skipped: list[str] = []
    for name in PREFERENCE:
        factory = backend_class(name)
        if factory is None:
            continue
        why = factory.available() if isinstance(factory, type) and issubclass(factory, Backend) else None
        if why is None:
            if skipped and name == "numpy" and not _FALLBACK_SAID:
                _FALLBACK_SAID.append(True)
                print(f"edgeformer: {'; '.join(skipped)}: using the numpy reference backend (slow)",
                      file=sys.stderr, flush=True)
            return name
        if name != "cuda":          # no GPU is the usual case, not news
            skipped.append(f"{name} backend unavailable ({why})")
    return "numpy"


_FALLBACK_SAID: list[bool] = []


def get_backend(name: str | None = None, activations: str | None = None) -> Backend:
    """Backend by short name ("numpy", "cpu", "cuda"; None = `default_backend_name()`);
    errors list the known ones. `activations` (None = the backend's default) is the cpu
    backend's activation setting (int16 / int8 / f32, see backends/cpu/act_quant.py);
    other backends compute in float32 and accept only None, "auto" or "f32"."""
    if name is None:
        name = default_backend_name()
    factory = backend_class(name)
    if factory is None:
        raise UnsupportedError(f"unknown backend {name!r}; known: {', '.join(backend_names())}")
    if activations in (None, "auto"):
        return factory()
    if name != "cpu":
        if activations == "f32":
            return factory()
        raise UnsupportedError(f"backend {name!r} computes in float32; --activations {activations} is for cpu")
    return factory(activations=activations)  # type: ignore[call-arg]  # the cpu backend's setting


def backend_names() -> list[str]:
    """Names of the registered, built-in and plugin backends, sorted."""
    return sorted({*_BACKENDS, *BUILTIN_BACKENDS, *_plugins()})
