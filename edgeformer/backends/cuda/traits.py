"""What the cuda backend supports, importable without torch or Triton (the package's
`__init__` and the kernel modules both read it)."""
from __future__ import annotations

import os

from edgeformer.quant.qtypes import QType

# qtypes with a native kernel (weights.NATIVE, which imports torch)
NATIVE_QTYPES = frozenset({QType.F32, QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q4_K,
                           QType.Q6_K})
# activation kinds the kernels compute (`elementwise.act`, in this order)
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def interpreting() -> bool:
    """Whether Triton runs kernels in its numpy interpreter (TRITON_INTERPRET=1, read as
    Triton reads it when a kernel is decorated): the only way they run on a "cpu" device."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
