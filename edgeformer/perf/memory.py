"""Peak memory of running a decoder: weights + KV cache + activations + workspace (+ the
process baseline when predicting a host process's RSS).

- weights: the stored tensor bytes times a per-backend residency factor (the numpy
  backend holds every matrix as float32; the cpu backend repacks, about 1x). On a
  catalog device the factor is 1: an on-device runtime keeps the file's bytes.
- KV cache: `trace_model.kv_cache_bytes`, the allocation `models/cache.py` makes.
- activations: the largest live set of the traced prefill: the residual stream plus the
  biggest op's activation operands and output (weights and the KV cache excluded).
- workspace: what a backend's kernels allocate beyond their outputs; for the numpy
  reference, attention's (heads, T, S) score, probability and mask arrays.

The host baseline (interpreter, numpy, numba, compiled kernels) and the cpu backend's
residency factor are measured by `calibrate_memory` in a fresh process on a calibration
model that `validate` never uses.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeformer.backends.trace import OpRecord
from edgeformer.config import DecoderConfig
from edgeformer.formats.synthetic import write_random_gguf
from edgeformer.formats.validate import expected_tensors
from edgeformer.perf.calibrate import cache_path
from edgeformer.perf.runner import run_worker
from edgeformer.perf.trace_model import ModelTrace, kv_cache_bytes, trace_decoder

# Resident bytes per stored weight byte when nothing is measured: an on-device runtime
# maps the file (llama.cpp mmap) and holds each weight once.
DEFAULT_RESIDENCY = 1.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes, by component; `total` is their sum."""

    weights: float
    kv_cache: float
    activations: float
    workspace: float
    baseline: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.workspace + self.baseline


def _activation_bytes(rec: OpRecord) -> float:
    """Bytes of a record's activation operands and output: weights (qtyped operands),
    norm vectors and the attention's K/V (the cache) are excluded."""
    shapes = rec.shapes
    if rec.op == "linear":
        return 4.0 * _n(shapes[0]) + rec.cost.bytes_written
    if rec.op == "attention":
        return 4.0 * _n(shapes[0]) + rec.cost.bytes_written
    if rec.op == "embed":
        return rec.cost.bytes_written
    first = shapes[0] if shapes else None
    second = shapes[1] if len(shapes) > 1 and rec.op in ("add", "mul", "glu") else None
    return 4.0 * (_n(first) + _n(second)) + rec.cost.bytes_written


def _n(shape: tuple[int, ...] | None) -> int:
    out = 1
    for d in shape or ():
        out *= d
    return out if shape is not None else 0


def activation_peak(records: list[OpRecord], dim: int) -> float:
    """Largest live activation set of an op list: the (T, dim) float32 residual stream
    plus the biggest op's activation operands and output."""
    if not records:
        return 0.0
    t = max(_n(r.shapes[1]) for r in records if r.op == "embed") if any(r.op == "embed" for r in records) else 1
    return 4.0 * t * dim + max(_activation_bytes(r) for r in records)


def workspace_bytes(records: list[OpRecord], backend: str) -> float:
    """Kernel scratch beyond outputs: the numpy reference's attention materialises
    scores, probabilities and the mask for all heads, (Hq, T, S) x (4 + 4 + 1) bytes, and
    a (T, S) int64 position difference. Numba kernels use per-task O(S) scratch and the
    int8 copy of x in `linear` (T x K bytes): counted as 0."""
    if backend != "numpy":
        return 0.0
    best = 0.0
    for r in records:
        if r.op == "attention":
            q, k = r.shapes[0], r.shapes[1]
            assert q is not None and k is not None      # attention's q and k are arrays
            t, hq, _ = q
            s = k[0]
            best = max(best, hq * t * s * 9.0 + t * s * 8.0)
    return best


