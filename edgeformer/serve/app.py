"""The OpenAI-compatible HTTP server: a Starlette app over a batching engine.

    app = create_app(edgeformer.load(), model_name="smollm2-135m-instruct")
    uvicorn.run(app, host="127.0.0.1", port=8080)

Endpoints: POST /v1/chat/completions and /v1/completions (JSON, or Server-Sent Events
with `"stream": true`, chunk for chunk as OpenAI sends them), GET /v1/models,
/v1/models/{id}, /health, /metrics (Prometheus text). `serve.audio_embeddings` mounts
/v1/embeddings and /v1/audio/* beside them and registers its models here: /v1/models
lists every model served (the LLM first, then the embedding, transcription and speech
models), each once under its own id; OpenAI's names for those (`whisper-1`, `tts-1`,
`text-embedding-3-small`, ...) are accepted as aliases in requests and by
/v1/models/{id} (whose card then names the served model as `root`), but not listed, so
a listing shows what really runs, without duplicates.

Requests run on `runtime.scheduler.BatchEngine` (continuous batching over a paged KV
cache, prefix sharing; speculative decoding per sequence when the Engine has a
`speculative` config, e.g. from `load(..., lookup=N)`: greedy output unchanged). Each
choice of a request is one submitted sequence; a thread per sequence moves its events
onto the event loop. A client that disconnects mid-stream has its sequences
cancelled, which frees their KV blocks.

Structured output and tools: `response_format` becomes the sequences' grammar
(`runtime.grammar`); `tools` / `tool_choice` go through `runtime.tools.plan` (the model's
own template when it renders `tools`, else llama.cpp's generic JSON format under a
JSON-schema grammar) and each choice's reply through a `runtime.tools.ToolStream`, which
streams a call's header and then its arguments as they are generated. Grammars are
compiled (cached) on a worker thread before submission; one that does not compile or
admits no output is a 400 naming the problem. Request bodies are capped (`max_body_bytes`,
checked on Content-Length and while reading) before any JSON parsing.

Hardening (issue 16, `serve.limits`): prompt text is bounded in bytes before tokenizing;
requests without max_tokens get the context's room (capped by what the KV budget can
ever hold; the scheduler reserves KV as they grow); any edgeformer error a request causes
is a 400 without file paths; at most `max_client_requests` requests per client address
run at once (429); a stream's events wait in a bounded buffer, and a client that reads
nothing for `stall_timeout` seconds is dropped (its sequences cancelled, KV freed); on
shutdown (`limits.serve`) streams get a grace period, then an SSE error event.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from edgeformer.errors import EdgeformerError, InputError
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.grammar import Grammar, check as check_grammar
from edgeformer.runtime.scheduler import BatchEngine
from edgeformer.runtime.tools import ToolPlan, ToolStream, plan as tool_plan
from edgeformer.serve.limits import ClientLimit, Drain, check_prompt_bytes, max_token_bytes, prompt_byte_limit
from edgeformer.serve.metrics import ServerMetrics
from edgeformer.serve.openai_schema import (APIError, ChatRequest, CommonRequest, CompletionRequest, bad,
                                            chat_logprob_entry, completion_logprobs, from_error, public, usage)

log = logging.getLogger("edgeformer.serve")

DEFAULT_MAX_BODY = 4 * 1024 * 1024   # bytes; far above any prompt that fits a small model's context
DEFAULT_KV_BUDGET = 256 * 1024 * 1024
DEFAULT_MAX_CLIENT_REQUESTS = 64   # requests in flight per client address
DEFAULT_STALL_TIMEOUT = 30.0       # seconds a stream may wait on a client that reads nothing
STREAM_BUFFER = 64                 # events per sequence waiting to be sent


def make_batch_engine(engine: Engine, *, kv_budget_bytes: int, kv_dtype: str = "f16", block_size: int = 16,
                      max_batch: int = 16, prefill_chunk: int = 256) -> BatchEngine:
    """The continuous-batching `BatchEngine` over `engine`'s model and tokenizer, with the
    same context length as `engine`, and its speculative decoding (`engine.speculative`,
    e.g. from `load(..., lookup=N)`): each decoding sequence then verifies its own drafts
    inside the batched steps."""
    return BatchEngine(engine.model, engine.tokenizer, kv_budget_bytes=kv_budget_bytes, kv_dtype=kv_dtype,
                       block_size=block_size, max_batch=max_batch, prefill_chunk=prefill_chunk, n_ctx=engine.n_ctx,
                       speculative=getattr(engine, "speculative", None))


@dataclass
class ServerState:
    engine: Engine
    batch: Any
    model_name: str
    metrics: ServerMetrics
    max_body_bytes: int
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    drain: Drain = field(default_factory=Drain)
    prompt_bytes: int | None = None        # the prompt-byte limit, computed at the first request
    created: int = field(default_factory=lambda: int(time.time()))
    fingerprint: str = "fp_edgeformer"
    extra_models: list[str] = field(default_factory=list)    # ids served by mounted endpoints (audio, embeddings)
    aliases: dict[str, str] = field(default_factory=dict)    # OpenAI's model name -> the served id it selects

    def add_model(self, model_id: str, aliases: tuple[str, ...] = ()) -> None:
        """Register a model served by another endpoint (listed by /v1/models) and the
        names accepted for it."""
        if model_id != self.model_name and model_id not in self.extra_models:
            self.extra_models.append(model_id)
        for a in aliases:
            self.aliases.setdefault(a, model_id)


def endpoint(handler: Callable[[Request, Any], Awaitable[Response]], ctx: Any, name: str,
             metrics: Any = None) -> Callable:
    """A Starlette endpoint running `handler(request, ctx)`: APIError -> its OpenAI error
    body, an edgeformer error (bad input the model itself caught) -> 400 without file
    paths, client gone -> 499, anything else -> logged 500 (no details to the client);
    each response counted in `metrics.requests` (by endpoint name and status) when given."""
    async def run(request: Request) -> Response:
        try:
            resp = await handler(request, ctx)
        except APIError as e:
            resp = error_response(e)
        except ClientDisconnect:
            resp = Response(status_code=499)
        except EdgeformerError as e:
            resp = error_response(from_error(e))
        except Exception:
            log.exception("internal error on %s", name)
            resp = error_response(APIError(500, "internal server error", "server_error"))
        if metrics is not None:
            metrics.requests.inc(1, name, str(resp.status_code))
        return resp
    return run


def create_app(engine: Engine, *, model_name: str, kv_budget_bytes: int = DEFAULT_KV_BUDGET,
               max_batch: int = 16, block_size: int = 16, kv_dtype: str = "f16", prefill_chunk: int = 256,
               max_body_bytes: int = DEFAULT_MAX_BODY, batch_engine: Any = None,
               api_key: str | None = None, max_client_requests: int = DEFAULT_MAX_CLIENT_REQUESTS,
               stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Starlette:
    """A Starlette app serving `engine`'s model under the id `model_name`. The batching
    engine (given, or built by `make_batch_engine`) is started and stopped with the app's
    lifespan. Requests naming another model get 404 `model_not_found`. With `api_key`,
    every endpoint but /health wants `Authorization: Bearer <api_key>` (401 otherwise).
    `max_client_requests`: POST /v1/ requests in flight per client address (429 past it);
    `stall_timeout`: seconds a stream waits on a client that reads nothing before dropping it."""
    batch = batch_engine or make_batch_engine(engine, kv_budget_bytes=kv_budget_bytes, kv_dtype=kv_dtype,
                                              block_size=block_size, max_batch=max_batch,
                                              prefill_chunk=prefill_chunk)
    state = ServerState(engine, batch, model_name, ServerMetrics(batch.metrics), max_body_bytes, stall_timeout,
                        fingerprint=f"fp_edgeformer_{getattr(engine.backend, 'name', engine.backend)}")

    def ep(handler: Callable[[Request, ServerState], Awaitable[Response]], name: str) -> Callable:
        return endpoint(handler, state, name, state.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batch.start()
        try:
            yield
        finally:
            batch.stop()

    routes = [Route("/v1/chat/completions", ep(chat_completions, "/v1/chat/completions"), methods=["POST"]),
              Route("/v1/completions", ep(completions, "/v1/completions"), methods=["POST"]),
              Route("/v1/models", ep(list_models, "/v1/models"), methods=["GET"]),
              Route("/v1/models/{model_id:path}", ep(get_model, "/v1/models/{id}"), methods=["GET"]),
              Route("/health", ep(health, "/health"), methods=["GET"]),
              Route("/metrics", ep(metrics, "/metrics"), methods=["GET"])]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.add_middleware(ClientLimit, limit=max_client_requests)
    if api_key:                      # outermost: an unauthenticated request holds no slot
        app.add_middleware(ApiKey, key=api_key)
    app.state.server = state
    return app


class ApiKey:
    """ASGI middleware: a request without `Authorization: Bearer <key>` gets OpenAI's 401
    (constant-time comparison); /health stays open for liveness probes."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.key):
                await error_response(APIError(401, "Incorrect API key provided.", "invalid_request_error", None,
                                              "invalid_api_key"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


# ---- small endpoints -------------------------------------------------------------------------

def _model_card(st: ServerState, model_id: str, root: str | None = None) -> dict[str, Any]:
    card = {"id": model_id, "object": "model", "created": st.created, "owned_by": "edgeformer"}
    if root is not None:
        card["root"] = root
    return card


async def list_models(request: Request, st: ServerState) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(st, m) for m in [st.model_name, *st.extra_models]]})


