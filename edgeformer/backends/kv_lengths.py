"""`LayerLengths`: the bookkeeping every single-sequence KV cache shares (the contiguous
host cache, `models/cache.py`; a backend's device cache, e.g. `cuda/cache.py`): how
many positions each layer holds, the context bound, and rollback.

Each layer keeps its own length, so a forward pass that fails midway leaves the cache at
the last complete position (`offset`), and `truncate(offset)` tidies the rest.
"""
from __future__ import annotations

from edgeformer.errors import InputError


class LayerLengths:
    def __init__(self, n_layers: int, max_seq_len: int) -> None:
        if max_seq_len <= 0:
            raise InputError(f"max_seq_len must be positive, got {max_seq_len}")
        self.max_seq_len = int(max_seq_len)
        self._len = [0] * n_layers

    @property
    def offset(self) -> int:
        """Positions every layer holds: the next token's position."""
        return min(self._len)

    def check_room(self, n: int) -> None:
        """Raise InputError if `n` more positions would not fit in `max_seq_len`."""
        if self.offset + n > self.max_seq_len:
            raise InputError(f"{self.offset} cached + {n} new tokens exceed the context of "
                             f"{self.max_seq_len} positions")

    def _room(self, layer: int, t: int) -> int:
        """The layer's length before `t` more positions are appended to it (InputError if
        they would not fit)."""
        n = self._len[layer]
        if n + t > self.max_seq_len:
            raise InputError(f"layer {layer}: {n} cached + {t} new positions exceed {self.max_seq_len}")
        return n

    def truncate(self, n: int) -> None:
        """Forget every position >= n (rollback of rejected speculative tokens)."""
        if n < 0:
            raise InputError(f"cannot truncate to {n} positions")
        self._len = [min(x, n) for x in self._len]
