"""OpenAI request validation and response shapes.

Requests are parsed from decoded JSON into frozen dataclasses; anything a client can get
wrong raises `APIError`, whose `body()` is OpenAI's error object
`{"error": {"message", "type", "param", "code"}}` (the shape the official `openai` client
parses into `openai.BadRequestError` etc.). Field names and ranges follow the OpenAI API
reference (Chat Completions and legacy Completions); omitted sampling fields take the
defaults `load()` and the CLI share (`SamplingParams`: greedy), not OpenAI's temperature 1.

Logprob shapes differ between the two endpoints, as in OpenAI's API:
- chat: `logprobs: bool`, `top_logprobs: int 0..20`; a choice carries
  `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`;
- completions: `logprobs: int 0..5`; a choice carries
  `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`.

Known difference: `presence_penalty`/`frequency_penalty` count the tokens of the whole
context, prompt included (the sampler's window, `penalty_last_n=-1`); OpenAI counts only
the tokens sampled so far. Unsupported features (legacy `functions`, `audio`, `suffix`,
`best_of` != n, `echo` with `logprobs`) get a 400, never silent dropping.

Structured output: `response_format` (`text`, `json_object`, `json_schema`; `strict` is
accepted and changes nothing, the schema is always enforced by the token mask) becomes
`SamplingParams.grammar` on both endpoints. `tools` / `tool_choice` (chat) are parsed by
`runtime.tools` (a malformed tool, a duplicate name or an unknown named tool is a 400);
messages may carry assistant `tool_calls` and `tool` results with `tool_call_id`.
A schema that does not compile or admits no output is a 400 at submission.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeformer.errors import CapacityError, InputError
from edgeformer.runtime.grammar import Grammar
from edgeformer.runtime.sampler import MAX_TOP_LOGPROBS, SamplingParams
from edgeformer.runtime.tools import Tool, ToolChoice, parse_tool_choice, parse_tools

_DEFAULT = SamplingParams()

MAX_N = 128                      # OpenAI's limit on `n`
MAX_COMPLETION_LOGPROBS = 5      # OpenAI's limit on the legacy `logprobs`
MAX_STOPS = 4                    # OpenAI: "Up to 4 sequences"
ROLES = ("system", "developer", "user", "assistant", "tool")


class APIError(Exception):
    """An error answered to the client: HTTP `status` and OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


MAX_MESSAGE = 2000     # characters of an error message, like the CLI's cap
# an absolute POSIX path of two or more parts, not inside a URL or a relative path
_ABS_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"`,;()<>\[\]{}]+){2,}/?")


def public(message: str) -> str:
    """An error text fit for a client: absolute file paths cut to their last part (a
    template error once showed the model's full path), length capped."""
    text = _ABS_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "\u2026"


def from_error(e: Exception, param: str | None = None, code: str | None = None) -> APIError:
    """The 400 answering one of edgeformer's errors caused by a request (a CapacityError:
    code `kv_budget_exceeded`), its text made `public`."""
    if isinstance(e, CapacityError):
        return bad(public(f"cannot serve this request within the server's KV cache budget: {e}"), param,
                   "kv_budget_exceeded")
    return bad(public(str(e)), param, code)


# ---- typed field readers -------------------------------------------------------------------