@dataclass(frozen=True)
class MemoryCalibration:
    """Host process RSS model for one backend. Two phases peak separately:
    loading (`load_baseline` + the file's pages, mapped while the backend repacks, + the
    backend's copy) and running (`baseline`, kernels loaded, + the copy + KV +
    activations). `residency` is the backend's resident bytes per stored weight byte,
    per weight qtype (measured on the calibration model written in that qtype)."""

    backend: str
    baseline: float
    residency: dict[str, float]
    source: str = ""
    load_baseline: float = 0.0      # RSS with the backend imported, before any kernel ran
    act_factor: float = 1.0         # measured live set of a long prefill / traced activation peak

    def factor(self, qtype: str) -> float:
        """Residency of `qtype`; the mean of the measured ones for another qtype."""
        return self.residency.get(qtype, sum(self.residency.values()) / max(len(self.residency), 1))


def weight_resident_bytes(trace: ModelTrace, backend: str | None, calib: MemoryCalibration | None) -> float:
    """Resident weight bytes: the numpy backend dequantizes every weight to float32
    (residency x 4 bytes per parameter); other backends hold residency[qtype] x stored
    bytes of each qtype; without a calibration, the stored bytes (DEFAULT_RESIDENCY)."""
    if calib is None:
        return DEFAULT_RESIDENCY * trace.weight_bytes
    if backend == "numpy":
        return calib.factor("F32") * 4.0 * _params(trace)
    by_q = trace.weight_bytes_by_qtype or {"Q8_0": trace.weight_bytes}
    # a backend that keeps views of the mapped file (cpu: F16) copies ~nothing, but the
    # file pages stay resident through the views: at least 1x while running
    return sum(max(1.0, calib.factor(q)) * b for q, b in by_q.items())


def weight_copy_bytes(trace: ModelTrace, calib: MemoryCalibration) -> float:
    """Bytes the backend copies out of the mapped file while loading (residency x
    stored bytes per qtype; ~0 for qtypes it keeps as views of the file)."""
    by_q = trace.weight_bytes_by_qtype or {"Q8_0": trace.weight_bytes}
    return sum(max(0.0, calib.factor(q)) * b for q, b in by_q.items())


def _params(trace: ModelTrace) -> int:
    c = trace.config
    total = 0
    for name, shape in expected_tensors(c).items():
        if name == "output.weight" and c.tie_embeddings:
            continue
        total += _n(shape)
    return total


def estimate(trace: ModelTrace, backend: str | None = None,
             calib: MemoryCalibration | None = None) -> MemoryEstimate:
    """Peak memory of prefilling `trace.prompt_len` tokens then decoding to
    `trace.context_len + 1` positions. With `calib` (a host backend) the baseline RSS is
    added and weights use its residency; without, an on-device runtime is assumed."""
    w = weight_resident_bytes(trace, backend, calib)
    act = max(activation_peak(trace.prefill, trace.config.dim), activation_peak(trace.decode, trace.config.dim))
    if calib is not None:
        act *= calib.act_factor
    ws = workspace_bytes(trace.prefill + trace.decode, backend or "")
    est = MemoryEstimate(w, float(trace.kv_bytes), act, ws, calib.baseline if calib else 0.0)
    if calib is not None and calib.load_baseline:
        copy = weight_copy_bytes(trace, calib)
        load = calib.load_baseline + trace.weight_bytes + copy     # file pages + backend copy
        if load > est.total:   # the load phase peaks: report it as weights + baseline
            return MemoryEstimate(trace.weight_bytes + copy, 0.0, 0.0, 0.0, calib.load_baseline)
    return est


# ------------------------------------------------------------------ host calibration

MEMORY_QTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "F16")
CALIB_MODEL: dict[str, Any] = dict(arch="llama", vocab_size=8192, dim=768, n_layers=6, n_heads=12, n_kv_heads=4,
                                   head_dim=64, ffn_dim=2048, max_seq_len=2048)   # ~40M params; not a validation model


TINY_MODEL: dict[str, Any] = dict(arch="llama", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                  head_dim=16, ffn_dim=128, max_seq_len=256)   # warms every kernel, ~no bytes


def _run_probe(backend: str, path: str, prompt: int = 16) -> dict[str, Any]:
    """Peak RSS of `runner.measure_worker` (load, warm up, `prompt`-token prefill,
    decode) on `path` in a fresh process: the same code path the validation measures."""
    return run_worker(Path(path), backend, prompt, prompt + 48, True, timeout=600)


