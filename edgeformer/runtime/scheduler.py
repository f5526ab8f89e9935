"""Continuous batching: `Scheduler` (which sequences run how many tokens this step) and
`BatchEngine` (a background step loop over a Decoder, a PagedKVCache and the Scheduler).

The scheduler emits `{seq_id: n_tokens}` and knows nothing about the model (vLLM v1's
interface). Each step: every running sequence that is decoding gets 1 token; sequences
still prefilling get their next chunk of exactly `min(prefill_chunk, left)` tokens, FCFS,
while the step's token budget allows (a chunk that does not fit waits whole for the next
step, it is never cut: a sequence's chunk boundaries then depend only on itself, which
batch invariance needs).

KV reservation grows with the sequence (vLLM's policy): a waiting request is admitted
while the batch has room and the free pages cover its prompt plus `headroom` tokens
(minus prefix-cache hits) on top of what running sequences have reserved; a decoding
sequence about to pass its reservation extends it by `headroom` tokens. When the pages
are not there, the most recently admitted running sequence is preempted: its blocks are
freed and it goes back to the front of the queue with its tokens so far as its prompt,
to be recomputed (with prefix-cache hits) when pages free up. So a request without
max_tokens, which may grow to the whole context, holds only what it uses, and short
requests are not queued behind reservations. A request whose worst case (prompt + max
new tokens) could never fit the budget is refused at submit with CapacityError, so a
sequence alone always has the pages to finish.

Prefix sharing in flight: a waiting request whose prompt shares whole blocks (beyond what
the prefix cache already holds) with a prompt that a running sequence is still
prefilling is not admitted until those blocks are computed (or their sequence leaves);
requests after it that share nothing go ahead. A burst of requests behind one system
prompt then computes it once and starts the others from the cache (serve_load's burst,
8 clients behind one new ~500-token system prompt on SmolLM2: 3,447-4,215 -> 743 prompt
tokens prefilled; BENCHMARKS.md).

Speculative decoding (`BatchEngine(..., speculative=SpeculativeConfig)`, the server's
`--lookup` / `--draft`): a decoding sequence's step runs its next token plus up to
`num_draft` tokens proposed by its own drafter (forked per sequence) in the same batched
forward; the target's logits at every one of those rows are verified by
`speculative.verify` (greedy: accept while a draft is the argmax; sampled: the
speculative-sampling rule, which keeps the target distribution), the accepted drafts and
the token before them are committed to the paged cache, the rejected positions are
truncated away, and the emitted tokens go through the same stop/budget logic one by one.
Drafts never run past the request's `max_len`, so the KV reservation is unchanged; each
decode reserves 1 + num_draft tokens of the step's token budget. Greedy output equals
non-speculative batching token for token where rows are batch-invariant (the cpu
backend's kernels, attention included); on numpy, whose attention is a BLAS matmul, a
multi-row verify may round differently from a one-row decode (a near tie could flip).
Drafting runs per sequence, outside the batched forward (a draft model's k one-token
passes are not batched across sequences), and a draft model's per-sequence KV caches
(contiguous, growing with the sequence) live outside the KV budget.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from edgeformer.backends.row_invariant import row_invariant_linear
from edgeformer.errors import EdgeformerError, InputError
from edgeformer.runtime.drafters import Drafter
from edgeformer.runtime.events import GenerationResult, TokenEmitter, TokenEvent, collect
from edgeformer.runtime.kv_cache import BlockTable, CapacityError, PagedKVCache
from edgeformer.runtime.memory import check_fits
from edgeformer.runtime.sampler import SamplingParams, TokenPicker, make_rng
from edgeformer.runtime.speculative import SpeculativeConfig, verify
from edgeformer.runtime.warmup import warm_paged

log = logging.getLogger("edgeformer.batch")


@dataclass
class SeqState:
    """One request as the scheduler sees it: token ids (prompt, then generated), how many
    have K/V in the cache (`computed`), the most it may grow to (`max_len`)."""

    seq_id: int
    tokens: list[int]
    max_len: int
    n_prompt: int
    view: BlockTable | None = None
    computed: int = 0
    cached_tokens: int = 0
    scheduled: int = 0
    reserved: int = 0      # length up to which KV pages are reserved (<= max_len)
    preempted: int = 0     # times its blocks were taken back
    # its prompt's `PagedKVCache.prompt_keys`: which blocks it could share with sequences in
    # flight or take from the cache
    keys: list[bytes] = field(default_factory=list)

    @property
    def prefilling(self) -> bool:
        return self.computed < self.n_prompt

    @property
    def kv(self) -> BlockTable:
        """The cache view, which every admitted (running) sequence has."""
        assert self.view is not None, f"sequence {self.seq_id} is not admitted"
        return self.view


class Scheduler:
    """FCFS continuous batching over a PagedKVCache (see the module docstring).

    `add(seq_id, prompt_ids, max_len)` queues a request; `schedule()` admits what fits and
    returns {seq_id: n_tokens}; the caller runs those tokens (`feed(seq_id)` gives them
    and the sequence's cache view), then calls `advance(seq_id)`; a sequence that ends its
    prompt or decodes gets its next token through `append(seq_id, tok)`, or `finish`."""

    def __init__(self, cache: PagedKVCache, max_batch: int = 16, prefill_chunk: int = 256,
                 max_step_tokens: int | None = None, lookahead: int = 0, headroom: int | None = None) -> None:
        if max_batch < 1 or prefill_chunk < 1 or lookahead < 0 or (headroom is not None and headroom < 1):
            raise InputError(f"max_batch, prefill_chunk and headroom must be >= 1 and lookahead >= 0, got "
                             f"{max_batch}, {prefill_chunk}, {headroom}, {lookahead}")
        self.cache, self.max_batch, self.prefill_chunk = cache, max_batch, prefill_chunk
        # tokens reserved past what a sequence needs now: 4 blocks (64 tokens at block 16)
        # makes a decoding sequence extend its reservation every 64 tokens
        self.headroom = headroom or 4 * cache.block_size
        self.preemptions = 0
        self.prefix_waits = 0       # admissions put off a step for a prefix in flight (`_admit`)
        self.lookahead = lookahead     # draft tokens a decode may add to its step (speculative)
        # room for one full chunk beside a full batch of decodes: every step makes progress
        self.max_step_tokens = max(max_step_tokens or 0, prefill_chunk + max_batch * (1 + lookahead))
        self.waiting: deque[SeqState] = deque()
        self.running: dict[int, SeqState] = {}

    def add(self, seq_id: int, prompt_ids: Sequence[int], max_len: int) -> SeqState:
        """Queue a request that may grow to max_len tokens. CapacityError if even an empty
        KV cache could not hold it; InputError past the cache's context."""
        if not prompt_ids:
            raise InputError("empty prompt")
        if max_len > self.cache.max_seq_len:
            raise InputError(f"prompt + max new tokens = {max_len} exceeds the context of {self.cache.max_seq_len}")
        need = self.cache.pages_for(max_len)
        if need > self.cache.pool.num_pages:
            raise CapacityError(f"request needs up to {need} KV blocks ({max_len} tokens) but the KV budget "
                                f"holds {self.cache.pool.num_pages}; raise kv_budget_bytes or lower max_tokens")
        st = SeqState(seq_id, [int(t) for t in prompt_ids], max_len, len(prompt_ids))
        st.keys = self.cache.prompt_keys(st.tokens)
        self.waiting.append(st)
        return st

    def _outstanding(self) -> int:
        """Pages that running sequences have reserved but not allocated yet."""
        return sum(s.kv.future_pages(s.reserved) for s in self.running.values())

    def _admit(self) -> None:
        """Admit waiting requests in order while the batch and the pages have room. A request
        whose prompt shares whole blocks, past what the prefix cache holds, with a prefix that
        a running sequence is still prefilling waits for it (a burst of prompts behind one
        system prompt computes that prefix once, not once per request); later requests may go
        ahead of it. It waits only while those blocks are in flight: they are computed within
        the next steps, or leave with their sequence."""
        bs = self.cache.block_size
        in_flight = {k for s in self.running.values() if s.prefilling for k in s.keys[s.computed // bs:]}
        i = 0
        while i < len(self.waiting) and len(self.running) < self.max_batch:
            st = self.waiting[i]
            view = self.cache.new_sequence(st.tokens[:st.n_prompt], st.keys)
            if any(k in in_flight for k in st.keys[view.offset // bs:]):
                view.release()
                self.prefix_waits += 1      # one per request and step put off
                i += 1
                continue
            reserve = min(st.max_len, st.n_prompt + self.headroom)
            if view.future_pages(reserve) + self._outstanding() > self.cache.pool.free_pages:
                view.release()           # FCFS: later requests wait behind it
                return
            del self.waiting[i]
            st.view, st.computed, st.cached_tokens, st.reserved = view, view.offset, view.offset, reserve
            self.running[st.seq_id] = st
            in_flight.update(st.keys[st.computed // bs:])

    def _grow(self) -> None:
        """Extend the reservation of each decoding sequence about to pass it (oldest
        first), preempting the newest running sequences when the pages are not there."""
        for st in list(self.running.values()):
            if st.seq_id not in self.running or st.prefilling:
                continue
            need = min(st.max_len, st.computed + 1 + self.lookahead)
            if need <= st.reserved:
                continue
            new = min(st.max_len, need + self.headroom)
            while st.seq_id in self.running:
                extra = st.kv.future_pages(new) - st.kv.future_pages(st.reserved)
                if extra + self._outstanding() <= self.cache.pool.free_pages:
                    st.reserved = new
                    break
                # add() made sure a sequence alone fits: this ends with st extended or preempted
                self.preempt(next(reversed(self.running)))

    def preempt(self, seq_id: int) -> None:
        """Free a running sequence's blocks and queue it first, to be recomputed from its
        tokens so far (prompt and generated) when pages free up."""
        st = self.running.pop(seq_id)
        st.kv.release()
        st.view, st.computed, st.scheduled, st.reserved = None, 0, 0, 0
        st.n_prompt = len(st.tokens)
        st.keys = self.cache.prompt_keys(st.tokens)
        st.preempted += 1
        self.preemptions += 1
        self.waiting.appendleft(st)

    def schedule(self) -> dict[int, int]:
        """Grow or preempt, admit waiting requests that fit, then {seq_id: tokens to run
        this step}."""
        self._grow()
        self._admit()
        out: dict[int, int] = {}
        budget = self.max_step_tokens
        for st in self.running.values():            # decodes first: streams never stall
            if not st.prefilling:
                out[st.seq_id] = 1
                budget -= 1 + self.lookahead
        for st in self.running.values():            # then whole prefill chunks, FCFS
            if st.prefilling:
                n = min(self.prefill_chunk, len(st.tokens) - st.computed)
                if n <= budget:
                    out[st.seq_id] = n
                    budget -= n
        for sid, n in out.items():
            self.running[sid].scheduled = n
        return out

    def feed(self, seq_id: int) -> tuple[list[int], BlockTable]:
        """The scheduled token ids of seq_id and its cache view."""
        st = self.running[seq_id]
        return st.tokens[st.computed:st.computed + st.scheduled], st.kv

    def advance(self, seq_id: int, accepted: Sequence[int] = ()) -> bool:
        """Mark the scheduled tokens computed (committing them to the cache). True when the
        sequence now wants its next token sampled (its whole context is computed).
        After a speculative verify pass (the scheduled token ran with drafts after it):
        `accepted` are the drafts kept, appended to the sequence and committed with it;
        the K/V of the drafts after them are dropped."""
        st = self.running[seq_id]
        acc = [int(t) for t in accepted]
        keep = st.computed + st.scheduled + len(acc)
        if st.kv.offset > keep:                # rejected drafts ran: forget them
            st.kv.truncate(keep)
        st.kv.commit(st.tokens[st.computed:st.computed + st.scheduled] + acc)
        st.tokens.extend(acc)
        st.computed = keep
        st.scheduled = 0
        return st.computed == len(st.tokens)

    def rollback(self, seq_id: int) -> None:
        """Undo a failed step: forget K/V past the committed tokens."""
        st = self.running[seq_id]
        st.kv.truncate(st.computed)
        st.scheduled = 0

    def append(self, seq_id: int, token: int) -> None:
        self.running[seq_id].tokens.append(int(token))

    def finish(self, seq_id: int) -> None:
        """Remove a request (running or waiting) and free its KV blocks now."""
        st = self.running.pop(seq_id, None)
        if st is not None:
            st.kv.release()
            return
        self.waiting = deque(s for s in self.waiting if s.seq_id != seq_id)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)


# ---- the batch engine -----------------------------------------------------------------------

class RequestHandle:
    """A submitted request. `events()` yields its TokenEvents (blocking) and ends after the
    one with `finish_reason` ("stop" | "length" | "cancelled"); a request that failed
    raises its error from `events()` after the events before it. `cancel()` is safe from
    any thread: the request's KV blocks are freed at the next step."""

    def __init__(self, engine: BatchEngine, rid: int, prompt_ids: list[int]) -> None:
        self.id, self.prompt_ids = rid, prompt_ids
        self._engine = engine
        self._queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def events(self) -> Iterator[TokenEvent]:
        while True:
            ev = self._queue.get()
            if isinstance(ev, BaseException):
                raise ev
            yield ev
            if ev.finish_reason is not None:
                return

    def result(self) -> GenerationResult:
        """Wait for the end and fold the events into a GenerationResult."""
        return collect(self.events(), self.prompt_ids, True)

    def cancel(self) -> None:
        self._engine._cancel(self.id)


@dataclass
class _Request:
    handle: RequestHandle
    em: TokenEmitter                      # its events: stops, budget, logprobs, stats
    picker: TokenPicker                   # its sampling rule (shared by drafter and verifier)
    drafter: Drafter | None = None        # speculative: this sequence's drafter (taken at its first round)


class BatchEngine:
    """Continuous-batching generation over `model` (a Decoder: `forward_batch`) with a paged
    KV cache of `kv_budget_bytes` in `kv_dtype`. `submit` is thread-safe; `start()` runs
    the step loop in a background thread (`stop()` ends it), or call `step()` yourself.
    `batch_invariant`: compute linears so each row's bits do not depend on the batch
    (see `backends/row_invariant.py`); with it, a greedy request's output is the same alone or
    beside others (given the same prefix-cache hits). `speculative`: a
    `SpeculativeConfig` to decode by draft-and-verify rounds inside the batched steps
    (module docstring); InputError now if its drafter does not fit the model."""

    def __init__(self, model, tokenizer, *, kv_budget_bytes: int, kv_dtype: str = "f16", block_size: int = 16,
                 max_batch: int = 16, prefill_chunk: int = 256, n_ctx: int | None = None,
                 prefix_sharing: bool = True, batch_invariant: bool = True,
                 speculative: SpeculativeConfig | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        max_len = int(model.config.max_seq_len)
        self.n_ctx = min(max_len, 4096) if n_ctx is None else int(n_ctx)
        if not 2 <= self.n_ctx <= max_len:
            raise InputError(f"n_ctx={n_ctx} must be in [2, {max_len}] (the model's context)")
        self.vocab_size = int(model.config.vocab_size)
        check_fits(kv_budget_bytes, f"a KV budget of {kv_budget_bytes} bytes")   # pages are zeroed lazily
        self.cache = PagedKVCache.for_model(model, budget_bytes=kv_budget_bytes, dtype=kv_dtype,
                                            block_size=block_size, max_seq_len=self.n_ctx,
                                            max_chunk=prefill_chunk, prefix_sharing=prefix_sharing,
                                            paged_views=model.backend.paged_attention)
        warm_paged(model, self.cache)
        self.speculative = speculative
        if speculative is not None:
            speculative.bind(self.vocab_size, self.n_ctx)     # InputError for a mismatched draft
        self.scheduler = Scheduler(self.cache, max_batch=max_batch, prefill_chunk=prefill_chunk,
                                   lookahead=speculative.num_draft if speculative is not None else 0)
        self._linear = row_invariant_linear(model.ops) if batch_invariant else None
        self._free_drafters: list[Drafter] = []  # forked drafters of finished requests, for reuse
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._requests: dict[int, _Request] = {}
        self._cancels: set[int] = set()
        self._next_id = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._counters = {"tokens_generated": 0, "steps": 0, "prefill_tokens": 0, "cached_prompt_tokens": 0,
                          "last_batch_tokens": 0}
        if speculative is not None:
            self._counters.update(spec_rounds=0, spec_draft_tokens=0, spec_accepted_tokens=0)

    # ---- requests ----

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
               stop: Sequence[str] | None = None) -> RequestHandle:
        """Queue a completion of `prompt_ids`; `stop` adds stop strings to params.stop.
        InputError for an empty prompt, ids outside the vocabulary, a prompt that leaves
        no room in n_ctx, or a grammar (params.grammar) that does not compile; CapacityError
        if the KV budget could never hold the request."""
        params = params or SamplingParams()
        if stop:
            params = replace(params, stop=tuple(params.stop) + tuple(stop))
        params.check_vocab(self.vocab_size)
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise InputError("empty prompt (no tokens)")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InputError(f"prompt token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        if len(ids) >= self.n_ctx:
            raise InputError(f"prompt is {len(ids)} tokens; the context holds {self.n_ctx} (prompt + output)")
        budget = min(params.max_tokens, self.n_ctx - len(ids))
        # one rng: the first token, drafts and verification draw from it; a grammar that
        # does not compile fails here, before the request holds anything
        picker = TokenPicker(params, self.vocab_size, make_rng(params.seed), self.tokenizer)
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            handle = RequestHandle(self, rid, ids)
            self.scheduler.add(rid, ids, len(ids) + budget)       # CapacityError: refused now
            self._requests[rid] = _Request(handle, TokenEmitter(self.tokenizer, ids, budget, params), picker)
            self._wake.notify_all()
        return handle

    def room(self, n_prompt: int) -> int:
        """The most new tokens a request with an `n_prompt`-token prompt may ask for: what
        the context leaves, capped by what the whole KV budget holds (0: nothing fits)."""
        hi = max(0, self.n_ctx - n_prompt)
        if self.cache.pages_for(n_prompt + hi) <= self.cache.pool.num_pages:
            return hi
        lo = 0                       # pages_for grows with the length: bisect the largest that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.cache.pages_for(n_prompt + mid) <= self.cache.pool.num_pages:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _cancel(self, rid: int) -> None:
        with self._lock:
            if rid in self._requests:
                self._cancels.add(rid)
                self._wake.notify_all()

    # ---- the step loop ----

    def start(self) -> None:
        """Run steps in a background thread until stop()."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="edgeformer-batch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the background loop (requests in flight stay queued)."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._cancels and not self.scheduler.has_work:
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()

    def run_until_idle(self) -> None:
        """Step until no request is running or waiting (for callers without the thread)."""
        while self.step():
            pass

    def step(self) -> bool:
        """One scheduler step: cancels, admission, one batched forward, sampling. Returns
        False when there was nothing to run."""
        with self._lock:
            for rid in self._cancels:
                if rid in self._requests:
                    self.scheduler.finish(rid)
                    self._end(rid, self._requests[rid].em.cancelled())
            self._cancels.clear()
            plan = self.scheduler.schedule()
            feeds = {sid: self.scheduler.feed(sid) for sid in plan}
            rounds = self._rounds(plan, self.speculative) if self.speculative is not None else {}
        drafts, failed = self._propose(rounds) if rounds else ({}, set())
        if failed:
            plan = {sid: n for sid, n in plan.items() if sid not in failed}
        if not plan:
            return self.scheduler.has_work
        seqs = [(np.asarray(feeds[sid][0] + drafts.get(sid, ([], None))[0], dtype=np.int64), feeds[sid][1])
                for sid in plan]
        try:
            if drafts:   # every row of a verified sequence, the last row of the others
                rows, row = [], 0
                for sid, (toks, _) in zip(plan, seqs):
                    rows += list(range(row, row + len(toks))) if sid in drafts else [row + len(toks) - 1]
                    row += len(toks)
                logits = self.model.forward_batch(seqs, last_only=False, linear=self._head_rows(rows))
            else:
                logits = self.model.forward_batch(seqs, last_only=True, linear=self._linear)
        except Exception as e:   # noqa: BLE001 - fail the requests of this step, keep serving
            with self._lock:
                for sid in plan:
                    self.scheduler.rollback(sid)
                    self.scheduler.finish(sid)
                    self._fail(sid, e)
            return True
        with self._lock:
            self._counters["steps"] += 1
            self._counters["last_batch_tokens"] = sum(len(t) for t, _ in seqs)
            for sid, lg in zip(plan, logits):
                if sid not in self._requests:
                    continue
                if sid in drafts:
                    self._verify(sid, np.asarray(lg, dtype=np.float32), *drafts[sid])
                    continue
                if self.scheduler.running[sid].prefilling or plan[sid] > 1:
                    self._counters["prefill_tokens"] += plan[sid]
                if self.scheduler.advance(sid):
                    self._sample(sid, np.asarray(lg, dtype=np.float32)[-1])
        return True

    # ---- speculative rounds ----

    def _rounds(self, plan: dict[int, int], spec: SpeculativeConfig
                ) -> dict[int, tuple[_Request, Drafter, np.ndarray, int]]:
        """(request, its drafter, its tokens so far, draft length) of each decoding sequence
        of `plan` that will speculate this step (called under the lock)."""
        out = {}
        for sid, n in plan.items():
            st, req = self.scheduler.running[sid], self._requests.get(sid)
            if req is None or n != 1 or st.prefilling or st.computed + 1 != len(st.tokens):
                continue
            if req.picker.constraint is not None:      # drafts are not grammar-masked: decode plainly
                continue
            k = min(spec.num_draft, req.em.budget - req.em.i - 1)   # never past the budget
            if k > 0:
                if req.drafter is None:
                    req.drafter = self._free_drafters.pop() if self._free_drafters else \
                        spec.fork_drafter()
                    req.drafter.bind(self.vocab_size, self.n_ctx)
                out[sid] = (req, req.drafter, req.em.context, k)
        return out

    def _propose(self, rounds: dict[int, tuple[_Request, Drafter, np.ndarray, int]]
                 ) -> tuple[dict[int, tuple[list[int], list[np.ndarray] | None]], set[int]]:
        """Each round's drafts and their q (outside the lock: a draft model runs here), and
        the requests whose drafter failed (they fail, the others go on); a drafter that
        proposes nothing leaves a plain decode step."""
        out, failed = {}, set()
        for sid, (req, drafter, seq, k) in rounds.items():
            try:
                d = drafter.propose(seq, k, req.picker)
                toks = [int(t) for t in d.tokens[:k]]
                if any(not 0 <= t < self.vocab_size for t in toks):
                    raise EdgeformerError(f"the drafter proposed a token outside the vocabulary: {toks}")
            except Exception as e:   # noqa: BLE001 - this request fails, the others go on
                log.exception("drafter failed on request %d", sid)
                with self._lock:
                    self.scheduler.rollback(sid)
                    self.scheduler.finish(sid)
                    self._fail(sid, e)
                failed.add(sid)
                continue
            if toks:
                out[sid] = (toks, None if d.q is None else list(d.q[:len(toks)]))
        return out, failed

    def _head_rows(self, rows: list[int]):
        """The step's linear, with the output projection ("result_output") computed only
        for `rows` (zeros elsewhere): a verify pass needs logits at every row of its
        sequences, prefill chunks only at their last. Row-invariant linears give those
        rows the same bits as a full projection."""
        base = self._linear or self.model.ops.linear
        idx = np.asarray(rows, dtype=np.int64)

        def linear(x: np.ndarray, w, b=None, *, name: str | None = None, layer: int | None = None) -> np.ndarray:
            if name != "result_output" or idx.size == x.shape[0]:
                return base(x, w, b, name=name, layer=layer)
            part = base(np.ascontiguousarray(x[idx]), w, b, name=name, layer=layer)
            out = np.zeros((x.shape[0],) + part.shape[1:], dtype=part.dtype)
            out[idx] = part
            return out
        return linear

    def _verify(self, rid: int, logits: np.ndarray, drafts: list[int], q: list[np.ndarray] | None) -> None:
        """Verify one sequence's round (logits: its (1 + len(drafts), vocab) rows), keep
        the accepted drafts in the cache and emit the round's tokens (under the lock)."""
        req = self._requests[rid]
        em = req.em
        em.ctx[em.n:em.n + len(drafts)] = drafts
        try:
            out = verify(req.picker, em.ctx, em.n, drafts, q, logits)
        except EdgeformerError as e:   # NaN logits
            self.scheduler.rollback(rid)
            self.scheduler.finish(rid)
            self._fail(rid, EdgeformerError(f"request {rid}: {e}"))
            return
        a = len(out) - 1
        self.scheduler.advance(rid, out[:a])
        c = self._counters
        c["spec_rounds"] += 1
        c["spec_draft_tokens"] += len(drafts)
        c["spec_accepted_tokens"] += a
        for j, tok in enumerate(out):
            self._emit(rid, tok, logits[j], appended=j < a)
            if rid not in self._requests:     # finished (stop, EOS or budget) inside the run
                return

    def _end(self, rid: int, ev: TokenEvent) -> None:
        req = self._requests.pop(rid)
        self._return_drafter(req)
        req.handle.finish_reason = ev.finish_reason
        req.handle._queue.put(ev)

    def _fail(self, rid: int, err: BaseException) -> None:
        req = self._requests.pop(rid, None)
        if req is not None:
            self._return_drafter(req)
            req.handle.error = err
            req.handle._queue.put(err)

    def _return_drafter(self, req: _Request) -> None:
        """Keep a finished request's forked drafter (and its cache) for the next one."""
        drafter, req.drafter = req.drafter, None
        if drafter is None:
            return
        assert self.speculative is not None     # only speculative rounds hand out drafters
        if drafter is not self.speculative.drafter and len(self._free_drafters) < self.scheduler.max_batch:
            self._free_drafters.append(drafter)

    def _sample(self, rid: int, logits: np.ndarray) -> None:
        req = self._requests[rid]
        try:
            tok = req.picker.next_token(req.em.context, logits)
        except EdgeformerError as e:   # NaN logits
            self.scheduler.finish(rid)
            self._fail(rid, EdgeformerError(f"request {rid}: {e}"))
            return
        self._emit(rid, tok, logits)

    def _emit(self, rid: int, tok: int, logits: np.ndarray, appended: bool = False) -> None:
        """Send the event of token `tok` (drawn from raw `logits`); a token that does not
        end the request is appended to the sequence unless `appended` (an accepted draft,
        already in it)."""
        req = self._requests[rid]
        em = req.em
        if em.i == 0:
            cached = self.scheduler.running[rid].cached_tokens
            em.prefilled(cached)
            self._counters["cached_prompt_tokens"] += cached
        self._counters["tokens_generated"] += 1
        ev = em.emit(tok, logits)
        if em.done:
            self.scheduler.finish(rid)
            self._end(rid, ev)
            return
        if not appended:
            self.scheduler.append(rid, tok)
        req.handle._queue.put(ev)

    def metrics(self) -> dict[str, int]:
        """KV blocks (total/used/free; a block = block_size tokens of one layer), running
        batch size, queued requests, preemptions, admissions put off for a prefix in flight,
        tokens generated, steps."""
        with self._lock:
            return {**self.cache.metrics(), "running": len(self.scheduler.running),
                    "queued": len(self.scheduler.waiting), "preemptions": self.scheduler.preemptions,
                    "prefix_waits": self.scheduler.prefix_waits,
                    **self._counters}
