"""activation, glu and softcap as Triton kernels over flat arrays; add, mul and softmax
as torch's own device ops (broadcasting and reductions that torch already does at
bandwidth, with the reference's float32 semantics).

The formulas are the reference's (`kernels/activation.py`), chosen there to avoid
cancellation: silu x / (1 + exp(-x)); gelu_tanh x / (1 + exp(-2z)); gelu
0.5 x (1 + erf(x / sqrt 2)). relu keeps NaN. tanh is built from exp (`tanh`), because
Triton's interpreter, which the tests run, has no tanh.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from edgeformer.backends.cuda.traits import ACTIVATIONS
from edgeformer.backends.cuda.device import as_f32, cdiv

# activation kinds as the kernels take them
KIND_IDS = {kind: i for i, kind in enumerate(ACTIVATIONS)}
BLOCK = 1024
_SQRT_2_OVER_PI: tl.constexpr = tl.constexpr(math.sqrt(2.0 / math.pi))
_INV_SQRT_2: tl.constexpr = tl.constexpr(1.0 / math.sqrt(2.0))


@triton.jit
def tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow; NaN stays NaN.
    1 - e cancels near 0 (a relative error of ~6e-8 / |x|), so |x| < 1/8 takes the Taylor
    series to x^9 instead (truncation error < 1e-12 relative there)."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(a < 0.125, series, tl.where(x < 0, -t, t))


@triton.jit
def act(x, KIND: tl.constexpr):
    """The activation KIND (KIND_IDS) of float32 x, elementwise."""
    if KIND == 0:
        y = x / (1.0 + tl.exp(-x))
    elif KIND == 1:
        y = 0.5 * x * (1.0 + tl.math.erf(x * _INV_SQRT_2))
    elif KIND == 2:
        z = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        y = x / (1.0 + tl.exp(-2.0 * z))
    else:
        y = tl.where((x > 0) | (x != x), x, 0.0)      # max(x, 0), NaN kept
    return y


@triton.jit
def _act(x, y, n, KIND: tl.constexpr, B: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    m = i < n
    tl.store(y + i, act(tl.load(x + i, mask=m, other=0.0), KIND), mask=m)


@triton.jit
def _glu(g, u, y, n, KIND: tl.constexpr, B: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    m = i < n
    tl.store(y + i, act(tl.load(g + i, mask=m, other=0.0), KIND) * tl.load(u + i, mask=m, other=0.0), mask=m)


@triton.jit
def _softcap(x, y, n, cap, B: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    m = i < n
    tl.store(y + i, tanh(tl.load(x + i, mask=m, other=0.0) / cap) * cap, mask=m)


def kind_id(kind: str) -> int:
    if kind not in KIND_IDS:
        raise ValueError(f"unknown activation {kind!r}")
    return KIND_IDS[kind]


def activation_t(x: torch.Tensor, kind: str) -> torch.Tensor:
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _act[(cdiv(n, BLOCK),)](x, y, n, KIND=kind_id(kind), B=BLOCK)
    return y


def glu_t(gate: torch.Tensor, up: torch.Tensor, kind: str) -> torch.Tensor:
    """act(gate) * up; both float32 contiguous of one shape."""
    y = torch.empty_like(gate)
    n = gate.numel()
    if n:
        _glu[(cdiv(n, BLOCK),)](gate, up, y, n, KIND=kind_id(kind), B=BLOCK)
    return y


def softcap_t(x: torch.Tensor, cap: float) -> torch.Tensor:
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        _softcap[(cdiv(n, BLOCK),)](x, y, n, float(cap), B=BLOCK)
    return y


def activation(x: Any, kind: str, *, device: torch.device) -> torch.Tensor:
    return activation_t(as_f32(x, device), kind)


def glu(gate: Any, up: Any, kind: str, *, device: torch.device) -> torch.Tensor:
    return glu_t(as_f32(gate, device), as_f32(up, device), kind)


def softcap(x: Any, cap: float, *, device: torch.device) -> torch.Tensor:
    return softcap_t(as_f32(x, device), cap)


def add(a: Any, b: Any, *, device: torch.device) -> torch.Tensor:
    """a + b with numpy broadcasting; a scalar b is rounded to float32 first, as the reference does."""
    return torch.add(as_f32(a, device), as_f32(b, device))


def mul(a: Any, b: Any, *, device: torch.device) -> torch.Tensor:
    return torch.mul(as_f32(a, device), as_f32(b, device))


def softmax(x: Any, *, device: torch.device) -> torch.Tensor:
    """Softmax over the last axis (torch's: -inf entries give 0, a row of -inf, or with
    NaN or +inf, gives NaN, as the reference)."""
    return torch.softmax(as_f32(x, device), dim=-1)
