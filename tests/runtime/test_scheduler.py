"""Scheduler and BatchEngine: continuous batching on a tiny random decoder. Requests join
and leave between steps, long prompts are prefilled in chunks beside running decodes,
requests behind a prompt prefix another request is prefilling wait for it (a burst
computes a shared system prompt once),
the KV budget makes requests wait or refuses them, cancel frees blocks, and 16 requests
in one batch give exactly the tokens each gives alone."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from support.families import BY_NAME, checkpoint_from_hf_dir, hf_model, prompt, save_hf  # noqa: E402

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.errors import InputError  # noqa: E402
from edgeformer.models import Decoder  # noqa: E402
from edgeformer.runtime.engine import Engine  # noqa: E402
from edgeformer.runtime.kv_cache import CapacityError, PagedKVCache  # noqa: E402
from edgeformer.runtime.sampler import SamplingParams  # noqa: E402
from edgeformer.runtime.scheduler import BatchEngine, Scheduler  # noqa: E402

from support.fakes import ByteTokenizer  # noqa: E402

pytest.importorskip("torch")
GREEDY = SamplingParams(temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf(hf_model(BY_NAME["qwen2"]), tmp_path_factory.mktemp("sched") / "qwen2")


@pytest.fixture(scope="module")
def decs(hf_dir):
    out = {"numpy": Decoder(checkpoint_from_hf_dir(hf_dir), get_backend("numpy"))}
    try:
        import numba  # noqa: F401
        out["cpu"] = Decoder(checkpoint_from_hf_dir(hf_dir), get_backend("cpu"))
    except ImportError:
        pass
    return out


def engine(dec, budget_pages=400, **kw) -> BatchEngine:
    c = dec.config
    page = 4 * c.n_kv_heads * c.head_dim * 2 * 4          # f32, block_size 4
    kw = {"kv_dtype": "f32", "block_size": 4, "prefill_chunk": 8, **kw}
    return BatchEngine(dec, ByteTokenizer(), kv_budget_bytes=budget_pages * page, **kw)


def prompts(n: int) -> list[list[int]]:
    return [[int(t) for t in prompt(3 + (5 * i) % 23, seed=100 + i)] for i in range(n)]


def tokens(handle) -> list[int]:
    return handle.result().token_ids


# ---- the scheduler alone ------------------------------------------------------------------------

def run_plan(s: Scheduler, plan: dict[int, int]) -> None:
    """What a model does with a plan: append each sequence's K/V, then advance it."""
    for sid, n in plan.items():
        toks, view = s.feed(sid)
        assert len(toks) == n
        for layer in range(2):
            view.update_and_fetch(layer, np.ones((n, 1, 4), np.float32), np.ones((n, 1, 4), np.float32))
        s.advance(sid)


def test_schedule_decodes_first_then_whole_prefill_chunks():
    cache = PagedKVCache(2, 1, 4, max_seq_len=128, num_pages=1000, block_size=4, dtype="f32")
    s = Scheduler(cache, max_batch=4, prefill_chunk=8, max_step_tokens=12)
    s.add(0, list(range(3)), 10)
    assert s.schedule() == {0: 3}
    run_plan(s, {0: 3})
    s.append(0, 7)
    s.add(1, list(range(20)), 30)
    s.add(2, list(range(100, 109)), 30)            # no prefix in common with request 1
    assert s.schedule() == {0: 1, 1: 8}           # request 2's chunk of 8 does not fit: waits whole
    run_plan(s, {0: 1, 1: 8})
    s.append(0, 8)
    assert s.schedule() == {0: 1, 1: 8}
    run_plan(s, {0: 1, 1: 8})
    s.finish(1)                                    # leaves between steps; its blocks are freed
    s.append(0, 9)
    assert s.schedule() == {0: 1, 2: 8}
    s.finish(0)
    s.finish(2)
    assert cache.pool.used_pages == 0 and not s.has_work


def test_requests_behind_a_prefix_in_flight_wait_for_it_and_others_go_ahead():
    cache = PagedKVCache(2, 1, 4, max_seq_len=128, num_pages=1000, block_size=4, dtype="f32")
    s = Scheduler(cache, max_batch=4, prefill_chunk=16, max_step_tokens=64)
    shared = list(range(1, 13))                      # 3 whole blocks
    s.add(0, shared + [50, 51], 30)
    s.add(1, shared + [60, 61, 62], 30)              # shares request 0's 3 blocks
    s.add(2, list(range(200, 210)), 30)              # shares nothing: goes ahead of request 1
    s.add(3, shared[:8] + [70, 71], 30)              # shares 2 blocks
    assert s.schedule() == {0: 14, 2: 10}
    assert s.prefix_waits == 2
    run_plan(s, {0: 14, 2: 10})
    s.append(0, 9)
    s.append(2, 9)
    # request 0's blocks are computed and cached: 1 and 3 start after them
    assert s.schedule() == {0: 1, 2: 1, 1: 3, 3: 2}
    assert s.running[1].cached_tokens == 12 and s.running[3].cached_tokens == 8
    assert s.prefix_waits == 2


