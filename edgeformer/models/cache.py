"""`KVCache`: a simple contiguous per-layer key/value cache for one sequence.

Same contract as mlx-lm's caches (`update_and_fetch` + `offset`): the model appends each
layer's new keys/values and reads back everything cached so far. Storage grows by
doubling up to `max_seq_len`, so a model with a 128k context does not preallocate it.
The paged cache of `runtime/` (blocks, prefix sharing) is a different, later class.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from edgeformer.backends.kv_lengths import LayerLengths


class KVCache(LayerLengths):
    """Per layer: keys (S, n_kv_heads, head_dim) and values (S, n_kv_heads, v_dim), float32.
    Lengths, `offset`, `check_room` and `truncate`: `LayerLengths`."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_seq_len: int,
                 v_dim: int | None = None, dtype: DTypeLike = np.float32, initial: int = 256) -> None:
        super().__init__(n_layers, max_seq_len)
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.v_dim = v_dim or head_dim
        self.dtype = np.dtype(dtype)
        cap = min(self.max_seq_len, initial)
        self.keys = [np.zeros((cap, n_kv_heads, head_dim), self.dtype) for _ in range(n_layers)]
        self.values = [np.zeros((cap, n_kv_heads, self.v_dim), self.dtype) for _ in range(n_layers)]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0]

    def _grow(self, layer: int, need: int) -> None:
        cap = self.keys[layer].shape[0]
        if need <= cap:
            return
        new = min(self.max_seq_len, max(need, 2 * cap))
        for store in (self.keys, self.values):
            old = store[layer]
            grown = np.zeros((new,) + old.shape[1:], self.dtype)
            grown[:cap] = old
            store[layer] = grown

    def update_and_fetch(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append k: (T, n_kv_heads, head_dim) and v: (T, n_kv_heads, v_dim) to `layer` at its
        current length. Returns (k_all, v_all, k_positions): views of every cached position
        of the layer, (S, ...) with S = old length + T, and their positions arange(S)."""
        t = k.shape[0]
        n = self._room(layer, t)
        self._grow(layer, n + t)
        self.keys[layer][n:n + t] = k
        self.values[layer][n:n + t] = v
        self._len[layer] = n + t
        return self.keys[layer][:n + t], self.values[layer][:n + t], np.arange(n + t)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached positions (not of the allocated capacity)."""
        per = self.n_kv_heads * (self.head_dim + self.v_dim) * self.dtype.itemsize
        return sum(self._len) * per
