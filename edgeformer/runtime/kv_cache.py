"""Paged KV cache: a pool of fixed-size pages, a block table per sequence, prefix sharing
by block hash with reference counts and copy-on-write, sliding-window eviction, and a
memory budget.

Units. A *page* holds `block_size` tokens of keys and values of ONE layer. Layers are
split into groups (full attention, sliding window); a *block* (`Block`) is the
`block_size` tokens of every layer of one group, i.e. one page per layer of the group.
Grouping lets sliding layers free the blocks that fell out of their window while full
layers keep everything (vLLM v1's hybrid allocator does the same with KV-cache groups).

Prefix sharing. Once a block is full, its key is sha256(parent key + its token ids), so it
names the whole prefix up to it. A new sequence whose prompt starts with cached blocks
takes them (reference count + 1) instead of recomputing them. Blocks that nobody uses but
that carry a key stay cached (LRU) until their pages are needed. A block that is shared
or keyed is immutable: writing into it (after `truncate` or `fork`) copies it first.

Storage dtypes: f32 (exact), f16, bf16 (round to nearest even), int8 (symmetric, one f32
scale per token and head; conversions in `kernels/kv_pages.py`). `update_and_fetch`
returns a layer's visible keys and values as `PagedKV` views of the pages when the cache
was made with `paged_views` (for a backend with `paged_attention`, whose attention reads
them in place), else gathered into contiguous float32 arrays: per layer and step that
copies (and dequantizes) the whole visible context, S * n_kv_heads * (head_dim + v_dim)
values.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.errors import CapacityError, InputError
from edgeformer.kernels.kv_pages import ITEMSIZE, PagedKV, quant_int8, to_bf16

KV_DTYPES = ("f32", "f16", "bf16", "int8")


# ---- the pool ------------------------------------------------------------------------------

@dataclass(eq=False)
class Block:
    """`block_size` tokens of every layer of one layer group: `pages[j]` is layer j of the
    group. `ref`: sequences using it; `key`: prefix hash once full and registered."""

    group: int
    pages: np.ndarray
    ref: int = 0
    key: bytes | None = None


class BlockPool:
    """`num_pages` pages of (block_size, n_kv_heads, head_dim) keys and (.., v_dim) values in
    the storage dtype, a free list, and the prefix cache (key -> Block, LRU of unused ones)."""

    def __init__(self, num_pages: int, block_size: int, n_kv_heads: int, head_dim: int, v_dim: int,
                 dtype: str) -> None:
        self.num_pages, self.block_size, self.dtype = num_pages, block_size, dtype
        store = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16, "int8": np.int8}[dtype]
        self.k = np.zeros((num_pages, block_size, n_kv_heads, head_dim), store)
        self.v = np.zeros((num_pages, block_size, n_kv_heads, v_dim), store)
        if dtype == "int8":
            self.k_scale = np.zeros((num_pages, block_size, n_kv_heads), np.float32)
            self.v_scale = np.zeros((num_pages, block_size, n_kv_heads), np.float32)
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self.cached: dict[bytes, Block] = {}
        self._lru: OrderedDict[int, Block] = OrderedDict()   # id(block) -> unused keyed block

    @property
    def free_pages(self) -> int:
        """Pages obtainable now: free ones plus those of unused cached blocks."""
        return len(self._free) + sum(b.pages.size for b in self._lru.values())

    @property
    def used_pages(self) -> int:
        return self.num_pages - self.free_pages

    def allocate(self, group: int, n_pages: int) -> Block:
        """A fresh Block (ref 1) of `n_pages` pages, evicting unused cached blocks (least
        recently used first) if the free list is short. CapacityError if it cannot."""
        while len(self._free) < n_pages and self._lru:
            _, old = self._lru.popitem(last=False)
            assert old.key is not None          # the LRU holds only keyed blocks
            del self.cached[old.key]
            self._free.extend(int(p) for p in old.pages)
        if len(self._free) < n_pages:
            raise CapacityError(f"KV cache full: need {n_pages} pages, {len(self._free)} free "
                                f"of {self.num_pages}")
        pages = np.array([self._free.pop() for _ in range(n_pages)], dtype=np.int64)
        return Block(group, pages, ref=1)

    def acquire(self, block: Block) -> Block:
        """One more user of `block` (taking it out of the unused LRU)."""
        if block.ref == 0:
            self._lru.pop(id(block), None)
        block.ref += 1
        return block

    def release(self, block: Block) -> None:
        """One user fewer; at zero a keyed block stays cached (LRU), others free their pages."""
        block.ref -= 1
        if block.ref > 0:
            return
        if block.key is not None and self.cached.get(block.key) is block:
            self._lru[id(block)] = block
        else:
            self._free.extend(int(p) for p in block.pages)

    def register(self, block: Block, key: bytes) -> Block:
        """Name a full block by its prefix key. If the key is cached already, returns that
        block (acquired) and releases `block`: the caller swaps it in, deduplicating."""
        old = self.cached.get(key)
        if old is not None and old is not block:
            self.acquire(old)
            self.release(block)
            return old
        block.key = key
        self.cached[key] = block
        return block

    # ---- page data ----

    def write_rows(self, pages: np.ndarray, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store row r of k (n, H, D), v (n, H, Dv) float32 at slot slots[r] of page pages[r]."""
        if self.dtype == "int8":
            self.k[pages, slots], self.k_scale[pages, slots] = quant_int8(k)
            self.v[pages, slots], self.v_scale[pages, slots] = quant_int8(v)
        elif self.dtype == "bf16":
            self.k[pages, slots], self.v[pages, slots] = to_bf16(k), to_bf16(v)
        else:
            self.k[pages, slots], self.v[pages, slots] = k, v

    def view(self, pages: np.ndarray, n: int) -> tuple[PagedKV, PagedKV]:
        """The first n token slots of `pages`, in order: keys (n, H, D), values (n, H, Dv)."""
        int8 = self.dtype == "int8"
        return (PagedKV(self.k, self.k_scale if int8 else None, pages, n, self.dtype),
                PagedKV(self.v, self.v_scale if int8 else None, pages, n, self.dtype))

    def copy_page(self, src: int, dst: int) -> None:
        self.k[dst], self.v[dst] = self.k[src], self.v[src]
        if self.dtype == "int8":
            self.k_scale[dst], self.v_scale[dst] = self.k_scale[src], self.v_scale[src]


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """Prefix hash of a block: sha256 of the parent block's key and this block's token ids."""
    return hashlib.sha256(parent + np.asarray(tokens, dtype=np.int64).tobytes()).digest()


