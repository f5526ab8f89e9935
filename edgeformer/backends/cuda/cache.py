"""`DeviceKVCache`: one sequence's keys and values in device memory (`CudaBackend.make_cache`).

The contract of `models/cache.py`'s KVCache (`offset`, `check_room`, `truncate` from
`backends/kv_lengths.py`, `update_and_fetch`, `nbytes`), so the decoder's op path (prefill, speculative verify) runs on it
unchanged: `update_and_fetch` returns device tensors, which the backend's attention
reads where they are. The fused decode step (`block.py`) writes each token's k/v with
`write_t` and attends over the layer's tensors in place, as one page of
`attention.paged_decode_t`, so no K/V crosses the bus.

Storage is float32 (the backend's activations), per layer (capacity, Hkv, D), grown by
doubling up to `max_seq_len` for every layer at once: a capacity names one shape for all
layers, which is what a captured CUDA graph is keyed on.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgeformer.backends.cuda.device import as_f32
from edgeformer.backends.kv_lengths import LayerLengths
from edgeformer.errors import InputError


class DeviceKVCache(LayerLengths):
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_seq_len: int, device: torch.device,
                 initial: int = 256) -> None:
        super().__init__(n_layers, max_seq_len)
        self.n_layers, self.n_kv_heads, self.head_dim, self.device = n_layers, n_kv_heads, head_dim, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._alloc(min(self.max_seq_len, initial))

    def _alloc(self, cap: int) -> None:
        shape = (cap, self.n_kv_heads, self.head_dim)
        old = list(zip(self.keys, self.values))
        self.keys = [torch.zeros(shape, dtype=torch.float32, device=self.device) for _ in range(self.n_layers)]
        self.values = [torch.zeros(shape, dtype=torch.float32, device=self.device) for _ in range(self.n_layers)]
        for i, (k, v) in enumerate(old):
            self.keys[i][:k.shape[0]] = k
            self.values[i][:v.shape[0]] = v

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0]

    def reserve(self, n: int) -> None:
        """Room for positions up to n (every layer), growing by doubling."""
        if n > self.max_seq_len:
            raise InputError(f"{n} positions exceed {self.max_seq_len}")
        if n > self.capacity:
            self._alloc(min(self.max_seq_len, max(n, 2 * self.capacity)))

    def update_and_fetch(self, layer: int, k: Any, v: Any) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Append k (T, Hkv, D) and v (host arrays or device tensors) to `layer`. Returns
        (k_all, v_all, positions): device views of the layer's S cached positions and arange(S)."""
        t = k.shape[0]
        n = self._room(layer, t)
        self.reserve(n + t)
        self.keys[layer][n:n + t] = as_f32(k, self.device).reshape(t, self.n_kv_heads, self.head_dim)
        self.values[layer][n:n + t] = as_f32(v, self.device).reshape(t, self.n_kv_heads, self.head_dim)
        self._len[layer] = n + t
        return self.keys[layer][:n + t], self.values[layer][:n + t], np.arange(n + t)

    def write_t(self, layer: int, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor) -> None:
        """k, v (1, Hkv, D) float32 at the slot held in the int64 device tensor `slot` (1,),
        without a host sync (a CUDA graph replays it). The caller advances the length
        (`advance`) once every layer holds the token."""
        self.keys[layer].index_copy_(0, slot, k.reshape(1, self.n_kv_heads, self.head_dim))
        self.values[layer].index_copy_(0, slot, v.reshape(1, self.n_kv_heads, self.head_dim))

    def advance(self, n: int) -> None:
        """Every layer holds positions < n (after `write_t` at n - 1 in each)."""
        self._len = [n] * self.n_layers

    @property
    def nbytes(self) -> int:
        """Bytes of the cached positions (not of the allocated capacity)."""
        return sum(self._len) * self.n_kv_heads * self.head_dim * 2 * 4
