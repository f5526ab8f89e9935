"""The numpy reference backend: every op is its `kernels/` reference; weights are
dequantized to float32 once at load."""
from __future__ import annotations

from edgeformer.backends.base import Backend, Weight
from edgeformer.kernels import OPS
from edgeformer.quant import dequantize
from edgeformer.quant.qtypes import QTensor


class NumpyBackend(Backend):
    name = "numpy"
    kernels = {name: spec.reference for name, spec in OPS.items()}

    def describe(self) -> str:
        return "numpy (float32 reference)"

    def prepare_weight(self, qt: QTensor, name: str = "") -> Weight:
        return Weight(name, qt.qtype, qt.shape, qt.nbytes, dequantize(qt), None)
