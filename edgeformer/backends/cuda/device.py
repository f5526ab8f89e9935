"""Where the cuda backend's tensors live, and moving arrays there and back.

Imported only once a `CudaBackend` is built (it imports torch). Kernels take numpy arrays
or torch tensors (the decoder's op path slices and concatenates host arrays between
ops) and go through `as_f32`; results come back through `host`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _tensor(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A contiguous host array on `device` (on "cpu" the tensor may share its memory:
    kernels never write their inputs). A read-only array (a memory-mapped file) is
    copied first, as torch cannot wrap it."""
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(device)


def as_f32(a: Any, device: torch.device) -> torch.Tensor:
    """`a` (numpy array, torch tensor or scalar) as a contiguous float32 tensor on `device`."""
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=torch.float32).contiguous()
    return _tensor(np.ascontiguousarray(a, dtype=np.float32), device)


def as_int(a: Any, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Integer ids or positions as a contiguous tensor on `device`."""
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype).contiguous()
    return _tensor(np.ascontiguousarray(a, dtype=np.int64), device).to(dtype)


def upload(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array of any dtype, bit for bit, on `device` (weights' planes)."""
    return _tensor(np.ascontiguousarray(a), device)


def host(t: Any) -> np.ndarray:
    """A kernel's output as a float32 numpy array."""
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float32).numpy()
    return np.asarray(t, dtype=np.float32)


def pow2(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least) (Triton block shapes are powers of two)."""
    n = max(int(n), least)
    return 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
