"""One engine replica of a Ray Serve deployment: its own model, KV cache, batching engine
and Numba threads, serving the single-process server's app (`serve.app.create_app`)
unchanged. The ingress hands it whole HTTP requests (`forward`); it runs them through the
app in-process (ASGI) and streams the response messages back, so endpoints, SSE chunks
and error bodies are those of `edgeformer serve`, from one implementation."""
from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from edgeformer.serve.prefix_routing import RouteHint
from edgeformer.serve.ray_config import RayServeConfig


def set_threads(n: int) -> None:
    """Numba threads of this process: the environment before numba is imported (its pool
    size), `numba.set_num_threads` after."""
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


class EngineReplica:
    """The engine deployment's class (Ray Serve wraps it; `ray_deploy.build_app`)."""

    def __init__(self, cfg: RayServeConfig) -> None:
        set_threads(cfg.threads_per_replica)
        from ray import serve

        from edgeformer.api import load
        from edgeformer.runtime.setup_thread import run_in_setup_thread
        from edgeformer.serve.app import create_app

        def build() -> Any:
            engine = load(cfg.model, backend=cfg.backend, n_ctx=cfg.n_ctx, activations=cfg.activations,
                          chat_template=cfg.chat_template, lookup=cfg.lookup)
            return create_app(engine, model_name=cfg.model_name, kv_budget_bytes=cfg.kv_budget_bytes,
                              kv_dtype=cfg.kv_dtype, block_size=cfg.block_size, max_batch=cfg.max_batch,
                              prefill_chunk=cfg.prefill_chunk, max_body_bytes=cfg.max_body_bytes, api_key=cfg.api_key)
        # a thread that ends: the engine's step thread is then the only one holding kernel threads
        self.app = run_in_setup_thread(build)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._lifespan: Any = None
        self._start_lock = asyncio.Lock()

    async def _started(self) -> None:
        """The app's lifespan (the batching engine's thread), entered once, on first use."""
        async with self._start_lock:
            if self._lifespan is None:
                life = self.app.router.lifespan_context(self.app)
                await life.__aenter__()
                self._lifespan = life

    async def check_health(self) -> None:
        """Ray Serve's periodic health check: also starts the engine before the first request."""
        await self._started()

    async def forward(self, req: dict[str, Any], route: RouteHint | None = None) -> AsyncIterator[Any]:
        """Serve one HTTP request `req` (method, path, query_string, headers, body): yields
        {"status", "headers", "replica"} first, then the body's non-empty chunks (bytes).
        `route` is the router's (read by Ray Serve before this call)."""
        await self._started()
        async for msg in asgi_call(self.app, scope_of(req), req["body"]):
            if msg["type"] == "http.response.start":
                yield {"status": msg["status"], "headers": list(msg.get("headers", [])), "replica": self.replica}
            elif msg["type"] == "http.response.body" and msg.get("body"):
                yield bytes(msg["body"])


def scope_of(req: dict[str, Any]) -> dict[str, Any]:
    """An ASGI http scope for a request the ingress passed on."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http", "root_path": "",
            "method": req["method"], "path": req["path"], "raw_path": req["path"].encode(),
            "query_string": req["query_string"], "headers": [(bytes(k), bytes(v)) for k, v in req["headers"]],
            "client": tuple(req.get("client", ("unknown", 0))), "server": ("127.0.0.1", 0), "state": {}}


async def asgi_call(app: Any, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
    """Run one request through an ASGI app, yielding what it sends. The body is received
    whole; after it, `receive` waits until this generator is closed (the caller went
    away), then reports a disconnect, so the app cancels its generation."""
    queue: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        queue.put_nowait(msg)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (msg := await queue.get()) is not None:
            yield msg
            if msg["type"] == "http.response.body" and not msg.get("more_body", False):
                break
        failed = task.exception() if task.done() else None
        if failed is not None:
            raise failed
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.TimeoutError, Exception):   # noqa: BLE001 - the app's own errors were answered
                task.cancel()
