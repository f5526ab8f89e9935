"""The ingress of a Ray Serve deployment: one HTTP front for N engine replicas.

It reads a request (capped at the replicas' body limit), computes its prompt's KV block
keys (`prefix_routing.PromptKeys`) off the event loop, and passes the whole request to an
engine replica chosen by `ray_router.PrefixAwareRouter`; the replica answers with the
single-process server's app, and the ingress relays status, headers and body chunks
as they come. /metrics is the router's counters followed by each replica's own metrics
labelled `replica="<id>"`; /health answers here.

Faults: the ingress commits to a replica once it has sent the response head and two body
chunks (for a stream: the role chunk and the first token), or the whole body. A replica
lost before that (killed, crashed, unreachable) is retried on another, up to
`max_retries` times, invisibly to the client; after it, a stream ends with an SSE error
event in OpenAI's shape (`code: replica_unavailable`, retriable), and a request that
cannot be served gets a 503 with that body. Every wait for the next piece of a reply is
bounded by `replica_timeout_s` (then 504, or the SSE error), so no request hangs.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from edgeformer.serve.app import ApiKey, error_response
from edgeformer.serve.openai_schema import APIError
from edgeformer.serve.prefix_routing import ROUTERS, PromptKeys, RouteHint, RouterMetrics, merge_metrics, router_metrics
from edgeformer.serve.ray_config import RayServeConfig

log = logging.getLogger("edgeformer.serve.ray")

LOST = (RayActorError, ReplicaUnavailableError)    # the replica is gone: nothing it sent can be trusted to go on
ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions")
COMMIT_CHUNKS = 2
SCRAPE_TIMEOUT_S = 10    # a replica's /metrics part; its queue-length probe may back off under load


def replica_lost(message: str) -> APIError:
    return APIError(503, f"{message}; the request can be retried", "server_error", None, "replica_unavailable")


class Ingress:
    """The ingress deployment's class: `engine` is the handle of the engine deployment."""

    def __init__(self, engine: Any, cfg: RayServeConfig) -> None:
        self.cfg = cfg
        self.engine_name = engine.deployment_name
        self.handle = engine.options(stream=True)
        try:
            self.keys: PromptKeys | None = PromptKeys.load(cfg.model, cfg.block_size, cfg.chat_template)
        except Exception as e:   # noqa: BLE001 - e.g. a vision-language directory: route by load only
            log.warning("no prompt keys for prefix routing (%s): routing by load", e)
            self.keys = None

    @property
    def metrics(self) -> RouterMetrics:
        return router_metrics(self.engine_name)

    def __serve_build_asgi_app__(self) -> Any:
        routes = [Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                  Route("/health", lambda r: JSONResponse({"status": "ok"}), methods=["GET"]),
                  Route("/{path:path}", self.proxy, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])]
        app = Starlette(routes=routes)
        if self.cfg.api_key:
            app.add_middleware(ApiKey, key=self.cfg.api_key)
        return app

    # ---- relaying ---------------------------------------------------------------------------

    async def _next(self, gen: Any) -> Any:
        return await asyncio.wait_for(gen.__anext__(), self.cfg.replica_timeout_s)

    async def proxy(self, request: Request) -> Response:
        body = await read_capped(request, self.cfg.max_body_bytes)
        path = request.url.path
        keys = await anyio.to_thread.run_sync(self.keys.keys, path, body) \
            if self.keys is not None and request.method == "POST" and path in ROUTED_PATHS else []
        req = {"method": request.method, "path": path, "query_string": request.scope.get("query_string", b""),
               "headers": list(request.scope["headers"]), "body": body,
               "client": tuple(request.scope.get("client") or ("unknown", 0))}   # the replica's per-client limit
        for attempt in range(self.cfg.max_retries + 1):
            gen = self.handle.forward.remote(req, route=RouteHint(keys))
            try:
                head = await self._next(gen)
                chunks: list[bytes] = []
                done = False
                while len(chunks) < COMMIT_CHUNKS:
                    try:
                        chunks.append(await self._next(gen))
                    except StopAsyncIteration:
                        done = True
                        break
            except LOST as e:
                gen.cancel()
                if attempt < self.cfg.max_retries:
                    log.warning("replica lost before any output (%s); retrying", type(e).__name__)
                    self.metrics.retries.inc(1)
                    continue
                self.metrics.failures.inc(1, "503")
                return error_response(replica_lost(f"the model replica was lost ({type(e).__name__})"))
            except asyncio.TimeoutError:
                gen.cancel()
                self.metrics.failures.inc(1, "504")
                return error_response(APIError(504, f"no reply from a model replica within "
                                                    f"{self.cfg.replica_timeout_s:g} s", "server_error", None,
                                               "replica_timeout"))
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head["headers"]
                       if k.lower() not in (b"content-length", b"transfer-encoding")}
            headers["x-edgeformer-replica"] = head["replica"]
            if done:
                return Response(b"".join(chunks), status_code=head["status"], headers=headers)
            sse = headers.get("content-type", "").startswith("text/event-stream")
            return StreamingResponse(self._rest(gen, chunks, sse), status_code=head["status"], headers=headers)
        raise AssertionError("unreachable")

    async def _rest(self, gen: Any, chunks: list[bytes], sse: bool) -> AsyncIterator[bytes]:
        """The committed response: the chunks held so far, then the rest; a replica lost or
        silent for `replica_timeout_s` ends a stream with an SSE error event."""
        finished = False
        try:
            for c in chunks:
                yield c
            while True:
                try:
                    yield await self._next(gen)
                except StopAsyncIteration:
                    finished = True
                    return
        except (*LOST, asyncio.TimeoutError) as e:
            what = "stopped answering" if isinstance(e, asyncio.TimeoutError) else f"was lost ({type(e).__name__})"
            self.metrics.failures.inc(1, "stream_error")
            log.warning("replica %s mid-stream", what)
            if sse:
                err = replica_lost(f"the model replica {what} during the stream").body()
                yield f"data: {json.dumps(err, separators=(',', ':'))}\n\n".encode()
        finally:
            if not finished:
                gen.cancel()

    # ---- metrics ------------------------------------------------------------------------------

    async def metrics_endpoint(self, request: Request) -> Response:
        """The router's counters, then each live replica's /metrics (`replica` label)."""
        lines = self.metrics.render()
        router = ROUTERS.get(self.engine_name)
        ids = router.replica_ids() if router is not None else []
        lines += ["# HELP edgeformer_router_replicas Engine replicas the router sees",
                  "# TYPE edgeformer_router_replicas gauge", f"edgeformer_router_replicas {len(ids)}"]
        req = {"method": "GET", "path": "/metrics", "query_string": b"", "headers": list(request.scope["headers"]),
               "body": b""}
        # one replica after another: Ray Serve gives the calls made while serving one request
        # that request's internal id, and routes concurrent ones with the same id wrongly
        texts = [await self._scrape(req, rid) for rid in ids]
        lines += [f"# replica {rid}: no answer" for rid, t in zip(ids, texts) if t is None]
        lines += merge_metrics({rid: t for rid, t in zip(ids, texts) if t is not None})
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _scrape(self, req: dict[str, Any], rid: str) -> str | None:
        gen = self.handle.forward.remote(req, route=RouteHint(pin=rid))
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                head = await gen.__anext__()
                body = b"".join([c async for c in gen])
            return body.decode() if head["status"] == 200 else None
        except (*LOST, TimeoutError):
            gen.cancel()
            return None


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, or its first limit + 1 bytes: the replica answers an oversized body with
    its own 413 (by Content-Length, or by counting), so the ingress holds at most that."""
    chunks, n = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        n += len(chunk)
        if n > limit:
            break
    return b"".join(chunks)[:limit + 1]
