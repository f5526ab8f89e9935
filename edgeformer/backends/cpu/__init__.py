"""The Numba CPU backend ("cpu").

Importing this package is cheap (no numba import, nothing compiled): the kernel modules
are imported when a `CpuBackend` is constructed, and each kernel compiles on first call
(`cache=True`, so later processes load machine code from `__pycache__`).

Weights are repacked once at load (`repack.py`); `linear` has one kernel per qtype
(`matmul.py`); the other op families mirror `kernels/`: norm, rope, attention,
activation (glu, softcap, softmax), embed. add/mul are numpy's own ufuncs (already
vectorised and bandwidth-bound), i.e. the reference.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from edgeformer.backends.base import Backend, Weight
from edgeformer.errors import UnsupportedError
from edgeformer.quant.qtypes import QTensor


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self) -> None:
        from edgeformer.backends.cpu import activation, attention, embed, matmul, norm, rope
        from edgeformer.kernels.elementwise import add_ref, mul_ref
        self.kernels: dict[str, Callable[..., Any]] = {
            "linear": matmul.linear, "embed": embed.embed,
            "rms_norm": norm.rms_norm, "layer_norm": norm.layer_norm, "rope": rope.rope,
            "attention": attention.attention, "activation": activation.activation,
            "glu": activation.glu, "softmax": activation.softmax, "softcap": activation.softcap,
            "add": add_ref, "mul": mul_ref,
        }
        self._linear_kernels = matmul.KERNELS

    @classmethod
    def available(cls) -> str | None:
        try:
            import numba  # noqa: F401
        except ImportError as e:
            return f"numba is not importable: {e}"
        return None

    def prepare_weight(self, qt: QTensor, name: str = "") -> Weight:
        """Repack a 2-D (N, K) weight once into the kernels' layout (see `repack.py`) and
        bind its linear kernel. A qtype without a native kernel is dequantized to F32 with
        a warning (correct, but it reads 4 bytes per weight). The handle serves both
        `linear` and `embed` (tied embeddings are stored once)."""
        from edgeformer.backends.cpu.repack import NATIVE, repack
        if len(qt.shape) != 2:
            raise UnsupportedError(f"cpu backend: weight {name or '?'} must be 2-D, got shape {qt.shape}")
        if qt.qtype not in NATIVE:
            from edgeformer.quant import dequantize
            warnings.warn(f"cpu backend has no {qt.qtype.name} kernel: weight {name or '?'} "
                          f"is dequantized to F32 at load", RuntimeWarning, stacklevel=2)
            qt = QTensor.from_array(dequantize(qt).astype("float32").reshape(qt.shape))
        packed = repack(qt)
        packed.kernel = self._linear_kernels[packed.kind]
        return Weight(name, qt.qtype, qt.shape, qt.nbytes, packed, None)
