"""One batched forward's K/V over several sequences of one `PagedKVCache` (`BlockTable.join`):
per layer, one scattered write of every sequence's new rows into their pages and one
`PagedKVBatch` view of each sequence's visible keys and values, which a backend with
`paged_attention` reads in a single attention call.

The per-sequence path (`BlockTable.update_and_fetch` and one attention call per sequence
and layer) costs ~30 us of Python each: at 16 sequences and 30 layers, ~15 ms of a ~56 ms
SmolLM2 step. Here the page of every new row, per layer, and each sequence's page table
are worked out once per forward (the blocks exist after `check_room`), so a layer costs
a few numpy calls whatever the batch size. Values and bits are those of the per-sequence
path: the same conversions (`BlockPool.write_rows`), the same pages, the same positions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeformer.kernels.kv_pages import PagedKVBatch


class KVBatch:
    """Views of `seqs` (BlockTables of one cache, each with every layer at the same length,
    `check_room` done for `lens` new tokens each) for one forward of lens[b] rows each,
    in order."""

    def __init__(self, seqs: Sequence[Any], lens: Sequence[int]) -> None:
        cache = seqs[0].cache
        self.seqs, self.cache, self.pool = list(seqs), cache, cache.pool
        bs = cache.block_size
        n0 = np.array([s.offset for s in seqs], np.int64)
        t = np.asarray(lens, np.int64)
        self.rows = np.concatenate([[0], np.cumsum(t)]).astype(np.int64)
        self.new_len = (n0 + t).tolist()
        seg = np.repeat(np.arange(len(seqs)), t)                      # each row's sequence
        pos = n0[seg] + np.arange(int(self.rows[-1])) - self.rows[:-1][seg]
        self.positions = pos                                           # each row's position
        self.slot = pos % bs
        self.groups = []   # per layer group: (tables (L_g, B, P), dst pages (L_g, rows), start, n)
        for g, (_, ls) in enumerate(cache.groups):
            first = np.array([s.first[g] for s in seqs], np.int64)
            live = [s.tables[g][s.first[g]:-(-nl // bs)] for s, nl in zip(seqs, self.new_len)]
            tables = np.zeros((len(ls), len(seqs), max(len(b) for b in live)), np.int64)
            for b, blocks in enumerate(live):
                tables[:, b, :len(blocks)] = np.stack([blk.pages for blk in blocks], axis=1)
            dst = tables[:, seg, pos // bs - first[seg]]
            start = first * bs
            self.groups.append((tables, dst, start, n0 + t - start))

    def update_and_fetch(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[PagedKVBatch, PagedKVBatch]:
        """Store k (rows, H, D), v (rows, H, Dv) of every sequence at its next positions in
        `layer`; return that layer's keys and values of every sequence as PagedKVBatch views."""
        g, j = self.cache.layer_group[layer]
        tables, dst, start, n = self.groups[g]
        self.pool.write_rows(dst[j], self.slot, k, v)
        for s, nl in zip(self.seqs, self.new_len):
            s._len[layer] = nl
        p = self.pool
        int8 = p.dtype == "int8"
        return (PagedKVBatch(p.k, p.k_scale if int8 else None, tables[j], start, n, self.rows, p.dtype),
                PagedKVBatch(p.v, p.v_scale if int8 else None, tables[j], start, n, self.rows, p.dtype))
