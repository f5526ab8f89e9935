"""What the GPU the cuda backend runs on can do, measured with torch: device-to-device
copy bandwidth and dense matmul peaks. `CudaBackend.measure_ceilings` gives them to perf
(calibration fits the kernels' efficiencies against them, as it does against the host's
STREAM and BLAS figures on a CPU); `bench/gpu_bench.py` reports its rows as fractions of
them, measured in the same run.
"""
from __future__ import annotations

import time
from typing import Any

import torch


def device_clock(device: torch.device) -> float:
    """Wall time with the device drained first (kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Bytes/s of a device-to-device copy of an nbytes tensor, read and write counted."""
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    t0 = device_clock(device)
    for _ in range(reps):
        y.copy_(x)
    return 2 * nbytes * reps / (device_clock(device) - t0)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul in `dtype` (torch's own, cuBLAS on a GPU)."""
    a = torch.randn((n, n), device=device).to(dtype)
    b = torch.randn((n, n), device=device).to(dtype)
    torch.matmul(a, b)
    t0 = device_clock(device)
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * n ** 3 * reps / (device_clock(device) - t0)


def measure(device: torch.device, small: bool = False) -> dict[str, Any]:
    """The figures `Backend.measure_ceilings` returns (`small`: sizes a CPU runs in seconds)."""
    nbytes, n = (1 << 24, 256) if small else (1 << 30, 8192)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        mem = torch.cuda.get_device_properties(device).total_memory
    else:
        import os
        name, mem = "cpu (torch)", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"device": name, "mem_bw": copy_bandwidth(device, nbytes), "fp32": matmul_peak(device, torch.float32, n),
            "bf16": matmul_peak(device, torch.bfloat16, n) if device.type == "cuda" else None,
            "mem_bytes": float(mem),
            "how": f"measured by edgeformer.backends.cuda.ceilings with torch {torch.__version__} "
                   f"({time.strftime('%Y-%m-%d %H:%M:%S')}; copy of {nbytes >> 20} MiB, matmul n={n})"}
