"""GGUF weights as the cuda kernels read them: each qtype's blocks split once, at load,
into row-major planes on the device (`CudaWeight.planes`, four pointers for every qtype;
unused ones are a one-element dummy). Values are never changed: the kernels dequantize
in registers from the same bytes the file holds, so results follow `quant.dequantize`.

Planes per qtype (N rows of K elements):

    F32   f32 (N, K)
    F16   f16 (N, K)
    BF16  int16 (N, K): the raw bits (widened to f32 in the kernel)
    Q8_0  int8 qs (N, K); f16 d (N, K/32)
    Q4_0  uint8 qs (N, K/2), ggml's 16 bytes per block; f16 d (N, K/32)
    Q4_1  uint8 qs (N, K/2); f16 d (N, K/32); f16 m (N, K/32)
    Q4_K  uint8 qs (N, K/2), 128 bytes per super-block; uint8 6-bit scales (N, K/32);
          uint8 6-bit mins (N, K/32); f16 [d, dmin] (N, K/256, 2)
    Q6_K  uint8 ql (N, K/2); uint8 qh (N, K/4); int8 scales (N, K/16); f16 d (N, K/256)

The K-quants' 12 packed scale bytes are unpacked here (`get_scale_min_k4`): ~2 bytes more
per 32 weights, instead of bit surgery in the kernel's inner loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgeformer.backends.cuda.device import upload
from edgeformer.quant.qtypes import QTensor, QType

# qtypes with a kernel; the id a kernel branches on is the QType's own value
NATIVE = (QType.F32, QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q4_K, QType.Q6_K)


@dataclass(frozen=True, eq=False)
class CudaWeight:
    """A 2-D (N, K) weight on the device: qtype (a NATIVE one), shape and its planes (the
    first `used` real, the rest dummies)."""

    qtype: QType
    shape: tuple[int, int]
    planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    used: int

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.planes[:self.used])


def _blocks(qt: QTensor) -> np.ndarray:
    """(N * K / block, type_size) uint8 view of the file's blocks."""
    return qt.data.reshape(-1, qt.qtype.type_size)


def _scale_min_k4(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> (n, 8) 6-bit scales and mins (ggml `get_scale_min_k4`, as
    `quant.dequant._scale_min_k4`)."""
    s = sc.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    scale = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return scale, mins


def planes_of(qt: QTensor) -> list[np.ndarray]:
    """The host planes of a NATIVE qtype's (N, K) weight (module docstring)."""
    n, k = qt.shape
    q = qt.qtype
    if q == QType.F32:
        return [qt.data.view(np.float32).reshape(n, k)]
    if q == QType.F16:
        return [qt.data.view(np.float16).reshape(n, k)]
    if q == QType.BF16:
        return [qt.data.view(np.int16).reshape(n, k)]
    b = _blocks(qt)
    if q == QType.Q8_0:
        return [b[:, 2:].view(np.int8).reshape(n, k), b[:, :2].view(np.float16).reshape(n, k // 32)]
    if q == QType.Q4_0:
        return [b[:, 2:].reshape(n, k // 2), b[:, :2].view(np.float16).reshape(n, k // 32)]
    if q == QType.Q4_1:
        return [b[:, 4:].reshape(n, k // 2), b[:, :2].view(np.float16).reshape(n, k // 32),
                b[:, 2:4].view(np.float16).reshape(n, k // 32)]
    if q == QType.Q4_K:
        sc, mn = _scale_min_k4(b[:, 4:16])
        return [b[:, 16:].reshape(n, k // 2), sc.reshape(n, k // 32), mn.reshape(n, k // 32),
                b[:, :4].view(np.float16).reshape(n, k // 256, 2)]
    if q == QType.Q6_K:
        return [b[:, :128].reshape(n, k // 2), b[:, 128:192].reshape(n, k // 4),
                b[:, 192:208].view(np.int8).reshape(n, k // 16), b[:, 208:].view(np.float16).reshape(n, k // 256)]
    raise ValueError(f"no cuda layout for {q.name}")


def prepare(qt: QTensor, device: torch.device) -> CudaWeight:
    """Upload a NATIVE qtype's (N, K) weight as its planes."""
    got = [upload(p, device) for p in planes_of(qt)]
    dummy = torch.zeros(1, dtype=torch.uint8, device=device)
    planes = tuple(got + [dummy] * (4 - len(got)))
    return CudaWeight(qt.qtype, (int(qt.shape[0]), int(qt.shape[1])), planes, len(got))  # type: ignore[arg-type]


def concat(ws: list[CudaWeight]) -> CudaWeight:
    """One weight whose rows are `ws`' rows in order (same qtype and K): every plane is
    row-major in N, so rows join plane by plane."""
    w0 = ws[0]
    planes = tuple(torch.cat([w.planes[i] for w in ws]) if i < w0.used else w0.planes[i] for i in range(4))
    return CudaWeight(w0.qtype, (sum(w.shape[0] for w in ws), w0.shape[1]), planes, w0.used)  # type: ignore[arg-type]
