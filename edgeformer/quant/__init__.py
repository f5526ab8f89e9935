"""Quant types, reference dequantize/quantize (bit-exact with the `gguf` package where it
implements a type; K-quant quantizers after llama.cpp's reference algorithm)."""
from edgeformer.quant.dequant import DEQUANTIZABLE, dequantize
from edgeformer.quant.qtypes import QTensor, QType, nbytes
from edgeformer.quant.quantize import QUANTIZABLE, quantize

__all__ = ["QTensor", "QType", "nbytes", "dequantize", "quantize", "QUANTIZABLE", "DEQUANTIZABLE"]
