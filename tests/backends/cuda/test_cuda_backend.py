"""The cuda backend as a `Backend`: registry and availability (cheap without a GPU), the
conformance suite on it, weights of qtypes without a kernel, and device transfers."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from edgeformer.backends.base import backend_class, default_backend_name, get_backend
from edgeformer.backends.conformance import CaseResult, all_cases, run_case
from edgeformer.backends.cuda import CudaBackend
from edgeformer.errors import UnsupportedError
from edgeformer.kernels import OPS
from edgeformer.kernels.linear import linear_ref
from edgeformer.quant import quantize
from edgeformer.quant.qtypes import QType

pytest.importorskip("torch")
pytest.importorskip("triton")

# ops the backend runs natively for every case (linear/embed: every qtype but the Q5 family)
NATIVE_OPS = ("linear", "embed", "rms_norm", "layer_norm", "rope", "attention", "activation", "glu", "softmax",
              "softcap", "add", "mul")


def test_registered_and_only_chosen_when_usable() -> None:
    assert backend_class("cuda") is CudaBackend
    why = CudaBackend.available()
    assert (default_backend_name() == "cuda") == (why is None)
    b = get_backend("cuda")                   # built even where it cannot run: the registry lists it
    assert isinstance(b, CudaBackend) and b.fused_decode and b.device_memory and b.joins_weights
    if why is not None:
        assert b.kernels == {} and "unavailable" in b.describe()
        with pytest.raises(UnsupportedError, match="cuda backend unavailable"):
            b.prepare_weight(quantize(np.ones((4, 32), np.float32), QType.Q8_0))


def test_importing_and_asking_does_not_import_torch() -> None:
    """The core install has neither torch nor Triton, and every `load()` asks the cuda
    backend first: without a driver, asking must not import torch (seconds)."""
    code = ("import sys; import edgeformer.backends.cuda as c; r = c.CudaBackend.available(); "
            "print('torch' in sys.modules, 'triton' in sys.modules, r)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(None, 2)
    if not out[2].startswith("no NVIDIA driver"):
        pytest.skip(f"this machine has an NVIDIA driver (cuda backend: {out[2].strip()})")
    assert out[:2] == ["False", "False"]


def test_cpu_device_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    b = CudaBackend(device="cpu")
    with pytest.raises(UnsupportedError, match="TRITON_INTERPRET"):
        b.prepare_weight(quantize(np.ones((4, 32), np.float32), QType.Q8_0))


def _suite_cases() -> list:
    """Every conformance case but the slow row-invariance ones outside --quick (each makes
    hundreds of 8-row calls, minutes in the interpreter; the quick Q4_0 one stays)."""
    return [c for c in all_cases() if c.check != "rows" or c.quick]


def test_conformance_suite(backend: CudaBackend) -> None:
    results: list[CaseResult] = [run_case(backend, c) for c in _suite_cases()]
    bad = [f"{r.op}-{r.case}: {r.status}: {r.message}" for r in results if r.status in ("fail", "error")]
    assert not bad, "\n".join(bad)
    for r in results:
        if r.op in NATIVE_OPS and r.status == "fallback":
            assert r.op in ("linear", "embed") and "Q5" in r.case, f"{r.op}-{r.case} fell back: {r.message}"
    assert {r.op for r in results if r.status == "ok"} == set(NATIVE_OPS)
    assert sum(r.status == "ok" for r in results) > 100


def test_qtype_without_kernel_is_dequantized_loudly(backend: CudaBackend) -> None:
    rng = np.random.default_rng(0)
    qt = quantize(rng.standard_normal((33, 96)).astype(np.float32), QType.Q5_0)
    assert backend.unsupported("linear", qtype=QType.Q5_0) and not backend.unsupported("linear", qtype=QType.Q4_K)
    fresh = CudaBackend(device=backend.device_name)
    with pytest.warns(RuntimeWarning, match="no Q5_0 kernel"):
        w = fresh.prepare_weight(qt, "blk.0.ffn_down.weight")
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # once per qtype, not per weight
        fresh.prepare_weight(qt, "blk.1.ffn_down.weight")
    assert w.qtype == QType.Q5_0 and w.shape == (33, 96) and w.nbytes == qt.nbytes
    x = rng.standard_normal((3, 96)).astype(np.float32)
    out = fresh.kernels["linear"](x, w.handle)
    ref = linear_ref(x, qt)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.sum((out - ref) ** 2) / np.sum(ref ** 2) <= OPS["linear"].max_nmse["F32"]


def test_device_round_trip_keeps_dtypes(backend: CudaBackend) -> None:
    import torch
    ids = np.array([3, 1, 2])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    d_ids, d_x = backend.to_device(ids), backend.to_device(x)
    assert isinstance(d_x, torch.Tensor) and d_x.device.type == backend.device.type
    assert backend.to_host(d_ids).dtype == ids.dtype and np.array_equal(backend.to_host(d_ids), ids)
    assert backend.to_host(d_x).dtype == np.float32 and np.array_equal(backend.to_host(d_x), x)
    # kernels take host arrays or device tensors alike, and return host float32
    w = backend.prepare_weight(quantize(np.eye(3, dtype=np.float32), QType.F16))
    for arg in (x, d_x):
        out = backend.kernels["linear"](arg, w.handle)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and np.array_equal(out, x)


def test_joined_weights_give_the_parts_outputs(backend: CudaBackend) -> None:
    rng = np.random.default_rng(1)
    for q in (QType.Q8_0, QType.Q4_K, QType.BF16):
        k = 256 if q.block_size == 256 else 96
        parts = [backend.prepare_weight(quantize(rng.standard_normal((n, k)).astype(np.float32), q), f"w{n}")
                 for n in (24, 8, 8)]
        joined = backend.concat_weights(parts, "qkv")
        assert joined is not None and joined.shape == (40, k) and joined.nbytes == sum(w.nbytes for w in parts)
        x = rng.standard_normal((1, k)).astype(np.float32)
        want = np.concatenate([backend.kernels["linear"](x, w.handle) for w in parts], axis=1)
        assert np.array_equal(backend.kernels["linear"](x, joined.handle), want)
    mixed = [backend.prepare_weight(quantize(rng.standard_normal((8, 96)).astype(np.float32), q)) for q in
             (QType.Q8_0, QType.Q4_0)]
    assert backend.concat_weights(mixed) is None


def test_ceilings_are_measured_on_the_backends_device(backend: CudaBackend) -> None:
    """`measure_ceilings` (copy bandwidth, matmul peaks; small sizes in the interpreter)
    becomes the DeviceSpec perf's calibration fits the kernels against."""
    from edgeformer.perf.bandwidth import device_spec_from_ceilings
    c = backend.measure_ceilings()
    assert c is not None and c["mem_bw"] > 1e8 and c["fp32"] > 1e8 and c["mem_bytes"] > 2**30
    spec = device_spec_from_ceilings(c)
    assert spec.default_unit == "gpu" and spec.peak("fp32") == pytest.approx(c["fp32"])
    assert spec.mem_bw.si == pytest.approx(c["mem_bw"]) and "torch" in spec.mem_bw.source
    assert get_backend("numpy").measure_ceilings() is None      # host backends: perf measures the host


def test_perf_times_a_device_backend_by_the_wall_clock() -> None:
    """Process CPU time does not see a device working: `--clock cpu` is refused for cuda."""
    r = subprocess.run([sys.executable, "-m", "edgeformer.cli", "perf", "validate", "--backend", "cuda",
                        "--clock", "cpu", "--quick"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--clock wall" in r.stderr and "Traceback" not in r.stderr
