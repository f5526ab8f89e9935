"""Every op, defined once: `OPS[name]` is its OpSpec (contract, reference, cost, output
shape, op class, tolerance, conformance cases)."""
from edgeformer.kernels.activation import ACTIVATION, GLU, SOFTCAP, SOFTMAX
from edgeformer.kernels.attention import ATTENTION
from edgeformer.kernels.base import Cost, OpSpec
from edgeformer.kernels.conv import CONV1D, CONV_TRANSPOSE1D
from edgeformer.kernels.elementwise import ADD, MUL
from edgeformer.kernels.embed import EMBED
from edgeformer.kernels.linear import LINEAR
from edgeformer.kernels.norm import LAYER_NORM, RMS_NORM
from edgeformer.kernels.rope import ROPE

OPS: dict[str, OpSpec] = {op.name: op for op in (
    LINEAR, EMBED, RMS_NORM, LAYER_NORM, ROPE, ATTENTION, ACTIVATION, GLU, SOFTMAX, SOFTCAP, ADD, MUL,
    CONV1D, CONV_TRANSPOSE1D,
)}

__all__ = ["OPS", "OpSpec", "Cost"]