def test_a_request_put_off_for_a_prefix_does_not_wait_for_one_that_leaves():
    cache = PagedKVCache(2, 1, 4, max_seq_len=128, num_pages=1000, block_size=4, dtype="f32")
    s = Scheduler(cache, max_batch=4, prefill_chunk=4, max_step_tokens=8)
    s.add(0, list(range(1, 21)), 30)                 # prefilled 4 tokens a step
    s.add(1, list(range(1, 17)) + [99], 30)
    assert s.schedule() == {0: 4}
    run_plan(s, {0: 4})
    assert s.schedule() == {0: 4}                    # blocks 1-3 are still in flight
    s.finish(0)                                      # cancelled before computing them
    assert s.schedule() == {1: 4}
    assert s.running[1].cached_tokens == 4           # the one block request 0 computed


def test_a_burst_behind_one_system_prompt_prefills_it_once(decs):
    if "cpu" not in decs:
        pytest.skip("numba missing")
    dec = decs["cpu"]           # bit-identical rows with or without prefix hits (cpu kernels)
    system = [int(t) for t in prompt(24, seed=5)]    # 6 blocks of 4
    ps = [system + [int(t) for t in prompt(2 + i, seed=40 + i)] for i in range(5)]
    eng = engine(dec, max_batch=8)
    hs = [eng.submit(p, GREEDY) for p in ps]
    eng.run_until_idle()
    m = eng.metrics()
    assert m["cached_prompt_tokens"] == 4 * 24 and m["prefix_waits"] >= 4
    assert m["prefill_tokens"] == sum(map(len, ps)) - 4 * 24
    for p, h in zip(ps, hs):
        alone = engine(dec)
        ha = alone.submit(p, GREEDY)
        alone.run_until_idle()
        assert alone.metrics()["cached_prompt_tokens"] == 0 and tokens(ha) == tokens(h)


# ---- the batch engine -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_sixteen_concurrent_requests_match_each_alone(decs, backend):
    if backend not in decs:
        pytest.skip("numba missing")
    dec = decs[backend]
    ps = prompts(16)
    params = [GREEDY if i % 4 else SamplingParams(temperature=0.9, seed=i, max_tokens=6) for i in range(16)]
    eng = engine(dec, max_batch=16)
    handles = [eng.submit(p, prm) for p, prm in zip(ps, params)]
    eng.run_until_idle()
    together = [tokens(h) for h in handles]
    assert eng.metrics()["kv_blocks_used"] == 0
    for i in range(16):
        alone = engine(dec)
        h = alone.submit(ps[i], params[i])
        alone.run_until_idle()
        assert tokens(h) == together[i], f"request {i}"
    # and it is the function the single-sequence Engine computes (greedy ids)
    ref = Engine(dec, ByteTokenizer(), n_ctx=128)
    for i in (1, 6):
        assert ref.generate(ps[i], GREEDY).token_ids == together[i]


def test_requests_join_and_leave_between_steps(decs):
    dec = decs["numpy"]
    ps = prompts(3)
    alone = []
    for p in ps:
        e = engine(dec)
        h = e.submit(p, GREEDY)
        e.run_until_idle()
        alone.append(tokens(h))
    eng = engine(dec)
    h0 = eng.submit(ps[0], GREEDY)
    eng.step()
    eng.step()
    h1 = eng.submit(ps[1], SamplingParams(temperature=0, max_tokens=2))   # joins, leaves early
    eng.step()
    h2 = eng.submit(ps[2], GREEDY)
    eng.run_until_idle()
    assert tokens(h0) == alone[0] and tokens(h2) == alone[2]
    assert tokens(h1) == alone[1][:2]


