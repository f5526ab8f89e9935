"""Quant types, reference dequantize/quantize (bit-exact with the `gguf` package where it
implements a type; K-quant quantizers after llama.cpp's reference algorithm)."""
from edgeformer.quant.qtypes import QTensor, QType, nbytes

def dequantize(qt: QTensor):  # placeholder until quant/ lands
    from edgeformer.quant.dequant import dequantize as _d
    return _d(qt)

__all__ = ["QTensor", "QType", "nbytes", "dequantize"]