def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(body: Mapping[str, Any], name: str, default: int | None, lo: int | None = None,
         hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise bad(f"'{name}' must be an integer, got {type(v).__name__} {v!r}", name, "invalid_type")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(f"'{name}' must be {rng}, got {v}", name, "invalid_value")
    return v


def _num(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v):
        raise bad(f"'{name}' must be a number, got {type(v).__name__} {v!r}", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}", name, "invalid_value")
    return float(v)


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be a boolean, got {type(v).__name__} {v!r}", name, "invalid_type")
    return v


def _stops(body: Mapping[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad(f"'stop' takes at most {MAX_STOPS} sequences, got {len(stops)}", "stop", "invalid_value")
    return tuple(s for s in stops if s)   # an empty stop string never matches: ignore it


def _logit_bias(body: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    v = body.get("logit_bias")
    if v is None:
        return ()
    if not isinstance(v, Mapping):
        raise bad("'logit_bias' must be an object mapping token ids to biases", "logit_bias", "invalid_type")
    out = []
    for k, b in v.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            raise bad(f"'logit_bias' key {k!r} is not a token id", "logit_bias", "invalid_value") from None
        if tid < 0 or not _is_num(b) or not -100 <= b <= 100:   # OpenAI: bias in [-100, 100]
            raise bad(f"'logit_bias' {k!r}: {b!r} needs a token id >= 0 and a bias in [-100, 100]",
                      "logit_bias", "invalid_value")
        out.append((tid, float(b)))
    return tuple(sorted(out))


# ---- requests ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CommonRequest:
    """Fields shared by both endpoints. `max_tokens` None = up to the context's end."""

    model: str
    max_tokens: int | None
    temperature: float
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    logit_bias: tuple[tuple[int, float], ...]
    stream: bool
    include_usage: bool
    grammar: Grammar | None      # from response_format (None: free text)

    def sampling(self, max_tokens: int, choice: int, top_logprobs: int, logprobs: bool,
                 grammar: Grammar | None = None) -> SamplingParams:
        """SamplingParams for choice `choice` of this request. With a seed, choice i draws
        with seed + i, so n > 1 choices differ yet the whole response is reproducible."""
        seed = None if self.seed is None else self.seed + choice
        # penalties look at the whole context, as OpenAI's do (not llama.cpp's last 64)
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                              penalty_last_n=-1, logit_bias=self.logit_bias, seed=seed, stop=self.stop,
                              logprobs=logprobs, top_logprobs=top_logprobs, grammar=grammar or self.grammar)


def _common(body: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must provide a model parameter ('model': a string)", "model", "invalid_type"
                  if model is not None else "missing_required_parameter")
    max_tokens = _int(body, "max_tokens", None, 1)
    if chat:
        mct = _int(body, "max_completion_tokens", None, 1)
        if mct is not None:
            if max_tokens is not None and max_tokens != mct:
                raise bad("give 'max_tokens' or 'max_completion_tokens', not both", "max_completion_tokens")
            max_tokens = mct
    stream = _bool(body, "stream", False)
    so = body.get("stream_options")
    if so is not None and not isinstance(so, Mapping):
        raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
    if so is not None and not stream:
        raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    include_usage = _bool(so or {}, "include_usage", False)
    try:
        grammar = Grammar.from_response_format(body.get("response_format"))
    except InputError as e:
        raise from_error(e, "response_format", "invalid_value") from None
    return dict(grammar=grammar, model=model, max_tokens=max_tokens,
                # omitted: the defaults load() and the CLI use (SamplingParams), not OpenAI's 1.0
                temperature=_num(body, "temperature", _DEFAULT.temperature, 0.0, 2.0),
                top_p=_num(body, "top_p", _DEFAULT.top_p, 0.0, 1.0) or 1e-9,   # top_p 0 means "most likely only"
                n=_int(body, "n", 1, 1, MAX_N), stop=_stops(body), seed=_int(body, "seed", None, 0),
                presence_penalty=_num(body, "presence_penalty", 0.0, -2.0, 2.0),
                frequency_penalty=_num(body, "frequency_penalty", 0.0, -2.0, 2.0),
                logit_bias=_logit_bias(body), stream=stream, include_usage=include_usage)


@dataclass(frozen=True)
class ChatRequest(CommonRequest):
    messages: tuple[dict[str, Any], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice("none")

    @classmethod
    def parse(cls, body: Any) -> "ChatRequest":
        """Validate a decoded `/v1/chat/completions` body; APIError(400) on any mistake."""
        if not isinstance(body, Mapping):
            raise bad("the request body must be a JSON object")
        c = _common(body, chat=True)
        # features this server cannot honour are refused, not silently dropped
        for name in ("functions", "audio"):
            if body.get(name):
                raise bad(f"'{name}' is not supported by this server", name, "unsupported_parameter")
        try:
            tools = parse_tools(body.get("tools"))
        except InputError as e:
            raise from_error(e, "tools", "invalid_value") from None
        try:
            choice = parse_tool_choice(body.get("tool_choice"), tools)
        except InputError as e:
            raise from_error(e, "tool_choice", "invalid_value") from None
        _bool(body, "parallel_tool_calls", True)     # accepted; a reply holds at most one call
        if c["grammar"] is not None and tools and choice.mode != "none":
            raise bad("'response_format' other than text cannot be combined with tools (tool_choice "
                      f"{choice.mode!r}): both constrain the reply", "response_format", "unsupported_parameter")
        msgs = body.get("messages")
        if msgs is None:
            raise bad("you must provide a 'messages' parameter", "messages", "missing_required_parameter")
        if not isinstance(msgs, list) or not msgs:
            raise bad("'messages' must be a non-empty array", "messages", "invalid_type")
        logprobs = _bool(body, "logprobs", False)
        top = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS) or 0
        if top and not logprobs:
            raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return cls(**c, messages=tuple(_message(m, i) for i, m in enumerate(msgs)), logprobs=logprobs,
                   top_logprobs=top, tools=tools, tool_choice=choice)


def _tool_calls(v: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, checked: [{"id", "type": "function",
    "function": {"name", "arguments": <JSON text>}}]."""
    if not isinstance(v, list):
        raise bad(f"'{where}' must be an array", where, "invalid_type")
    out = []
    for j, c in enumerate(v):
        fn = c.get("function") if isinstance(c, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or \
                not isinstance(fn.get("arguments", ""), str) or c.get("type", "function") != "function":
            raise bad(f"'{where}[{j}]' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                      f"\"arguments\": string}}}}", f"{where}[{j}]", "invalid_value")
        out.append({"id": str(c.get("id") or ""), "type": "function",
                    "function": {"name": fn["name"], "arguments": fn.get("arguments") or "{}"}})
    return out


def _message(m: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, Mapping):
        raise bad(f"'{where}' must be an object", where, "invalid_type")
    role = m.get("role")
    if role not in ROLES:
        raise bad(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role",
                  "invalid_value")
    content = m.get("content")
    if isinstance(content, list):   # content parts: only text parts can be served by a text model
        texts = []
        for p in content:
            if not isinstance(p, Mapping) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad(f"'{where}.content': only text parts are supported", f"{where}.content",
                          "invalid_value")
            texts.append(p["text"])
        content = "".join(texts)
    if content is None and role == "assistant":
        content = ""   # an assistant turn that only made tool calls
    if not isinstance(content, str):
        raise bad(f"'{where}.content' must be a string or an array of text parts", f"{where}.content",
                  "invalid_type")
    # "developer" is the newer name of "system"; templates only know the latter
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    if role == "assistant" and m.get("tool_calls"):
        out["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
    if role == "tool":
        tid = m.get("tool_call_id")
        if not isinstance(tid, str):
            raise bad(f"'{where}.tool_call_id' is required for a tool message (a string)", f"{where}.tool_call_id",
                      "missing_required_parameter")
        out["tool_call_id"] = tid
    if isinstance(m.get("name"), str):
        out["name"] = m["name"]
    return out


@dataclass(frozen=True)
class CompletionRequest(CommonRequest):
    prompts: tuple[str | tuple[int, ...], ...] = ()
    logprobs: int | None = None
    echo: bool = False

    @classmethod
    def parse(cls, body: Any) -> "CompletionRequest":
        """Validate a decoded `/v1/completions` body; APIError(400) on any mistake.
        `prompt` may be a string, an array of strings, an array of token ids, or an array
        of such arrays (one set of `n` choices per prompt, as OpenAI does)."""
        if not isinstance(body, Mapping):
            raise bad("the request body must be a JSON object")
        c = _common(body, chat=False)
        if "prompt" not in body or body["prompt"] is None:
            raise bad("you must provide a 'prompt' parameter", "prompt", "missing_required_parameter")
        if body.get("suffix") is not None:
            raise bad("'suffix' is not supported", "suffix", "unsupported_parameter")
        best_of = _int(body, "best_of", None, 1)
        if best_of is not None and best_of != c["n"]:
            raise bad("'best_of' other than 'n' is not supported", "best_of", "unsupported_parameter")
        logprobs = _int(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
        echo = _bool(body, "echo", False)
        if echo and logprobs is not None:
            raise bad("'echo' with 'logprobs' (prompt logprobs) is not supported", "echo", "unsupported_parameter")
        prompts = _prompts(body["prompt"])
        if c["n"] * len(prompts) > MAX_N:       # each is a sequence with its own thread and KV
            raise bad(f"a request may ask for at most {MAX_N} completions (n x prompts), got "
                      f"{c['n']} x {len(prompts)}", "n", "invalid_value")
        return cls(**c, prompts=prompts, logprobs=logprobs, echo=echo)


def _prompts(p: Any) -> tuple[str | tuple[int, ...], ...]:
    def ids(x: Any) -> tuple[int, ...] | None:
        if isinstance(x, list) and x and all(_is_int(t) for t in x):
            return tuple(x)
        return None

    if isinstance(p, str):
        out: list[str | tuple[int, ...]] = [p]
    elif ids(p) is not None:
        out = [ids(p)]  # type: ignore[list-item]
    elif isinstance(p, list) and p and all(isinstance(x, str) or ids(x) is not None for x in p):
        out = [x if isinstance(x, str) else ids(x) for x in p]  # type: ignore[misc]
    else:
        raise bad("'prompt' must be a string, an array of strings, an array of token ids, "
                  "or an array of token-id arrays", "prompt", "invalid_type")
    if any(isinstance(x, str) and not x for x in out):
        raise bad("'prompt' must not be empty", "prompt", "invalid_value")
    return tuple(out)


# ---- responses -----------------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprob_entry(token: bytes, logprob: float, top: Sequence[tuple[bytes, float]]) -> dict[str, Any]:
    """One element of a chat choice's `logprobs.content`."""
    def one(b: bytes, lp: float) -> dict[str, Any]:
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}
    return {**one(token, logprob), "top_logprobs": [one(b, lp) for b, lp in top]}


def completion_logprobs(entries: Sequence[tuple[bytes, float, Sequence[tuple[bytes, float]]]],
                        text_offset0: int = 0) -> dict[str, Any]:
    """A completions choice's `logprobs` object from (token bytes, logprob, top) triples."""
    tokens, lps, tops, offsets = [], [], [], []
    off = text_offset0
    for b, lp, top in entries:
        s = b.decode("utf-8", errors="replace")
        tokens.append(s)
        lps.append(lp)
        alts: dict[str, float] = {}
        for t, v in top:   # tokens that render alike (partial UTF-8) keep the likeliest one
            alts.setdefault(t.decode("utf-8", errors="replace"), v)
        tops.append(alts)
        offsets.append(off)
        off += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
