"""Helpers for the quant tests: llama.cpp's own ggml quantizers and dequantizers, reached
through the shared library that llama-cpp-python ships, and a bitwise float compare."""
from __future__ import annotations

import ctypes
import pathlib

import numpy as np

from edgeformer.quant import QType


class GGML:
    """ctypes view of libggml-base: `quantize` (ggml_quantize_chunk, no imatrix: the
    `quantize_row_*_ref` path llama-quantize takes) and `dequantize` (dequantize_row_*)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]

    def quantize(self, x: np.ndarray, qtype: QType) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n_per_row = x.shape[-1]
        nrows = x.size // n_per_row
        dst = np.zeros(nrows * qtype.row_bytes(n_per_row), dtype=np.uint8)
        self.lib.ggml_quantize_init(int(qtype))
        n = self.lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, dst.ctypes.data,
                                         0, nrows, n_per_row, None)
        assert n == dst.size
        return dst

    def dequantize(self, raw: np.ndarray, qtype: QType, n: int) -> np.ndarray:
        name = qtype.name.lower().replace("_k", "_K")
        fn = getattr(self.lib, f"dequantize_row_{name}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        out = np.zeros(n, dtype=np.float32)
        fn(raw.ctypes.data, out.ctypes.data, n)
        return out


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same float32 bit patterns (NaN payloads and signed zeros included)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
