"""Server limits beyond request validation (issue 16):

- `ClientLimit`: at most `limit` generation requests in flight per client address (POSTs
  under /v1/); one more is answered 429 `rate_limit_exceeded` with Retry-After.
- `prompt_byte_limit`: prompt text longer than `n_ctx * max_token_bytes` bytes cannot fit
  the context (no token covers more bytes than the vocabulary's longest), so it is refused
  before tokenizing (a 3.9 MB prompt once spent 19-24 s in the tokenizer). edgeformer's
  own tokenizers (GGUF byte-level BPE, SentencePiece) never shrink text; a tokenizer.json
  may normalize (NFKC's full-width letters: 3 bytes -> 1), so it gets x4 (UTF-8: 4 -> 1).
- `Drain`: the shutdown grace period. `serve()` runs uvicorn so that on SIGTERM the
  streams in flight get `grace` seconds to finish, then end with an SSE error event.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.responses import JSONResponse

from edgeformer.serve.openai_schema import APIError, bad

log = logging.getLogger("edgeformer.serve")

NORMALIZE_SLACK = 4      # bytes of input per byte of normalized text, at most (UTF-8: 4 -> 1)


class ClientLimit:
    """ASGI middleware: a client address with `limit` POST /v1/... requests in flight gets
    OpenAI's 429 for the next one (a stream counts until its last byte is sent)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit
        self.active: dict[str, int] = {}     # touched on the event loop only

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        host = (scope.get("client") or ("unknown",))[0]
        n = self.active.get(host, 0)
        if n >= self.limit:
            err = APIError(429, f"too many concurrent requests from this client: at most {self.limit} at a "
                                f"time on this server; retry when one has finished", "requests", None,
                           "rate_limit_exceeded")
            await JSONResponse(err.body(), status_code=429, headers={"Retry-After": "1"})(scope, receive, send)
            return
        self.active[host] = n + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.active[host] - 1
            if left:
                self.active[host] = left
            else:
                del self.active[host]


def max_token_bytes(tokenizer: Any, vocab_size: int) -> int:
    """Bytes of the vocabulary's longest token (its text, special tokens included)."""
    if hasattr(tokenizer, "piece"):
        return max((len(tokenizer.piece(i)) for i in range(vocab_size)), default=1) or 1
    return max((len(tokenizer.decode([i]).encode("utf-8")) for i in range(vocab_size)), default=1) or 1


def prompt_byte_limit(n_ctx: int, token_bytes: int, tokenizer_kind: str) -> int:
    """Prompt bytes above which a prompt cannot fit `n_ctx` tokens of a tokenizer of
    `tokenizer_kind` ("bpe" and "spm" do not normalize; "hf" may)."""
    return n_ctx * token_bytes * (1 if tokenizer_kind in ("bpe", "spm") else NORMALIZE_SLACK)


def check_prompt_bytes(n_bytes: int, limit: int, n_ctx: int, param: str) -> None:
    """400 `context_length_exceeded` for a prompt of `n_bytes` over `limit`."""
    if n_bytes > limit:
        raise bad(f"This model's maximum context length is {n_ctx} tokens. However, your prompt is {n_bytes} "
                  f"bytes, more than {n_ctx} tokens of this model can hold ({limit} bytes at most). Please "
                  f"reduce the length of the prompt.", param, "context_length_exceeded")


class Drain:
    """The generations in flight (`live`: objects with `abort(APIError)`), and the
    shutdown: `begin(grace)` refuses new requests and, `grace` seconds later, aborts what
    is still running (streams then end with an error event)."""

    def __init__(self) -> None:
        self.live: set[Any] = set()
        self.draining = False

    def begin(self, grace: float) -> None:
        """Start draining (on the event loop)."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d generation(s) in flight get %.1f s to finish", len(self.live), grace)
        asyncio.get_running_loop().call_later(grace, self.expire)

    def expire(self) -> None:
        if self.live:
            log.warning("shutdown grace period over: ending %d generation(s)", len(self.live))
        for g in list(self.live):
            g.abort(APIError(503, "the server is shutting down; this generation was cut short", "server_error",
                             None, "server_shutdown"))

    def check_open(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", "server_error", None, "server_shutdown")


def serve(app: Any, *, host: str, port: int, log_level: str, grace: float) -> None:
    """Run `app` under uvicorn; on SIGTERM/SIGINT drain it with `grace` seconds for the
    streams in flight (uvicorn's own graceful timeout a little later, as a backstop)."""
    import uvicorn

    drain: Drain = app.state.server.drain

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            drain.begin(grace)
            await super().shutdown(sockets)

    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=int(grace) + 5)).run()