def test_long_prompt_is_chunked_beside_running_decodes(decs):
    eng = engine(decs["numpy"], prefill_chunk=8)
    plans = []
    schedule = eng.scheduler.schedule
    eng.scheduler.schedule = lambda: plans.append(schedule()) or plans[-1]
    stream = eng.submit(prompts(1)[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    eng.step()
    long = eng.submit([int(t) for t in prompt(40, seed=9)], GREEDY)
    eng.run_until_idle()
    chunks = [p[long.id] for p in plans if long.id in p]
    assert chunks[:5] == [8, 8, 8, 8, 8]              # 40 prompt tokens in 5 chunks ...
    assert all(p.get(stream.id) == 1 for p in plans[1:6])   # ... while the stream decodes
    assert len(tokens(stream)) == 20


def test_budget_makes_requests_wait_or_refuses_them(decs):
    dec = decs["numpy"]
    # qwen2: layer 0 full, layer 1 sliding (window 11); block 4, chunk 8: a 30-token request
    # needs <= 8 + 6 pages, a 110-token one 28 + 6
    eng = engine(dec, budget_pages=30)
    with pytest.raises(CapacityError, match="KV budget"):
        eng.submit(list(range(10)), SamplingParams(max_tokens=100))
    ps = [[int(t) for t in prompt(10, seed=s)] for s in range(4)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    handles = [eng.submit(p, params) for p in ps]
    eng.step()
    m = eng.metrics()
    assert m["running"] == 2 and m["queued"] == 2
    eng.run_until_idle()
    for p, h in zip(ps, handles):
        solo = engine(dec)
        hs = solo.submit(p, params)
        solo.run_until_idle()
        assert tokens(h) == tokens(hs)
    assert eng.metrics()["kv_blocks_used"] == 0
    with pytest.raises(InputError, match="context"):
        eng.submit(list(range(200)), params)


def test_cancel_frees_the_blocks(decs):
    eng = engine(decs["numpy"])
    a = eng.submit(prompts(2)[1], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    b = eng.submit(prompts(3)[2], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    for _ in range(4):
        eng.step()
    assert eng.metrics()["kv_blocks_used"] > 0
    a.cancel()
    b.cancel()
    eng.step()
    assert eng.metrics()["kv_blocks_used"] == 0 and eng.metrics()["running"] == 0
    events = list(a.events())
    assert events[-1].finish_reason == "cancelled" and all(e.finish_reason is None for e in events[:-1])


def test_background_thread_serves_concurrent_submitters(decs):
    dec = decs["numpy"]
    eng = engine(dec)
    eng.start()
    try:
        ps = prompts(4)
        results: dict[int, list[int]] = {}

        def client(i: int) -> None:
            h = eng.submit(ps[i], GREEDY, stop=["\x00\x01"])
            results[i] = [e.token_id for e in h.events() if not e.is_stop_token]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        eng.stop()
    for i in range(4):
        solo = engine(dec)
        h = solo.submit(ps[i], GREEDY)
        solo.run_until_idle()
        assert results[i] == tokens(h)
    m = eng.metrics()
    assert m["tokens_generated"] >= 4 and m["kv_blocks_used"] == 0 and m["queued"] == 0


def test_requests_without_max_tokens_reserve_as_they_grow(decs):
    """Issue 16: a request without max_tokens (the server passes the whole context) once
    reserved its worst case at admission, so 2 of 8 short requests ran and the others
    queued. Now all 8 start at once; when they outgrow the budget, the newest are
    preempted and recomputed, and every one still gets its exact greedy output."""
    dec = decs["numpy"]
    eng = engine(dec, budget_pages=120, max_batch=16)
    n_ctx = eng.n_ctx
    assert eng.cache.pages_for(n_ctx) * 3 <= 120 < eng.cache.pages_for(n_ctx) * 4   # worst case: 3 at once
    ps = [[int(t) for t in prompt(10, seed=s)] for s in range(8)]
    params = [SamplingParams(temperature=0, max_tokens=eng.room(len(p)), ignore_eos=True) for p in ps]
    handles = [eng.submit(p, prm) for p, prm in zip(ps, params)]
    eng.step()
    m = eng.metrics()
    assert m["running"] == 8 and m["queued"] == 0
    eng.run_until_idle()
    m = eng.metrics()
    assert m["preemptions"] > 0 and m["kv_blocks_used"] == 0 and m["running"] == m["queued"] == 0
    outs = [h.result() for h in handles]
    assert all(o.finish_reason == "length" and len(o.token_ids) == n_ctx - 10 for o in outs)
    for i in (0, 7):            # the oldest (never preempted) and the newest (preempted first)
        solo = engine(dec)
        h = solo.submit(ps[i], params[i])
        solo.run_until_idle()
        assert tokens(h) == outs[i].token_ids, f"request {i}"


def test_room_is_what_the_context_and_the_budget_leave(decs):
    eng = engine(decs["numpy"], budget_pages=30)
    r = eng.room(10)
    assert 0 < r < eng.n_ctx - 10
    assert eng.cache.pages_for(10 + r) <= 30 < eng.cache.pages_for(10 + r + 1)
    eng.submit(list(range(10)), SamplingParams(max_tokens=r))
    with pytest.raises(CapacityError):
        eng.submit(list(range(10)), SamplingParams(max_tokens=r + 1))
    assert engine(decs["numpy"]).room(10) == engine(decs["numpy"]).n_ctx - 10
