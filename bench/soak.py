"""Soak: `edgeformer serve` on loopback under a bounded, hostile mix for a set time.

Question (issue 16): does the server keep serving, at a steady latency and memory, with
nothing leaked, when clients misbehave for minutes? `--workers` closed-loop clients each
pick, in turn, one of:
- normal: a chat completion (non-streaming, `--max-tokens`, greedy);
- stream: the same, streamed;
- cancelled: a stream the client drops after its second chunk;
- malformed: a body that is not JSON (expects 400);
- oversized: a body over the server's --max-body (expects 413), or a prompt over the
  prompt-byte bound (expects 400 before tokenizing);
- long: a prompt of about 3/4 of the context (expects 200);
and every `--burst-every` seconds 64 concurrent normal requests arrive at once.

Reported: requests served (by kind), outcomes by class (HTTP status, "cancelled",
transport errors), p50/p99 latency of the first and last 10% of the normal requests (the
drift), server RSS after warm-up and at the end, and the KV blocks still used once the
server is idle (must be 0), from /metrics.

    nice python bench/soak.py --duration 300          # shipped SmolLM2 on the cpu backend
    python bench/soak.py --duration 60 --model DIR --backend numpy

Writes bench/results/soak.json and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, stop  # noqa: E402

KINDS = ("normal", "stream", "cancelled", "malformed", "oversized", "long")
WEIGHTS = (4, 4, 2, 1, 1, 1)
MAX_BODY = 256 * 1024
WORDS = "the sea a robot autumn bread a train the moon a cat mountains rain a garden".split()


def start(args: argparse.Namespace, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeformer.cli", "serve", args.model, "--port", str(port),
                             "--backend", args.backend, "-c", str(args.n_ctx), "--model-name", "soak",
                             "--max-body", str(MAX_BODY), "--max-client-requests", "256", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited at start-up; see its log")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not come up")


def metrics(url: str) -> dict[str, float]:
    from edgeformer.serve.metrics import parse_text
    return parse_text(httpx.get(url + "/metrics", timeout=30).text)


class Soak:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url, self.args = url, args
        self.records: list[dict] = []          # {kind, t, latency, outcome}
        self.rng = random.Random(0)

    def chat(self, words: int | str, stream: bool = False, **kw) -> dict:
        text = words if isinstance(words, str) else " ".join(self.rng.choice(WORDS) for _ in range(words))
        return {"model": "soak", "messages": [{"role": "user", "content": f"Write about {text}."}],
                "max_tokens": self.args.max_tokens, "temperature": 0, "stream": stream, **kw}

    async def one(self, c: httpx.AsyncClient, kind: str) -> None:
        t0 = time.perf_counter()
        url = self.url + "/v1/chat/completions"
        try:
            if kind in ("normal", "burst"):
                outcome = str((await c.post(url, json=self.chat(3))).status_code)
            elif kind == "malformed":
                outcome = str((await c.post(url, content=b'{"model": "soak", "messages": [',
                                            headers={"Content-Type": "application/json"})).status_code)
            elif kind == "oversized":
                if self.rng.random() < 0.5:
                    body = self.chat("x" * (MAX_BODY + 1))          # over --max-body: 413
                else:                                              # over the prompt-byte bound: 400
                    body = self.chat(" ".join(["a"] * (MAX_BODY // 2 - 100)))
                outcome = str((await c.post(url, json=body)).status_code)
            elif kind == "long":
                body = self.chat(int(self.args.n_ctx * 0.75 * 0.7), max_tokens=4)   # ~0.7 words per token
                outcome = str((await c.post(url, json=body)).status_code)
            else:   # stream / cancelled
                n = 0
                async with c.stream("POST", url, json=self.chat(3, stream=True)) as r:
                    outcome = str(r.status_code)
                    async for line in r.aiter_lines():
                        n += line.startswith("data: ")
                        if kind == "cancelled" and n == 2:
                            outcome = "cancelled"
                            break
        except httpx.HTTPError as e:
            outcome = type(e).__name__
        self.records.append({"kind": kind, "t": t0, "latency": time.perf_counter() - t0, "outcome": outcome})

    async def worker(self, c: httpx.AsyncClient, until: float) -> None:
        while time.perf_counter() < until:
            await self.one(c, self.rng.choices(KINDS, WEIGHTS)[0])

    async def bursts(self, c: httpx.AsyncClient, until: float) -> None:
        while time.perf_counter() + self.args.burst_every < until:
            await asyncio.sleep(self.args.burst_every)
            await asyncio.gather(*[self.one(c, "burst") for _ in range(64)])

    async def run(self, pid: int) -> dict:
        proc = psutil.Process(pid)
        t_start = time.perf_counter()
        until = t_start + self.args.duration
        rss: list[tuple[float, int]] = []

        async def sample() -> None:
            while time.perf_counter() < until:
                rss.append((time.perf_counter() - t_start, proc.memory_info().rss))
                await asyncio.sleep(5)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=600, limits=limits) as c:
            await asyncio.gather(sample(), self.bursts(c, until),
                                 *[self.worker(c, until) for _ in range(self.args.workers)])
        return {"rss": rss, "elapsed_s": time.perf_counter() - t_start}


def drift(records: list[dict]) -> dict:
    normal = sorted((r for r in records if r["kind"] == "normal" and r["outcome"] == "200"), key=lambda r: r["t"])
    k = max(1, len(normal) // 10)
    first, last = [r["latency"] for r in normal[:k]], [r["latency"] for r in normal[-k:]]

    def q(xs: list[float], p: float) -> float:
        return float(np.percentile(xs, p)) if xs else float("nan")
    return {"normal_requests": len(normal), "window": k, "first_p50_s": q(first, 50), "first_p99_s": q(first, 99),
            "last_p50_s": q(last, 50), "last_p99_s": q(last, 99),
            "p99_drift": q(last, 99) / q(first, 99) if first and q(first, 99) > 0 else float("nan")}


def idle_metrics(url: str, timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if (m.get("edgeformer_kv_blocks_used") == 0 and m.get("edgeformer_requests_running") == 0) \
                or time.monotonic() > deadline:
            return m
        time.sleep(0.5)


def table(res: dict) -> str:
    d, r = res["drift"], res["rss_mib"]
    rows = ["| measure | value |", "|---|---|",
            f"| duration | {res['elapsed_s']:.0f} s, {res['workers']} workers + 64-request burst every "
            f"{res['burst_every_s']:.0f} s |",
            f"| requests | {res['requests']} ({', '.join(f'{k} {v}' for k, v in res['by_kind'].items())}) |",
            f"| outcomes | {', '.join(f'{k}: {v}' for k, v in res['by_outcome'].items())} |",
            f"| unexpected outcomes | {res['unexpected']} |",
            f"| normal p50 first/last 10% | {d['first_p50_s'] * 1e3:.0f} / {d['last_p50_s'] * 1e3:.0f} ms |",
            f"| normal p99 first/last 10% | {d['first_p99_s'] * 1e3:.0f} / {d['last_p99_s'] * 1e3:.0f} ms "
            f"(drift x{d['p99_drift']:.2f}) |",
            f"| server RSS after warm-up / half-way / end / max | {r['warm']:.0f} / {r['mid']:.0f} / {r['end']:.0f} / "
            f"{r['max']:.0f} MiB (growth {r['end'] - r['warm']:+.0f} MiB, second half {r['end'] - r['mid']:+.0f} MiB; "
            f"the KV pool's pages count once touched) |",
            f"| KV blocks used when idle | {res['kv_blocks_used_idle']:.0f} of {res['kv_blocks_total']:.0f} |",
            f"| server: requests cancelled / preemptions | {res['cancelled']:.0f} / {res['preemptions']:.0f} |"]
    return "\n".join(rows)


EXPECTED = {"normal": {"200"}, "burst": {"200"}, "stream": {"200"}, "cancelled": {"cancelled"},
            "malformed": {"400"}, "oversized": {"400", "413"}, "long": {"200"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("-c", "--n-ctx", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--burst-every", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.json"))
    args = ap.parse_args(argv)
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc, url = start(args, log)
        try:
            soak = Soak(url, args)
            run = asyncio.run(soak.run(proc.pid))
            m = idle_metrics(url)
        finally:
            stop(proc)
        log.seek(0)
        server_log = log.read()
    recs = soak.records
    rss = [b for _, b in run["rss"]]
    warm = rss[max(0, len(rss) // 10)] if rss else 0
    res = {"model": args.model, "backend": args.backend, "n_ctx": args.n_ctx, "workers": args.workers,
           "burst_every_s": args.burst_every, "max_tokens": args.max_tokens, "elapsed_s": run["elapsed_s"],
           "requests": len(recs), "by_kind": dict(Counter(r["kind"] for r in recs)),
           "by_outcome": dict(Counter(f"{r['kind']}:{r['outcome']}" for r in recs)),
           "unexpected": sum(r["outcome"] not in EXPECTED[r["kind"]] for r in recs),
           "drift": drift(recs),
           "rss_mib": {"warm": warm / 2**20, "mid": (rss[len(rss) // 2] if rss else 0) / 2**20,
                       "end": (rss[-1] if rss else 0) / 2**20, "max": max(rss or [0]) / 2**20},
           "rss_samples": run["rss"],
           "kv_blocks_used_idle": m.get("edgeformer_kv_blocks_used", -1),
           "kv_blocks_total": m.get("edgeformer_kv_blocks_total", -1),
           "running_idle": m.get("edgeformer_requests_running", -1),
           "cancelled": m.get("edgeformer_requests_cancelled_total", 0),
           "preemptions": m.get("edgeformer_engine_preemptions_total", 0),
           "server_tracebacks": server_log.count("Traceback"), "cpu_count": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"server log: {res['server_tracebacks']} tracebacks; wrote {args.out}")
    return 0 if res["kv_blocks_used_idle"] == 0 and res["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