def _tiny_probe(backend: str) -> dict[str, Any]:
    """`_run_probe` on a model with ~no bytes (`TINY_MODEL`), twice, the second kept: the
    first run after a kernel source changed compiles the kernels (Numba's on-disk cache is
    dropped then) and LLVM's memory would count (measured: +50 MiB); the second loads
    them, as `validate`'s and a user's runs do."""
    with tempfile.TemporaryDirectory() as d:
        tiny = Path(d) / "tiny.gguf"
        write_random_gguf(DecoderConfig(**TINY_MODEL), tiny, "Q8_0", with_vocab=False)
        _run_probe(backend, str(tiny))
        return _run_probe(backend, str(tiny))


def runtime_floor_bytes(backend: str = "cpu") -> int:
    """The runtime floor: peak RSS of a fresh process that imports edgeformer, makes
    `backend` and runs a model with ~no bytes (prefill + decode), i.e. the interpreter +
    numpy + numba + the compiled kernels. What any model's peak adds to."""
    return int(_tiny_probe(backend)["peak_rss"])


def calibrate_memory(backend: str, refresh: bool = False, cache_dir: str | Path | None = None,
                     clock: str = "wall") -> MemoryCalibration:
    """Fit the host RSS model in fresh processes running `runner.measure_worker`:
    a tiny model gives the baselines (backend imported; kernels warm); the calibration
    model `CALIB_MODEL`, written in each of `MEMORY_QTYPES`, gives the backend's resident
    bytes per stored byte; the same model with a 1024-token prefill gives the factor
    between the measured and the traced activation peak (allocator and kernel scratch).
    Cached next to the roofline calibration of the same setup (`clock` and thread count;
    about a minute when it measures)."""
    path = cache_path(backend, cache_dir, clock).with_suffix(".memory.json")
    if not refresh and path.is_file():
        try:
            return MemoryCalibration(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = _tiny_probe(backend)             # the runtime floor (runtime_floor_bytes)
    base, load_base = probe["peak_rss"], probe["rss_backend"]
    cfg = DecoderConfig(**CALIB_MODEL)
    residency: dict[str, float] = {}
    act_factor = 1.0
    qtypes = ("F32",) if backend == "numpy" else MEMORY_QTYPES
    for q in qtypes:
        gguf = path.with_name(path.stem + f".calib_{q}.gguf")
        write_random_gguf(cfg, gguf, "Q8_0" if q == "F32" else q, with_vocab=False)
        try:
            r = _run_probe(backend, str(gguf))
            tr = trace_decoder(gguf, prompt_len=16, context_len=17, max_seq_len=64)
            stored = 4.0 * _params(tr) if backend == "numpy" else tr.weight_bytes
            # loaded = import baseline + the mapped file's pages + the backend's copy
            residency[q] = (r["rss_loaded"] - r["rss_backend"] - tr.weight_bytes) / max(stored, 1.0)
            if q == qtypes[0]:
                long = _run_probe(backend, str(gguf), 1024)
                trl = trace_decoder(gguf, prompt_len=1024, context_len=1024, max_seq_len=1024 + 48)
                kv = kv_cache_bytes(cfg, [1024] + [1] * long["steps"], 1024 + 48)
                act = activation_peak(trl.prefill, cfg.dim) + workspace_bytes(trl.prefill, backend)
                act_factor = max(1.0, (long["peak_rss"] - base - max(1.0, residency[q]) * stored - kv) / max(act, 1.0))
        finally:
            gguf.unlink(missing_ok=True)
    mc = MemoryCalibration(backend, float(base), residency,
                           f"fresh-process RSS, {backend}, calibration model {cfg.n_layers}x{cfg.dim}",
                           float(load_base), float(act_factor))
    try:
        path.write_text(json.dumps(mc.__dict__))
    except OSError:
        pass
    return mc


def fmt_bytes(n: float) -> str:
    """Human-readable bytes (MiB / GiB)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