def prefix_keys(tokens: Sequence[int], block_size: int, n_blocks: int) -> list[bytes]:
    keys, parent = [], b""
    for b in range(n_blocks):
        parent = block_key(parent, tokens[b * block_size:(b + 1) * block_size])
        keys.append(parent)
    return keys


# ---- the cache and its per-sequence views -------------------------------------------------

class PagedKVCache:
    """Paged K/V storage for many sequences of one model.

    Pages come from `budget_bytes` (or `num_pages`); `sliding[l]` marks layers that see only
    the last `window` positions. `max_chunk`: the most tokens one forward adds to a
    sequence, which bounds a sliding layer's live blocks. `prefix_sharing`: register full
    blocks by prefix hash and reuse them across sequences. `paged_views`: `update_and_fetch`
    returns `PagedKV` views instead of float32 arrays. ConfigError-like misuse
    (unknown dtype, bad sizes) raises InputError; a budget below one sequence block
    raises CapacityError."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, *, max_seq_len: int,
                 budget_bytes: int | None = None, num_pages: int | None = None, block_size: int = 16,
                 dtype: str = "f16", sliding: Sequence[bool] | None = None, window: int | None = None,
                 v_dim: int | None = None, max_chunk: int = 512, prefix_sharing: bool = True,
                 paged_views: bool = False) -> None:
        if dtype not in KV_DTYPES:
            raise InputError(f"kv cache dtype {dtype!r} is not one of {', '.join(KV_DTYPES)}")
        if block_size < 1 or max_seq_len < 1 or max_chunk < 1:
            raise InputError(f"kv cache: block_size, max_seq_len, max_chunk must be >= 1, "
                             f"got {block_size}, {max_seq_len}, {max_chunk}")
        self.n_layers, self.block_size, self.dtype = n_layers, block_size, dtype
        self.n_kv_heads, self.head_dim, self.v_dim = n_kv_heads, head_dim, v_dim or head_dim
        self.max_seq_len, self.max_chunk, self.prefix_sharing = max_seq_len, max_chunk, prefix_sharing
        self.paged_views = paged_views
        sliding = [bool(s) and window is not None for s in (sliding or [False] * n_layers)]
        if len(sliding) != n_layers:
            raise InputError(f"kv cache: {len(sliding)} sliding flags for {n_layers} layers")
        self.window = window if window is not None else 0   # read only by sliding groups, which need one
        full = [i for i in range(n_layers) if not sliding[i]]
        slid = [i for i in range(n_layers) if sliding[i]]
        self.groups: list[tuple[bool, list[int]]] = [(s, ls) for s, ls in ((False, full), (True, slid)) if ls]
        self.layer_group = {}
        for g, (_, ls) in enumerate(self.groups):
            for j, layer in enumerate(ls):
                self.layer_group[layer] = (g, j)
        per_token = n_kv_heads * (head_dim + self.v_dim) * ITEMSIZE[dtype] + (8 * n_kv_heads if dtype == "int8" else 0)
        self.page_bytes = block_size * per_token
        if num_pages is None:
            if budget_bytes is None:
                raise InputError("kv cache: give budget_bytes or num_pages")
            num_pages = int(budget_bytes) // self.page_bytes
        if num_pages < n_layers:
            raise CapacityError(f"KV budget of {budget_bytes} bytes holds {num_pages} pages of {self.page_bytes} "
                                f"bytes: less than one {block_size}-token block of all {n_layers} layers")
        self.pool = BlockPool(num_pages, block_size, n_kv_heads, head_dim, self.v_dim, dtype)

    @classmethod
    def for_model(cls, model, **kw) -> PagedKVCache:
        """A cache shaped for a `Decoder` (layers' sliding flags and window from its config)."""
        c = model.config
        kw.setdefault("max_seq_len", c.max_seq_len)
        return cls(c.n_layers, c.n_kv_heads, c.head_dim, sliding=[L.sliding for L in model.layers],
                   window=c.sliding_window, **kw)

    def _sliding_live_blocks(self) -> int:
        # a forward of T <= max_chunk tokens at offset o needs positions o - W + 1 .. o + T - 1
        return (self.window + self.max_chunk - 2) // self.block_size + 2

    def blocks_needed(self, group: int, n_tokens: int) -> int:
        """Live blocks of `group` a sequence of n_tokens needs at most."""
        n = -(-n_tokens // self.block_size)
        return min(n, self._sliding_live_blocks()) if self.groups[group][0] else n

    def pages_for(self, n_tokens: int) -> int:
        """Pages a fresh sequence growing to n_tokens holds at most (no prefix hits)."""
        return sum(len(ls) * self.blocks_needed(g, n_tokens) for g, (_, ls) in enumerate(self.groups))

    def prompt_keys(self, prompt: Sequence[int]) -> list[bytes]:
        """Prefix keys of the prompt's whole blocks that a new sequence could take from the
        cache (all but its last token: at least one prompt token runs); [] without prefix
        sharing."""
        if not self.prefix_sharing or len(prompt) <= self.block_size:
            return []
        return prefix_keys([int(t) for t in prompt], self.block_size, (len(prompt) - 1) // self.block_size)

    def new_sequence(self, prompt: Sequence[int] | None = None, keys: list[bytes] | None = None) -> BlockTable:
        """An empty sequence view; given its prompt, it starts with the longest cached prefix
        of whole blocks (leaving at least one prompt token to run). `view.offset` (=
        `view.cached_tokens`) says how many prompt tokens it already holds. `keys`: the
        prompt's `prompt_keys`, when the caller has them already."""
        view = BlockTable(self)
        if prompt is None:
            return view
        keys = self.prompt_keys(prompt) if keys is None else keys
        if not keys:
            return view
        bs, cached = self.block_size, self.pool.cached
        prompt = [int(t) for t in prompt]

        def needed(g: int, k: int) -> range:
            lo = max(0, (k * bs - self.window + 1) // bs) if self.groups[g][0] else 0
            return range(lo, k)

        k = len(keys)
        while k > 0 and not all(keys[b] + bytes([g]) in cached for g in range(len(self.groups))
                                for b in needed(g, k)):
            k -= 1
        if k == 0:
            return view
        for g in range(len(self.groups)):
            rng = needed(g, k)
            view.tables[g] = [None] * rng.start + [self.pool.acquire(cached[keys[b] + bytes([g])]) for b in rng]
            view.first[g] = rng.start
        view._len = [k * bs] * self.n_layers
        view.tokens = prompt[:k * bs]
        view.keys = keys[:k]
        view.cached_tokens = k * bs
        return view

    def metrics(self) -> dict[str, int]:
        """kv_blocks_* count pages (one page = block_size tokens of one layer)."""
        return {"kv_blocks_total": self.pool.num_pages, "kv_blocks_used": self.pool.used_pages,
                "kv_blocks_free": self.pool.free_pages, "kv_block_size": self.block_size,
                "kv_block_bytes": self.page_bytes, "kv_cached_prefix_blocks": len(self.pool.cached)}


class BlockTable:
    """One sequence's block table (per layer group: logical block -> Block) and, as its
    view of the cache, the KV-cache contract the decoder uses (`offset`,
    `check_room`, `update_and_fetch`, `truncate`, like `models.cache.KVCache`), plus
    `commit(token_ids)` (record the tokens whose K/V were added, registering full blocks
    for prefix sharing and freeing blocks that left every sliding layer's window), `fork`
    and `release`. Not thread-safe; one view per sequence."""

    def __init__(self, cache: PagedKVCache) -> None:
        self.cache, self.pool = cache, cache.pool
        ng = len(cache.groups)
        self.tables: list[list[Block | None]] = [[] for _ in range(ng)]
        self.first = [0] * ng                  # first live block per group (sliding drops)
        self._len = [0] * cache.n_layers
        self.tokens: list[int] = []            # committed token ids
        self.keys: list[bytes] = []            # prefix keys of the full committed blocks
        self.cached_tokens = 0
        self.released = False

    @property
    def offset(self) -> int:
        return min(self._len)

    def block_table(self, group: int = 0) -> list[int]:
        """Page ids of the group's first layer per logical block (-1 where dropped)."""
        return [-1 if b is None else int(b.pages[0]) for b in self.tables[group]]

    @property
    def held_pages(self) -> int:
        return sum(b.pages.size for t in self.tables for b in t if b is not None)

    def future_pages(self, final_len: int) -> int:
        """Pages this sequence may still allocate while growing to final_len tokens."""
        out = 0
        for g, (_, ls) in enumerate(self.cache.groups):
            live = sum(b is not None for b in self.tables[g])
            out += len(ls) * max(0, self.cache.blocks_needed(g, final_len) - live)
        return out

    def check_room(self, n: int) -> None:
        """Make room for n more positions: InputError past max_seq_len, CapacityError when
        the pool is out of pages. Shared or cached blocks about to be written are copied."""
        if self.released:
            raise InputError("this KV sequence was released")
        if self.offset + n > self.cache.max_seq_len:
            raise InputError(f"{self.offset} cached + {n} new tokens exceed the context of "
                             f"{self.cache.max_seq_len} positions")
        self._ensure(self.offset, self.offset + n)

    def _ensure(self, lo: int, hi: int) -> None:
        bs = self.cache.block_size
        for g, (_, ls) in enumerate(self.cache.groups):
            table = self.tables[g]
            while len(table) * bs < hi:
                table.append(self.pool.allocate(g, len(ls)))
            for b in range(lo // bs, -(-hi // bs)):
                blk = table[b]
                if blk is not None and (blk.ref > 1 or blk.key is not None):
                    table[b] = self._writable(blk)

    def _writable(self, blk: Block) -> Block:
        """Copy-on-write: a private, unkeyed copy of a shared or cached block."""
        if blk.ref == 1:   # ours alone: just take it out of the prefix cache
            if blk.key is not None and self.pool.cached.get(blk.key) is blk:
                del self.pool.cached[blk.key]
            blk.key = None
            return blk
        new = self.pool.allocate(blk.group, blk.pages.size)
        for src, dst in zip(blk.pages, new.pages):
            self.pool.copy_page(int(src), int(dst))
        self.pool.release(blk)
        return new

    def _live(self, g: int, b: int) -> Block:
        """Block b of group g, which is live: b >= first[g], so not dropped by a sliding window."""
        blk = self.tables[g][b]
        assert blk is not None, f"block {b} of group {g} left the sliding window"
        return blk

    def update_and_fetch(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """Append k (T, H, D), v (T, H, Dv) to `layer`; return its visible keys/values (S,
        H, D), (S, H, Dv), as `PagedKV` views with the cache's `paged_views`, else as
        contiguous float32, and their positions (S,): all positions for a full layer, those
        from the first live block on for a sliding one."""
        g, j = self.cache.layer_group[layer]
        bs = self.cache.block_size
        n, t = self._len[layer], k.shape[0]
        if n + t > self.cache.max_seq_len:
            raise InputError(f"layer {layer}: {n} cached + {t} new positions exceed {self.cache.max_seq_len}")
        self._ensure(n, n + t)
        k = np.asarray(k, dtype=np.float32)
        v = np.asarray(v, dtype=np.float32)
        p = n
        while p < n + t:
            b, lo = divmod(p, bs)
            m = min(bs - lo, n + t - p)
            self.pool.write_rows(np.full(m, self._live(g, b).pages[j]), np.arange(lo, lo + m),
                                 k[p - n:p - n + m], v[p - n:p - n + m])
            p += m
        self._len[layer] = n + t
        f = self.first[g]
        pages = np.array([self._live(g, b).pages[j] for b in range(f, -(-(n + t) // bs))], dtype=np.int64)
        k_all, v_all = self.pool.view(pages, n + t - f * bs)
        if self.cache.paged_views:
            return k_all, v_all, np.arange(f * bs, n + t)
        return k_all.dense(), v_all.dense(), np.arange(f * bs, n + t)

    def join(self, seqs: Sequence[Any], lens: Sequence[int]) -> Any:
        """A `kv_batch.KVBatch` over `seqs` (this one first; lens[b] new tokens each, rooms
        checked) for a backend that reads pages in place, or None where the per-sequence
        path must run: views not paged, another cache, a sequence twice, or layers of a
        sequence at different lengths."""
        if not self.cache.paged_views or len({id(s) for s in seqs}) != len(seqs) or any(
                not isinstance(s, BlockTable) or s.cache is not self.cache or s.released
                or min(s._len) != max(s._len) for s in seqs):
            return None
        from edgeformer.runtime.kv_batch import KVBatch
        return KVBatch(seqs, lens)

    def commit(self, token_ids: Sequence[int]) -> None:
        """Record the ids of the tokens just added (so len(tokens) == offset afterwards);
        register newly full blocks for prefix sharing; drop sliding blocks out of reach."""
        self.tokens.extend(int(t) for t in token_ids)
        if len(self.tokens) != self.offset:
            raise InputError(f"commit: {len(self.tokens)} token ids recorded but the cache holds {self.offset}")
        bs, cache = self.cache.block_size, self.cache
        if cache.prefix_sharing:
            for b in range(len(self.keys), self.offset // bs):
                parent = self.keys[-1] if self.keys else b""
                key = block_key(parent, self.tokens[b * bs:(b + 1) * bs])
                self.keys.append(key)
                for g in range(len(cache.groups)):
                    blk = self.tables[g][b]
                    if blk is not None and blk.key is None and key + bytes([g]) not in self.pool.cached:
                        # an equal block cached by another sequence is left alone: swapping
                        # it in would change this sequence's K/V values mid-stream
                        self.pool.register(blk, key + bytes([g]))
        for g, (is_sliding, _) in enumerate(cache.groups):
            if not is_sliding:
                continue
            lo = self.offset - cache.window + 1          # oldest position a next query sees
            while self.first[g] < len(self.tables[g]) and (self.first[g] + 1) * bs <= lo:
                self.pool.release(self._live(g, self.first[g]))
                self.tables[g][self.first[g]] = None
                self.first[g] += 1

    def truncate(self, n: int) -> None:
        """Forget every position >= n. InputError if n < 0 or a sliding layer already freed
        positions a query at n would see."""
        if n < 0:
            raise InputError(f"cannot truncate to {n} positions")
        bs, cache = self.cache.block_size, self.cache
        for g, (is_sliding, _) in enumerate(cache.groups):
            # (nothing freed yet, first == 0: any n is fine, even one closer to 0 than a window)
            if is_sliding and n < self.offset and self.first[g] > 0 and n - cache.window + 1 < self.first[g] * bs:
                raise InputError(f"cannot roll back to {n}: positions before {self.first[g] * bs} left "
                                 f"the sliding window and were freed")
        self._len = [min(x, n) for x in self._len]
        del self.tokens[n:]
        del self.keys[n // bs:]
        keep = -(-max(self._len) // bs)
        for g in range(len(cache.groups)):
            for blk in self.tables[g][keep:]:
                if blk is not None:
                    self.pool.release(blk)
            del self.tables[g][keep:]

    def fork(self) -> BlockTable:
        """A new sequence sharing every block of this one (copy-on-write on either side)."""
        other = BlockTable(self.cache)
        other.tables = [[None if b is None else self.pool.acquire(b) for b in t] for t in self.tables]
        other.first, other._len = list(self.first), list(self._len)
        other.tokens, other.keys = list(self.tokens), list(self.keys)
        return other

    def release(self) -> None:
        """Give every block back (idempotent)."""
        if self.released:
            return
        for t in self.tables:
            for blk in t:
                if blk is not None:
                    self.pool.release(blk)
        self.tables = [[] for _ in self.tables]
        self.released = True
