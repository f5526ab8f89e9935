"""Server load: `edgeformer serve` vs llama.cpp's server (`python -m llama_cpp.server`) on
the same GGUF file and thread count, measured in one run by the same streaming client.

Question: how do throughput and latency scale with concurrent clients, and how do they
compare with llama.cpp? For each concurrency level c (default 1, 4, 16), c closed-loop
clients send streaming chat requests (greedy, end-of-generation tokens banned with
`logit_bias`, so every request produces exactly --max-tokens tokens) until
max(`--min-requests`, `--requests-per-client` * c) are done. Reported per level:
requests/s; output tok/s (all generated tokens / wall time, prefill included); decode
tok/s (tokens after each stream's first / time during which any stream was decoding);
TTFT p50/p99 (request sent -> first content chunk); inter-token latency p50/p99 (gaps
between content chunks of one stream; a chunk is one token unless text was held back).
Then prefix sharing: TTFT of a request with a ~500-token system prompt, cold (first
time) and warm (same system prompt, new question: the cached prefix is reused); and a
burst: --burst clients at once, each with the same new ~500-token system prompt and its
own question, while 4 other streams decode (TTFT p50 and of the last client, prompt
tokens the server prefilled meanwhile: the 4 streams' decode steps add none).

    python bench/serve_load.py                      # SmolLM2 (shipped), backend cpu, 2 threads
    python bench/serve_load.py --levels 1,4 --skip-llama-cpp
    python bench/serve_load.py --ray                # `edgeformer serve --ray` (needs the ray extra)

With --ray (writes bench/results/serve_load_ray.json): the same closed loop at each
--levels concurrency (default 16) against `edgeformer serve --ray` with 1 and then 2
replicas of 1 thread each (prefix routing), then a multi-turn workload on 2 replicas with
prefix-aware and with round-robin routing: --conversations clients, each with its own
~200-token system prompt, run --turns turns (each turn's prompt = the conversation so
far + a new question); reported: TTFT p50/p99 of the later turns, output tok/s, and the
prompt tokens the replicas served from their prefix caches (from the ingress's /metrics).

llama.cpp's server needs its extra's packages: `pip install sse-starlette starlette-context
pydantic-settings` (or --skip-llama-cpp).

Writes bench/results/serve_load.json and prints a table. llama-cpp-python's server runs
one request at a time (no parallel slots in its Python server); its numbers at c > 1
show that queueing.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

TOPICS = ["the sea", "a robot", "autumn", "a lighthouse", "bread", "a train", "the moon", "a cat", "mountains",
          "a library", "rain", "a violin", "deserts", "a garden", "winter", "a bridge"]
SYSTEM_SENTENCE = ("You are a careful assistant for an edge-device company. Answer briefly, cite the manual section "
                   "when relevant, and never invent specifications. ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_edgeformer(model: str, port: int, backend: str, threads: int, kv_budget: str, max_batch: int,
                     n_ctx: int) -> subprocess.Popen:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "edgeformer.cli", "serve", model, "--port", str(port),
                             "--backend", backend, "--kv-budget", kv_budget, "--max-batch", str(max_batch),
                             "-c", str(n_ctx), "--model-name", "bench", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_edgeformer_ray(model: str, port: int, backend: str, replicas: int, routing: str, kv_budget: str,
                        max_batch: int, n_ctx: int) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "edgeformer.cli", "serve", model, "--port", str(port),
                             "--backend", backend, "--kv-budget", kv_budget, "--max-batch", str(max_batch),
                             "-c", str(n_ctx), "--model-name", "bench", "--ray", "--replicas", str(replicas),
                             "--threads-per-replica", "1", "--routing", routing],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_llama_cpp(model: str, port: int, threads: int, n_ctx: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", "bench",
                             "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                             "--n_ctx", str(n_ctx), "--verbose", "False",
                             # queue concurrent requests instead of aborting the running one
                             "--interrupt_requests", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not come up")


async def stream_chat(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int,
                      bias: dict[str, float]) -> dict:
    """One streaming greedy chat request; arrival times of content chunks."""
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "logit_bias": bias}
    t0 = time.perf_counter()
    times, finish, text = [], None, []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            for ch in obj.get("choices", []):
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    times.append(time.perf_counter())
                    text.append(piece)
                finish = ch.get("finish_reason") or finish
    end = time.perf_counter()
    # tokens, not chunks: text held back (partial UTF-8, stop strings) merges tokens into one
    # chunk; EOS is banned, so a "length" finish means exactly max_tokens tokens
    n_tok = max_tokens if finish == "length" else len(times)
    decode = (n_tok - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return {"ttft": times[0] - t0 if times else float("nan"), "itl": list(np.diff(times)), "chunks": len(times),
            "decode_tok_s": decode, "n_tok": n_tok, "span": (times[0], times[-1]) if times else None,
            "finish": finish, "latency": end - t0, "text": "".join(text)}


async def run_level(url: str, concurrency: int, n_requests: int, max_tokens: int, bias: dict) -> dict:
    """Closed loop: `concurrency` workers send requests until n_requests are done."""
    todo = list(range(n_requests))
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900), limits=limits) as client:
        async def worker() -> None:
            while todo:
                i = todo.pop(0)
                msgs = [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]} "
                                                    f"(number {i})."}]
                results.append(await stream_chat(client, url, msgs, max_tokens, bias))
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results]
    itl = [x for r in results for x in r["itl"]]
    toks = n_requests * max_tokens
    return {"concurrency": concurrency, "requests": n_requests, "wall_s": wall, "req_s": n_requests / wall,
            "out_tok_s": toks / wall,
            "decode_tok_s": decode_rate(results),
            "stream_decode_tok_s_p50": float(np.nanmedian([r["decode_tok_s"] for r in results])),
            "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)),
            "ttft_p99_ms": 1e3 * float(np.percentile(ttft, 99)), "itl_p50_ms": 1e3 * float(np.percentile(itl, 50)),
            "itl_p99_ms": 1e3 * float(np.percentile(itl, 99)),
            "finish_reasons": sorted({str(r["finish"]) for r in results}),
            "mean_chunks_per_request": statistics.mean(r["chunks"] for r in results)}


def decode_rate(results: list[dict]) -> float:
    """Aggregate decode speed: tokens after each stream's first, divided by the time during
    which at least one stream was decoding (the union of the [first, last] token spans).
    Streams served side by side share that time; streams served one after another do not."""
    spans = sorted(r["span"] for r in results if r["span"] is not None)
    union, end = 0.0, -np.inf
    for a, b in spans:
        if b > end:
            union += b - max(a, end)
            end = b
    return sum(r["n_tok"] - 1 for r in results) / union if union > 0 else float("nan")


async def prefix_ttft(url: str, system: str, bias: dict, n_warm: int = 4) -> dict:
    """TTFT of a ~500-token system prompt + question: the first (cold) request, then
    n_warm more with the same system prompt and new questions (warm), one at a time."""
    out = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900)) as client:
        for i in range(n_warm + 1):
            msgs = [{"role": "system", "content": system},
                    {"role": "user", "content": f"Question {i}: how do I reset unit {i * 7 + 3}?"}]
            out.append((await stream_chat(client, url, msgs, 4, bias))["ttft"])
    return {"cold_ttft_ms": 1e3 * out[0], "warm_ttft_ms": 1e3 * statistics.median(out[1:]),
            "warm_ttft_all_ms": [1e3 * x for x in out[1:]]}


async def prefix_burst(url: str, system: str, bias: dict, n: int, busy: int = 4) -> dict:
    """n requests at once, one new (uncached) system prompt + a question each, sent while
    `busy` other streams are decoding (a server that is in the middle of a step when the
    burst lands): TTFTs, and the prompt tokens the server prefilled from the burst's start
    to its last first token (edgeformer's /metrics; None elsewhere)."""
    def prefilled() -> float | None:
        m = _scrape(url) if _has_metrics(url) else {}
        vals = [v for k, v in m.items() if k.startswith("edgeformer_engine_prefill_tokens_total")]
        return sum(vals) if vals else None
    limits = httpx.Limits(max_connections=n + busy + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900), limits=limits) as client:
        bg = [asyncio.create_task(stream_chat(client, url, [{"role": "user", "content": f"Describe {TOPICS[i]}."}],
                                              256, bias)) for i in range(busy)]
        await asyncio.sleep(2.0)          # their prompts are in, they decode
        p0 = prefilled()
        rs = await asyncio.gather(*[stream_chat(client, url, [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Question {i}: how do I reset unit {i * 7 + 3}?"}], 4, bias) for i in range(n)])
        p1 = prefilled()
        await asyncio.gather(*bg)
    ttft = [r["ttft"] for r in rs]
    return {"clients": n, "busy_streams": busy, "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)),
            "ttft_max_ms": 1e3 * max(ttft), "prefilled_tokens": None if p0 is None or p1 is None else p1 - p0}


def _has_metrics(url: str) -> bool:
    try:
        return httpx.get(url + "/metrics").status_code == 200
    except httpx.HTTPError:
        return False


async def multi_turn(url: str, systems: list[str], turns: int, max_tokens: int, bias: dict) -> dict:
    """Each system prompt is one conversation (one client): `turns` requests, each with the
    whole conversation so far plus a new question; TTFT of turns after the first."""
    later: list[float] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(900), limits=httpx.Limits(max_connections=64)) as client:
        async def conversation(k: int, system: str) -> None:
            msgs = [{"role": "system", "content": system}]
            for t in range(turns):
                msgs.append({"role": "user", "content": f"Question {t} about unit {k}: how do I reset it?"})
                r = await stream_chat(client, url, msgs, max_tokens, bias)
                msgs.append({"role": "assistant", "content": r["text"]})
                if t:
                    later.append(r["ttft"])
        t0 = time.perf_counter()
        await asyncio.gather(*[conversation(k, s) for k, s in enumerate(systems)])
        wall = time.perf_counter() - t0
    m = _scrape(url)
    cached = sum(v for k, v in m.items() if k.startswith("edgeformer_engine_cached_prompt_tokens_total"))
    prefill = sum(v for k, v in m.items() if k.startswith("edgeformer_engine_prefill_tokens_total"))
    outcomes: dict[str, float] = {}
    for k, v in m.items():
        if k.startswith("edgeformer_router_requests_total"):
            o = k.split('outcome="', 1)[1].split('"', 1)[0]
            outcomes[o] = outcomes.get(o, 0) + v
    return {"conversations": len(systems), "turns": turns, "wall_s": wall,
            "out_tok_s": len(systems) * turns * max_tokens / wall,
            "later_ttft_p50_ms": 1e3 * float(np.percentile(later, 50)),
            "later_ttft_p99_ms": 1e3 * float(np.percentile(later, 99)),
            "cached_prompt_tokens": cached, "prefilled_tokens": prefill, "router_outcomes": outcomes}


def system_prompt(tokenizer, n_tokens: int = 500, seed: str = "") -> str:
    """A system prompt of about n_tokens tokens (`seed` first, to make it unique)."""
    text = seed
    while len(tokenizer.encode(text, add_bos=False)) < n_tokens:
        text += SYSTEM_SENTENCE
    ids = tokenizer.encode(text, add_bos=False)[:n_tokens]
    return tokenizer.decode(ids)


def bench_server(name: str, url: str, proc: subprocess.Popen, args: argparse.Namespace, bias: dict,
                 system: str, burst_system: str) -> dict:
    wait_ready(url, proc)
    # warm-up (JIT compilation, first-touch of weights), not measured
    asyncio.run(run_level(url, 1, 1, 8, bias))
    levels = []
    for c in args.levels:
        n = max(args.min_requests, c * args.requests_per_client)
        r = asyncio.run(run_level(url, c, n, args.max_tokens, bias))
        print(f"  {name:10s} c={c:<3d} {r['req_s']:6.2f} req/s {r['out_tok_s']:7.1f} tok/s "
              f"(decode {r['decode_tok_s']:7.1f})  "
              f"TTFT p50 {r['ttft_p50_ms']:7.0f} p99 {r['ttft_p99_ms']:7.0f} ms  "
              f"ITL p50 {r['itl_p50_ms']:6.1f} p99 {r['itl_p99_ms']:6.1f} ms", flush=True)
        levels.append(r)
    prefix = asyncio.run(prefix_ttft(url, system, bias))
    print(f"  {name:10s} prefix: cold TTFT {prefix['cold_ttft_ms']:.0f} ms, warm {prefix['warm_ttft_ms']:.0f} ms",
          flush=True)
    burst = asyncio.run(prefix_burst(url, burst_system, bias, args.burst))
    print(f"  {name:10s} burst of {args.burst} behind one new system prompt, 4 streams busy: TTFT p50 {burst['ttft_p50_ms']:.0f} ms, "
          f"last {burst['ttft_max_ms']:.0f} ms, prefilled {burst['prefilled_tokens']}", flush=True)
    out = {"levels": levels, "prefix_sharing": prefix, "prefix_burst": burst}
    if name == "edgeformer":
        out["metrics_after"] = {k: v for k, v in _scrape(url).items() if "kv_blocks" in k or "cached" in k}
    return out


def _scrape(url: str) -> dict[str, float]:
    from edgeformer.serve.metrics import parse_text
    return parse_text(httpx.get(url + "/metrics").text)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def table(res: dict) -> str:
    rows = ["| server | conc. | req/s | out tok/s | decode tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
            "| ITL p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["servers"].items():
        for lv in r["levels"]:
            rows.append(f"| {name} | {lv['concurrency']} | {lv['req_s']:.2f} | {lv['out_tok_s']:.1f} | "
                        f"{lv['decode_tok_s']:.1f} | "
                        f"{lv['ttft_p50_ms']:.0f} | {lv['ttft_p99_ms']:.0f} | {lv['itl_p50_ms']:.1f} | "
                        f"{lv['itl_p99_ms']:.1f} |")
    rows += ["", "| server | prefix TTFT cold ms | warm ms (~500-token system prompt cached) |", "|---|---:|---:|"]
    for name, r in res["servers"].items():
        p = r["prefix_sharing"]
        rows.append(f"| {name} | {p['cold_ttft_ms']:.0f} | {p['warm_ttft_ms']:.0f} |")
    rows += ["", "| server | burst clients (one new ~500-token system prompt; 4 streams decoding) | TTFT p50 ms "
             "| last TTFT ms "
             "| prompt tokens prefilled |", "|---|---:|---:|---:|---:|"]
    for name, r in res["servers"].items():
        b = r["prefix_burst"]
        rows.append(f"| {name} | {b['clients']} | {b['ttft_p50_ms']:.0f} | {b['ttft_max_ms']:.0f} | "
                    f"{'—' if b['prefilled_tokens'] is None else int(b['prefilled_tokens'])} |")
    return "\n".join(rows)


def ray_main(args: argparse.Namespace, model: str, tok, bias: dict) -> int:
    """--ray: 1 vs 2 replicas at each level, then prefix vs round-robin on a multi-turn load."""
    res: dict = {"model": model, "backend": args.backend, "threads_per_replica": 1, "max_tokens": args.max_tokens,
                 "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "machine": platform.machine(),
                 "scaling": {}, "multi_turn": {}}
    systems = [system_prompt(tok, 200, seed=f"Conversation {k}. ") for k in range(args.conversations)]

    def serving(replicas: int, routing: str, work) -> dict:
        port = free_port()
        proc = start_edgeformer_ray(model, port, args.backend, replicas, routing, args.kv_budget, 16, args.n_ctx)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            asyncio.run(run_level(url, replicas, replicas, 8, bias))     # warm every replica, not measured
            return work(url)
        finally:
            stop(proc)

    def levels(url: str) -> list[dict]:
        return [asyncio.run(run_level(url, c, max(args.min_requests, c * args.requests_per_client),
                                      args.max_tokens, bias)) for c in args.levels]
    for replicas in (1, 2):
        res["scaling"][replicas] = serving(replicas, "prefix", levels)
        for lv in res["scaling"][replicas]:
            print(f"  {replicas} replica(s) c={lv['concurrency']:<3d} {lv['out_tok_s']:7.1f} tok/s  TTFT p50 "
                  f"{lv['ttft_p50_ms']:7.0f} p99 {lv['ttft_p99_ms']:7.0f} ms", flush=True)
    for routing in ("prefix", "round-robin"):
        r = serving(2, routing, lambda url: asyncio.run(multi_turn(url, systems, args.turns, args.max_tokens // 2,
                                                                   bias)))
        res["multi_turn"][routing] = r
        print(f"  multi-turn {routing:11s} {r['out_tok_s']:6.1f} tok/s  later-turn TTFT p50 "
              f"{r['later_ttft_p50_ms']:6.0f} p99 {r['later_ttft_p99_ms']:6.0f} ms  cached prompt tokens "
              f"{r['cached_prompt_tokens']:.0f} / prefilled {r['prefilled_tokens']:.0f}  {r['router_outcomes']}",
              flush=True)
    res["load_avg_end"] = os.getloadavg()
    out = Path(args.out).with_name("serve_load_ray.json") if args.out == DEFAULT_OUT else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(ray_table(res))
    print(f"wrote {out}")
    return 0


def ray_table(res: dict) -> str:
    rows = ["| replicas (1 thread each) | conc. | req/s | out tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, lvs in res["scaling"].items():
        rows += [f"| {n} | {lv['concurrency']} | {lv['req_s']:.2f} | {lv['out_tok_s']:.1f} | {lv['ttft_p50_ms']:.0f} | "
                 f"{lv['ttft_p99_ms']:.0f} | {lv['itl_p50_ms']:.1f} |" for lv in lvs]
    rows += ["", "| routing (2 replicas) | out tok/s | later-turn TTFT p50 ms | p99 ms | prompt tokens from cache "
             "| prompt tokens prefilled | router outcomes |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in res["multi_turn"].items():
        rows.append(f"| {name} | {r['out_tok_s']:.1f} | {r['later_ttft_p50_ms']:.0f} | {r['later_ttft_p99_ms']:.0f} | "
                    f"{r['cached_prompt_tokens']:.0f} | {r['prefilled_tokens']:.0f} | "
                    f"{', '.join(f'{k} {v:.0f}' for k, v in sorted(r['router_outcomes'].items()))} |")
    return "\n".join(rows)


DEFAULT_OUT = str(Path(__file__).parent / "results" / "serve_load.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the shipped SmolLM2-135M-Instruct)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default=None, help="concurrency levels (default 1,4,16; with --ray: 16)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--kv-budget", default="256MiB")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--burst", type=int, default=8, help="clients in the shared-system-prompt burst")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--ray", action="store_true", help="edgeformer serve --ray: 1 vs 2 replicas, prefix vs "
                                                      "round-robin routing (see above)")
    ap.add_argument("--conversations", type=int, default=8, help="--ray multi-turn: conversations (clients)")
    ap.add_argument("--turns", type=int, default=4, help="--ray multi-turn: turns per conversation")
    args = ap.parse_args(argv)
    args.levels = [int(x) for x in (args.levels or ("16" if args.ray else "1,4,16")).split(",")]

    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    from edgeformer.models.shipped import default_model
    model = str(args.model or default_model())
    tok = tokenizer_from_checkpoint(load_checkpoint(model))
    bias = {str(t): -100.0 for t in sorted(tok.stop_ids())}   # exactly max_tokens tokens per request
    if args.ray:
        return ray_main(args, model, tok, bias)
    system = system_prompt(tok)
    burst_system = system_prompt(tok, seed="Burst. ")

    res = {"model": model, "backend": args.backend, "threads": args.threads, "max_tokens": args.max_tokens,
           "requests_per_client": args.requests_per_client, "cpu_count": os.cpu_count(),
           "load_avg_start": os.getloadavg(), "machine": platform.machine(), "servers": {}}
    runs = [("edgeformer", lambda p: start_edgeformer(model, p, args.backend, args.threads, args.kv_budget,
                                                      max(args.levels), args.n_ctx))]
    if not args.skip_llama_cpp:
        runs.append(("llama.cpp", lambda p: start_llama_cpp(model, p, args.threads, args.n_ctx)))
    for name, start in runs:
        port = free_port()
        proc = start(port)
        try:
            res["servers"][name] = bench_server(name, f"http://127.0.0.1:{port}", proc, args, bias, system,
                                                 burst_system)
        finally:
            stop(proc)
    ef = res["servers"]["edgeformer"]["levels"]
    by_c = {lv["concurrency"]: lv for lv in ef}
    if 1 in by_c and 16 in by_c:
        res["scaling_16_vs_1"] = by_c[16]["out_tok_s"] / by_c[1]["out_tok_s"]
        res["decode_scaling_16_vs_1"] = by_c[16]["decode_tok_s"] / by_c[1]["decode_tok_s"]
    if "llama.cpp" in res["servers"] and 16 in by_c:
        lc = {lv["concurrency"]: lv for lv in res["servers"]["llama.cpp"]["levels"]}
        res["ttft_p99_16_vs_llama_cpp"] = by_c[16]["ttft_p99_ms"] / lc[16]["ttft_p99_ms"]
    res["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(table(res))
    for k in ("scaling_16_vs_1", "decode_scaling_16_vs_1", "ttft_p99_16_vs_llama_cpp"):
        if k in res:
            print(f"{k}: {res[k]:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