async def get_model(request: Request, st: ServerState) -> Response:
    name = request.path_params["model_id"]
    if name in st.extra_models:
        return JSONResponse(_model_card(st, name))
    if name in st.aliases:
        return JSONResponse(_model_card(st, name, root=st.aliases[name]))
    _check_model(st, name)
    return JSONResponse(_model_card(st, st.model_name))


async def health(request: Request, st: ServerState) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics(request: Request, st: ServerState) -> Response:
    return PlainTextResponse(st.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _check_model(st: ServerState, name: str) -> None:
    if name != st.model_name:
        what = ("is served here for another endpoint, not for text generation" if name in st.extra_models
                or name in st.aliases else "does not exist or you do not have access to it")
        raise APIError(404, f"The model `{name}` {what}. This server generates text with `{st.model_name}`.",
                       "invalid_request_error", "model", "model_not_found")


# ---- request bodies --------------------------------------------------------------------------

async def read_json(request: Request, limit: int) -> Any:
    """The decoded JSON body; 413 when it is over `limit` bytes (by Content-Length, or
    counted while streaming it in, before anything is parsed), 400 when not JSON."""
    too_big = APIError(413, f"request body is over the {limit}-byte limit", "invalid_request_error", None,
                       "request_too_large")
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise bad("invalid Content-Length header")
        if int(cl) > limit:
            raise too_big
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except RecursionError:
        raise bad("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise bad("We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                  "your HTTP library correctly. The OpenAI API expects a JSON payload.)") from None


# ---- generation --------------------------------------------------------------------------------

@dataclass
class Choice:
    """Output accumulated for one choice (one submitted sequence)."""

    index: int
    prompt_tokens: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[tuple[bytes, float, list[tuple[bytes, float]]]] = field(default_factory=list)
    finish_reason: str | None = None
    last_t: float | None = None


def _token_bytes(tok: Any, tid: int) -> bytes:
    if hasattr(tok, "piece"):
        return bytes(tok.piece(int(tid)))
    return tok.decode([int(tid)]).encode("utf-8")


def _fit(st: ServerState, ids: list[int], req: CommonRequest, param: str) -> int:
    """The token budget of a prompt of `ids`; 400 `context_length_exceeded` if the prompt,
    or prompt + max_tokens, does not fit the context. Without max_tokens: the context's
    room, capped by what the whole KV budget can hold (the scheduler reserves KV as a
    sequence grows, so this holds nothing up front; the reply ends with "length" there)."""
    n_ctx = st.engine.n_ctx
    if len(ids) >= n_ctx:
        raise bad(f"This model's maximum context length is {n_ctx} tokens. However, your prompt is {len(ids)} "
                  f"tokens, which leaves no room for a completion. Please reduce the length of the prompt.",
                  param, "context_length_exceeded")
    if req.max_tokens is None:
        room = st.batch.room(len(ids)) if hasattr(st.batch, "room") else n_ctx - len(ids)
        if room < 1:
            raise bad(f"your prompt of {len(ids)} tokens leaves no room for a completion within the server's KV "
                      f"cache budget", param, "kv_budget_exceeded")
        return room
    if len(ids) + req.max_tokens > n_ctx:
        raise bad(f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                  f"{len(ids) + req.max_tokens} tokens ({len(ids)} in the prompt, {req.max_tokens} in the "
                  f"completion). Please reduce the length of the prompt or completion.", "max_tokens",
                  "context_length_exceeded")
    return req.max_tokens


class Generation:
    """The sequences of one request and the bridge from their handles (blocking
    iterators on worker threads) to one asyncio queue of (choice, event | exception | None)."""

    def __init__(self, st: ServerState, prompts: list[list[int]], req: CommonRequest, logprobs: bool,
                 top_logprobs: int, budgets: list[int], t0: float, grammar: Grammar | None = None) -> None:
        self.st = st
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        # token events waiting to be sent, bounded: a pump waits for room, and gives its
        # sequence up when a client has read nothing for stall_timeout
        self.room = threading.Semaphore(STREAM_BUFFER * len(prompts) * req.n)
        self.stalled = False
        self.choices: list[Choice] = []
        self.handles: list[Any] = []
        self.t0 = t0   # request arrival: TTFT includes reading, parsing and tokenizing
        self.prompt_lens = [len(p) for p in prompts]
        try:
            for p, (ids, budget) in enumerate(zip(prompts, budgets)):
                for j in range(req.n):
                    params = req.sampling(budget, j, top_logprobs, logprobs, grammar)
                    self.handles.append(st.batch.submit(ids, params))
                    self.choices.append(Choice(len(self.choices), len(ids)))
        except EdgeformerError as e:
            # CapacityError: what can never fit the KV budget (a 400 naming the budget)
            self.cancel()
            raise from_error(e) from None
        st.metrics.prompt_tokens.inc(sum(len(p) for p in prompts) * req.n)
        self.open = len(self.handles)
        st.drain.live.add(self)
        for i, h in enumerate(self.handles):
            threading.Thread(target=self._pump, args=(i, h), daemon=True, name=f"edgeformer-pump-{h.id}").start()

    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass   # the loop is gone (server shutting down)

    def _pump(self, i: int, h: Any) -> None:
        try:
            for ev in h.events():
                if not self.room.acquire(timeout=self.st.stall_timeout):
                    self.stalled = True       # nobody took an event for stall_timeout: drop the client
                    self.cancel()
                    return
                self._put((i, ev))
            self._put((i, None))
        except BaseException as e:  # noqa: BLE001 - handed to the request's task
            self._put((i, e))

    def cancel(self) -> None:
        """Cancel every sequence still running (frees their KV blocks)."""
        for h in self.handles:
            h.cancel()
        self.st.drain.live.discard(self)

    def abort(self, err: APIError) -> None:
        """End the request now with `err` (the shutdown grace period is over)."""
        self.cancel()
        self.queue.put_nowait((None, err))

    async def events(self) -> AsyncIterator[tuple[Choice, Any]]:
        """(choice, TokenEvent) pairs as they come, recording metrics; raises the first
        engine error as APIError."""
        tok = self.st.engine.tokenizer
        while self.open:
            i, ev = await self.queue.get()
            if i is None:              # aborted
                raise ev
            c = self.choices[i]
            if ev is None:
                self.open -= 1
                if c.finish_reason is None:   # ended without a finish event: treat as cut short
                    c.finish_reason = "length"
                continue
            if isinstance(ev, BaseException):
                self.open -= 1
                log.error("generation failed: %r", ev)
                status = 400 if isinstance(ev, InputError) else 500
                raise APIError(status, public(f"generation failed: {ev}"), "invalid_request_error" if status == 400
                               else "server_error")
            self.room.release()
            if ev.finish_reason == "cancelled":   # the scheduler's note that a cancel took effect
                c.finish_reason = ev.finish_reason
                continue
            now = time.perf_counter()
            if c.last_t is None:
                self.st.metrics.ttft.observe(now - self.t0)
            else:
                self.st.metrics.itl.observe(now - c.last_t)
            c.last_t = now
            if not getattr(ev, "is_stop_token", False):
                c.tokens += 1
                self.st.metrics.generation_tokens.inc(1)
                lp = getattr(ev, "logprob", None)
                if lp is not None:
                    c.logprobs.append((_token_bytes(tok, ev.token_id), float(lp.logprob),
                                       [(_token_bytes(tok, t), float(v)) for t, v in lp.top]))
            c.text.append(ev.text)
            if ev.finish_reason is not None:
                c.finish_reason = ev.finish_reason
            yield c, ev

    def usage(self) -> dict[str, int]:
        """OpenAI usage: each prompt counted once, however many choices it has."""
        return usage(sum(self.prompt_lens), sum(c.tokens for c in self.choices))


@dataclass
class Prepared:
    req: Any                        # ChatRequest | CompletionRequest
    prompts: list[list[int]]
    budgets: list[int]
    t0: float
    tools: ToolPlan | None = None   # chat with tools (or tool history)

    @property
    def grammar(self) -> Grammar | None:
        return self.req.grammar or (self.tools.grammar if self.tools is not None else None)


def _uses_tools(req: ChatRequest) -> bool:
    return bool(req.tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in req.messages)


async def _prepare(request: Request, st: ServerState, chat: bool) -> Prepared:
    t0 = time.perf_counter()
    st.drain.check_open()
    body = await read_json(request, st.max_body_bytes)
    req = ChatRequest.parse(body) if chat else CompletionRequest.parse(body)
    _check_model(st, req.model)
    eng = st.engine
    if st.prompt_bytes is None:    # a pass over the vocabulary, once
        st.prompt_bytes = prompt_byte_limit(eng.n_ctx, await anyio.to_thread.run_sync(
            max_token_bytes, eng.tokenizer, eng.vocab_size), eng.tokenizer.kind)
    check_prompt_bytes(_prompt_bytes(req), st.prompt_bytes, eng.n_ctx, "messages" if chat else "prompt")
    tp = tool_plan(list(req.messages), req.tools, req.tool_choice, eng.chat_template) \
        if isinstance(req, ChatRequest) and _uses_tools(req) and eng.chat_template is not None else None
    param = "messages" if chat else "prompt"

    def tokenize() -> list[list[int]]:
        nonlocal param
        if isinstance(req, ChatRequest):
            if tp is not None:
                ids = _encode_tools_chat(eng, tp)
            else:
                ids = [eng.encode_chat(list(req.messages))]
        else:
            ids = [eng.encode(p if isinstance(p, str) else list(p)) for p in req.prompts]
        g = req.grammar or (tp.grammar if tp is not None else None)
        if g is not None:     # compiled here, off the event loop (cached): a bad one is a 400 now
            param = "response_format" if req.grammar is not None else "tools"
            check_grammar(g, eng.tokenizer, eng.vocab_size)
        return ids
    try:
        prompts = await anyio.to_thread.run_sync(tokenize)
    except EdgeformerError as e:      # a template or tokenizer error: a 400, without file paths
        raise from_error(e, param) from None
    budgets = [_fit(st, ids, req, "messages" if chat else "prompt") for ids in prompts]
    return Prepared(req, prompts, budgets, t0, tp)


def _prompt_bytes(req: Any) -> int:
    """UTF-8 bytes of a request's prompt text (chat: every message's content and tool-call
    arguments; completions: the longest prompt; token-id prompts count 1 per id)."""
    if isinstance(req, ChatRequest):
        return sum(len(m["content"].encode("utf-8", "replace")) + sum(len(c["function"]["arguments"]) for c in
                   m.get("tool_calls", ())) for m in req.messages)
    return max(len(p.encode("utf-8", "replace")) if isinstance(p, str) else len(p) for p in req.prompts)


def _encode_tools_chat(eng: Engine, tp: ToolPlan) -> list[list[int]]:
    """The chat prompt of a tool plan: its messages and (native templates) tools rendered."""
    from edgeformer.formats.chat_template import ChatTemplate, encode_chat
    eng.render_chat(tp.messages)      # validates the messages
    ct = eng.chat_template
    if not isinstance(ct, ChatTemplate):
        ct = ChatTemplate.for_tokenizer(ct, eng.tokenizer)
    assert ct is not None
    return [encode_chat(eng.tokenizer, ct, tp.messages, tools=tp.tools)]


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _stream(gen: Generation, req: CommonRequest, head: dict[str, Any], chunk: Callable) -> StreamingResponse:
    """An SSE response from `gen`; `chunk(choice, event | None)` builds one choice entry
    (None: the final one, with the finish reason), a list of them (one chunk each), or
    returns None to skip."""
    async def body() -> AsyncIterator[str]:
        done = False
        try:
            extra = {"usage": None} if req.include_usage else {}
            for c in gen.choices:
                first = chunk(c, "start")
                if first is not None:
                    yield _sse({**head, "choices": [first], **extra})
            try:
                async for c, ev in gen.events():
                    entry = chunk(c, ev)
                    for e in entry if isinstance(entry, list) else [entry] if entry is not None else []:
                        yield _sse({**head, "choices": [e], **extra})
                    if ev.finish_reason is not None:
                        yield _sse({**head, "choices": [chunk(c, None)], **extra})
            except APIError as e:
                yield _sse(e.body())
                done = True
                return
            if req.include_usage:
                yield _sse({**head, "choices": [], "usage": gen.usage()})
            yield "data: [DONE]\n\n"
            done = True
        finally:
            if not done:
                gen.st.metrics.cancelled.inc(1)
            gen.cancel()   # a disconnect cancels this task here: free the KV blocks now
    return _SSE(body(), gen, media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Stalled(Exception):
    pass


class _SSE(StreamingResponse):
    """A stream whose every send may wait at most the server's stall_timeout: a client
    that reads nothing that long is dropped (its sequences cancelled, the connection
    closed by uvicorn as an unfinished response) instead of holding KV blocks and
    buffers for as long as it likes."""

    def __init__(self, content: Any, gen: Generation, **kw: Any) -> None:
        super().__init__(content, **kw)
        self.gen = gen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        timeout = self.gen.st.stall_timeout

        async def timed_send(message: Any) -> None:
            try:
                await asyncio.wait_for(send(message), timeout)
            except asyncio.TimeoutError:
                raise _Stalled from None
        try:
            await super().__call__(scope, receive, timed_send)
        except _Stalled:
            self.gen.stalled = True
        if self.gen.stalled:
            log.warning("dropped a client that read nothing for %.1f s", timeout)
            self.gen.st.metrics.stalled.inc(1)
            self.gen.cancel()


async def _collect(gen: Generation, request: Request) -> None:
    """Run `gen` to the end; cancel it if the client goes away meanwhile."""
    async def watch() -> None:
        while True:
            await asyncio.sleep(0.25)
            if await request.is_disconnected():
                gen.cancel()
                return
    watcher = asyncio.ensure_future(watch())
    try:
        async for _ in gen.events():
            pass
    finally:
        watcher.cancel()
        gen.cancel()


async def chat_completions(request: Request, st: ServerState) -> Response:
    pr = await _prepare(request, st, chat=True)
    req = pr.req
    gen = Generation(st, pr.prompts, req, req.logprobs, req.top_logprobs, pr.budgets, pr.t0, pr.grammar)
    tp = pr.tools
    # a reply that may hold a tool call is read by a ToolStream per choice
    readers = {c.index: ToolStream(tp.native and tp.grammar is None, tp.names) for c in gen.choices} \
        if tp is not None and tp.active else {}
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": st.model_name,
            "system_fingerprint": st.fingerprint}
    if req.stream:
        def chunk(c: Choice, ev: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
            if ev == "start":
                return {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}
            if ev is None:
                reason = readers[c.index].finish_reason(c.finish_reason) if readers else c.finish_reason
                return {"index": c.index, "delta": {}, "logprobs": None, "finish_reason": reason}
            has_lp = req.logprobs and not getattr(ev, "is_stop_token", False) and ev.logprob is not None
            lp = {"content": [chat_logprob_entry(*c.logprobs[-1])], "refusal": None} if has_lp else None
            if readers:       # tool deltas (logprobs ride on the first delta of the token, if any)
                rd = readers[c.index]
                deltas = rd.feed(ev.text) + (rd.finish() if ev.finish_reason is not None else [])
                if not deltas and has_lp:
                    deltas = [{"content": ""}]
                return [{"index": c.index, "delta": d, "logprobs": lp if k == 0 else None, "finish_reason": None}
                        for k, d in enumerate(deltas)]
            if not ev.text and not has_lp:
                return None
            return {"index": c.index, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}
        return _stream(gen, req, head, chunk)
    await _collect(gen, request)

    def message(c: Choice) -> tuple[dict[str, Any], str | None]:
        text = "".join(c.text)
        if not readers:
            return {"role": "assistant", "content": text, "refusal": None}, c.finish_reason
        rd = readers[c.index]
        rd.feed(text)
        rd.finish()
        assert rd.reply is not None
        msg: dict[str, Any] = {"role": "assistant", "content": rd.reply.content, "refusal": None}
        if rd.reply.tool_calls:
            msg["tool_calls"] = rd.reply.tool_calls
        return msg, rd.finish_reason(c.finish_reason)
    choices = []
    for c in gen.choices:
        msg, reason = message(c)
        choices.append({"index": c.index, "message": msg, "logprobs": {"content": [chat_logprob_entry(*e) for e in
                        c.logprobs], "refusal": None} if req.logprobs else None, "finish_reason": reason})
    return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": gen.usage()})


async def completions(request: Request, st: ServerState) -> Response:
    pr = await _prepare(request, st, chat=False)
    req = pr.req
    want_lp = req.logprobs is not None
    gen = Generation(st, pr.prompts, req, want_lp, req.logprobs or 0, pr.budgets, pr.t0, pr.grammar)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": st.model_name,
            "system_fingerprint": st.fingerprint}
    prompt_text = [p if isinstance(p, str) else st.engine.tokenizer.decode(list(p)) for p in req.prompts]
    offsets: dict[int, int] = {}

    def echo(c: Choice) -> str:
        return prompt_text[c.index // req.n] if req.echo else ""

    if req.stream:
        def chunk(c: Choice, ev: Any) -> dict[str, Any] | None:
            if ev == "start":
                return {"index": c.index, "text": echo(c), "logprobs": None, "finish_reason": None} \
                    if req.echo else None
            if ev is None:
                return {"index": c.index, "text": "", "logprobs": None, "finish_reason": c.finish_reason}
            has_lp = want_lp and not getattr(ev, "is_stop_token", False) and ev.logprob is not None
            if not ev.text and not has_lp:
                return None
            lp = None
            if has_lp:
                lp = completion_logprobs([c.logprobs[-1]], offsets.get(c.index, 0))
                offsets[c.index] = offsets.get(c.index, 0) + len(lp["tokens"][0])
            return {"index": c.index, "text": ev.text, "logprobs": lp, "finish_reason": None}
        return _stream(gen, req, head, chunk)
    await _collect(gen, request)
    choices = [{"index": c.index, "text": echo(c) + "".join(c.text),
                "logprobs": completion_logprobs(c.logprobs, len(echo(c))) if want_lp else None,
                "finish_reason": c.finish_reason} for c in gen.choices]
    return JSONResponse({**head, "choices": choices, "usage": gen.usage()})
