"""Tool calling (OpenAI `tools` / `tool_choice`) over any chat model.

Two ways to show a model its tools, picked per chat template:

- native: the template mentions `tools` (Qwen, Llama 3.1+, Hermes-style templates): the
  tools go to the template as its `tools` variable, and earlier tool calls / results go
  in as HF-style messages (`assistant` with `tool_calls`, `tool` with `tool_call_id`);
- generic (llama.cpp's generic tool-call format, `common_chat_params_init_generic`): the
  template knows nothing of tools (SmolLM2's chatml template; Gemma 3 270M ships with no
  template at all), so a system message lists the tools and asks for a JSON reply,
  `{"tool_call": {"name": ..., "arguments": {...}}}` or `{"response": "..."}`; earlier
  calls are rendered as that JSON in the assistant turn, tool results as they are in a
  `tool` turn where the template renders that role (SmolLM2's chatml does), else as
  `{"tool_response": {"tool": name, "content": ...}}` in a user turn (llama.cpp's polyfill).
  Once the conversation holds a tool result, the `auto` instructions gain one line, "once
  a tool_response answers the request, reply with `response`": without it SmolLM2-135M
  calls the same tool again after its result (and with it from the start, it answers
  without calling).

Constraint (a JSON-schema grammar, `runtime.grammar`): `required` and a named function
force `{"tool_call": {"name": <const>, "arguments": <the tool's parameters>}}` (anyOf over
the allowed tools); `auto` in the generic format forces the union of that and
`{"response": <string>}`; `auto` with a native template is unconstrained (the model writes
its own format, parsed afterwards: the generic JSON, `<tool_call>{...}</tool_call>`, or a
bare `{"name", "arguments"}` object); `none` shows no tools and constrains nothing. One
call per turn: the generic format has no list of calls (parallel_tool_calls is accepted,
and at most one call comes back).

`ToolStream` turns the generated text into OpenAI chat deltas as it grows. In the generic
format the grammar fixes the layout (`{"tool_call": {"name": "X", "arguments": ` ... `}}`),
so the call's header delta (index, id, type, name, arguments "") goes out as soon as the
name is complete and the arguments stream as fragments as they are generated (all but the
last two characters, which close the envelope); a `{"response": "..."}` reply streams as
content, its JSON string decoded as it grows. Native `auto` output is held back and sent
whole at the end (its format is only known once complete).
"""
from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from edgeformer.errors import InputError
from edgeformer.runtime.grammar import Grammar

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")       # OpenAI's rule for function names
_SEP = (", ", ": ")                                  # the separators the grammar generates
_CALL_HEAD = re.compile(r'^\{"tool_call": \{"name": "((?:[^"\\]|\\.)*)", "arguments": ')
_RESP_HEAD = '{"response": "'
_CALL_START = '{"tool_call": {"name": "'
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """One function tool: `parameters` is its JSON Schema (kept as JSON text: hashable)."""

    name: str
    description: str
    parameters_json: str

    @property
    def parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.parameters_json)
        return out

    def openai(self) -> dict[str, Any]:
        """The tool as OpenAI (and HF chat templates) spell it."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolChoice:
    """`mode`: "auto" | "none" | "required" | "function" (then `name` is the function)."""

    mode: str = "auto"
    name: str | None = None


def parse_tools(tools: Any) -> tuple[Tool, ...]:
    """OpenAI's `tools` array -> Tools. InputError for anything malformed: not a function
    tool, a bad or duplicate name, `parameters` that is not a valid JSON Schema object."""
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise InputError("'tools' must be an array of function tools")
    out: list[Tool] = []
    seen: set[str] = set()
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, Mapping) or t.get("type") != "function" or not isinstance(t.get("function"), Mapping):
            raise InputError(f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-', got {name!r}")
        if name in seen:
            raise InputError(f"'{where}.function.name': duplicate tool name {name!r}")
        seen.add(name)
        desc = fn.get("description") or ""
        if not isinstance(desc, str):
            raise InputError(f"'{where}.function.description' must be a string")
        params = fn.get("parameters")
        if params is None:
            params = EMPTY_PARAMETERS
        _check_schema(params, f"{where}.function.parameters")
        out.append(Tool(name, desc, json.dumps(params)))
    return tuple(out)


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, Mapping):
        raise InputError(f"'{where}' must be a JSON Schema object, got {type(schema).__name__}")
    if schema.get("type", "object") != "object":
        raise InputError(f"'{where}' must describe an object (type 'object'), got type {schema.get('type')!r}")
    try:
        import jsonschema
    except ImportError:     # the grammar compile (tool_grammar, at submission) still checks it
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise InputError(f"'{where}' is not a valid JSON Schema: {e.message}") from None


def parse_tool_choice(choice: Any, tools: Sequence[Tool]) -> ToolChoice:
    """OpenAI's `tool_choice` -> ToolChoice (default: "auto" with tools, "none" without).
    InputError for an unknown mode or a function that is not among `tools`."""
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InputError(f"'tool_choice' must be 'auto', 'none', 'required' or a function, got {choice!r}")
        if choice != "none" and not tools:
            raise InputError(f"'tool_choice' {choice!r} needs 'tools'")
        return ToolChoice(choice)
    if isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("function"),
                                                                                        Mapping):
        name = choice["function"].get("name")
        if name not in {t.name for t in tools}:
            raise InputError(f"'tool_choice' names function {name!r}, which is not among 'tools'")
        return ToolChoice("function", name)
    raise InputError("'tool_choice' must be 'auto', 'none', 'required' or "
                     "{\"type\": \"function\", \"function\": {\"name\": ...}}")


def template_supports_tools(template: Any) -> bool:
    """Whether a chat template (text or `ChatTemplate`) renders a `tools` variable."""
    src = getattr(template, "source", template)
    return isinstance(src, str) and re.search(r"\btools\b", src) is not None


# ---- grammar and prompt ----------------------------------------------------------------------

def _call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    calls = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return {"type": "object", "properties": {"tool_call": calls[0] if len(calls) == 1 else {"anyOf": calls}},
            "required": ["tool_call"], "additionalProperties": False}


_RESPONSE_SCHEMA = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
                    "additionalProperties": False}


def reply_schema(tools: Sequence[Tool], choice: ToolChoice) -> dict[str, Any] | None:
    """The JSON Schema the reply must match in the generic format (None: "none")."""
    if choice.mode == "none" or not tools:
        return None
    if choice.mode == "function":
        return _call_schema([t for t in tools if t.name == choice.name])
    if choice.mode == "required":
        return _call_schema(tools)
    return {"anyOf": [_call_schema(tools), _RESPONSE_SCHEMA]}


def system_prompt(tools: Sequence[Tool], choice: ToolChoice, after_result: bool = False) -> str:
    """The generic format's instructions (llama.cpp's wording, plus the tool list)."""
    shown = [t for t in tools if choice.mode != "function" or t.name == choice.name]
    listing = "\n".join(json.dumps(t.openai()["function"], ensure_ascii=False) for t in shown)
    if choice.mode == "auto":
        ask = ('Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` '
               'reply to the user\'s request: {"tool_call": {"name": "<tool name>", "arguments": {...}}} or '
               '{"response": "<your reply>"}.')
        if after_result:
            ask += "\nOnce a tool_response answers the request, reply with `response`."
    else:
        ask = ('Respond in JSON format with a `tool_call` (a request to call a tool): '
               '{"tool_call": {"name": "<tool name>", "arguments": {...}}}.')
    return f"You can call the following tools:\n{listing}\n{ask}"


@dataclass
class ToolPlan:
    """How one chat request runs: the messages and `tools` to render, the grammar that
    constrains the reply (None: free), and how the reply is read (`native`, `active`)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    grammar: Grammar | None
    native: bool
    active: bool                    # tool calls may come back (a ToolStream reads the reply)
    names: tuple[str, ...] = ()


def plan(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool], choice: ToolChoice,
         template: Any) -> ToolPlan:
    """The messages, tools and grammar for a chat with `tools` under `choice`, for a model
    whose chat template is `template` (see the module docstring)."""
    native = template_supports_tools(template)
    active = bool(tools) and choice.mode != "none"
    schema = reply_schema(tools, choice)
    if native:
        msgs = [_native_message(m) for m in messages]
        grammar = Grammar.json_schema(schema) if schema is not None and choice.mode != "auto" else None
        if grammar is not None:      # the forced format is not the template's own: say what it is
            msgs = _with_system(msgs, system_prompt(tools, choice))
        return ToolPlan(msgs, [t.openai() for t in tools] if active else None, grammar, True, active,
                        tuple(t.name for t in tools))
    msgs = _generic_history(messages, _renders_tool_role(template))
    if active:
        msgs = _with_system(msgs, system_prompt(tools, choice, any(m["role"] == "tool" for m in messages)))
    return ToolPlan(msgs, None, Grammar.json_schema(schema) if schema is not None else None, False, active,
                    tuple(t.name for t in tools))


def _with_system(msgs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if msgs and msgs[0].get("role") == "system":
        first = dict(msgs[0])
        first["content"] = f"{first.get('content') or ''}\n\n{text}".lstrip()
        return [first, *msgs[1:]]
    return [{"role": "system", "content": text}, *msgs]


def _arguments(call: Mapping[str, Any]) -> Any:
    args = call["function"].get("arguments") or "{}"
    try:
        return json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        return args          # not JSON: passed on as the text it is


def _native_message(m: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(m)
    if m.get("tool_calls"):      # HF templates expect arguments as an object
        out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _arguments(c)}}
                             for c in m["tool_calls"]]
    return out


def _renders_tool_role(template: Any) -> bool:
    """Whether the template renders a `tool` turn (rather than rejecting the role or
    dropping its content)."""
    src = getattr(template, "source", template)
    return isinstance(src, str) and _tool_role_probe(src)


@lru_cache(maxsize=32)
def _tool_role_probe(source: str) -> bool:
    from edgeformer.formats.chat_template import render_chat
    probe = "\ue000tool-result-probe\ue001"
    try:
        text = render_chat(source, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                                    {"role": "tool", "content": probe}], add_generation_prompt=True)
    except InputError:
        return False
    return probe in text


def _generic_history(messages: Sequence[Mapping[str, Any]], tool_role: bool = False) -> list[dict[str, Any]]:
    """Messages for a template without tool support: calls as the generic JSON in the
    assistant turn, results as `tool` turns (`tool_role`) or user turns (llama.cpp's
    tool-response polyfill)."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            parts = [content] if content else []
            for c in m["tool_calls"]:
                names[c.get("id", "")] = c["function"]["name"]
                parts.append(json.dumps({"tool_call": {"name": c["function"]["name"], "arguments": _arguments(c)}},
                                        ensure_ascii=False, separators=_SEP))
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif role == "tool" and tool_role:
            out.append({"role": "tool", "content": content})
        elif role == "tool":
            resp: dict[str, Any] = {"tool": m.get("name") or names.get(m.get("tool_call_id") or "", ""),
                                    "content": content}
            if m.get("tool_call_id"):
                resp["tool_call_id"] = m["tool_call_id"]
            out.append({"role": "user", "content": json.dumps({"tool_response": resp}, ensure_ascii=False,
                                                              separators=_SEP)})
        else:
            out.append({"role": role, "content": content})
    return out


# ---- reading the reply -----------------------------------------------------------------------

def call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolReply:
    """A parsed reply: `content` (None when the reply is only a call) and OpenAI
    `tool_calls` ([{"id", "type": "function", "function": {"name", "arguments"}}])."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def _call(name: str, arguments: Any, cid: str | None = None) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, separators=_SEP)
    return {"id": cid or call_id(), "type": "function", "function": {"name": name, "arguments": args}}


def parse_reply(text: str, names: Sequence[str] = ()) -> ToolReply:
    """Tool calls in a finished reply: the generic JSON (`tool_call` / `response`),
    `<tool_call>{"name", "arguments"}</tool_call>` blocks (Hermes, Qwen), or a bare
    `{"name", "arguments"}` object naming one of `names`. Anything else is content."""
    s = text.strip()
    obj = _json(s)
    if isinstance(obj, dict):
        tc = obj.get("tool_call")
        if set(obj) == {"tool_call"} and isinstance(tc, dict) and isinstance(tc.get("name"), str):
            return ToolReply(None, [_call(tc["name"], tc.get("arguments", {}))])
        if set(obj) == {"response"} and isinstance(obj["response"], str):
            return ToolReply(obj["response"])
        if obj.get("name") in names and isinstance(obj.get("arguments", obj.get("parameters")), (dict, str)):
            return ToolReply(None, [_call(obj["name"], obj.get("arguments", obj.get("parameters")))])
    calls, rest = [], s
    for m in re.finditer(r"<tool_call>\s*(.*?)\s*</tool_call>", s, re.S):
        c = _json(m.group(1))
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            calls.append(_call(c["name"], c.get("arguments", c.get("parameters", {}))))
            rest = rest.replace(m.group(0), "")
    if calls:
        return ToolReply(rest.strip() or None, calls)
    return ToolReply(text)


def _json(s: str) -> Any:
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return None


class ToolStream:
    """The reply of one choice as OpenAI chat deltas, fed the generated text piece by piece
    (module docstring). `feed(text)` and `finish()` return lists of delta dicts;
    afterwards `reply` is the parsed ToolReply (what the non-streamed response holds) and
    `finish_reason(reason)` the choice's finish reason ("tool_calls" for a call)."""

    def __init__(self, native: bool, names: Sequence[str] = ()) -> None:
        self.native, self.names = native, tuple(names)
        self.buf = ""
        self.kind: str | None = None if not native else "held"   # "call" | "response" | "held"
        self.start = 0               # where the arguments / the response string begin in buf
        self.sent = 0                # characters of them already sent
        self.id = call_id()
        self.reply: ToolReply | None = None
        self.content: list[str] = []
        self.args: list[str] = []

    def _delta_content(self, text: str) -> dict[str, Any]:
        self.content.append(text)
        return {"content": text}

    def _delta_args(self, text: str) -> dict[str, Any]:
        self.args.append(text)
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.buf += text
        out: list[dict[str, Any]] = []
        if self.kind is None:
            m = _CALL_HEAD.match(self.buf)
            if m:
                self.kind, self.start, self.name = "call", m.end(), json.loads(f'"{m.group(1)}"')
                out.append({"tool_calls": [{"index": 0, "id": self.id, "type": "function",
                                            "function": {"name": self.name, "arguments": ""}}]})
            elif self.buf.startswith(_RESP_HEAD):
                self.kind, self.start = "response", len(_RESP_HEAD)
            elif not (_CALL_START.startswith(self.buf[:len(_CALL_START)]) or _RESP_HEAD.startswith(self.buf)):
                self.kind = "held"   # not the generic layout: read at the end
        if self.kind == "call":
            avail = self.buf[self.start:max(self.start, len(self.buf) - 2)]     # "}}" closes the envelope
            if len(avail) > self.sent:
                out.append(self._delta_args(avail[self.sent:]))
                self.sent = len(avail)
        elif self.kind == "response":
            done = _decode_prefix(self.buf[self.start:max(self.start, len(self.buf) - 2)])   # '"}' closes it
            if len(done) > self.sent:
                out.append(self._delta_content(done[self.sent:]))
                self.sent = len(done)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The deltas still owed once generation has ended."""
        parsed = parse_reply(self.buf, self.names)
        out: list[dict[str, Any]] = []
        if self.kind == "call":
            if parsed.tool_calls and parsed.tool_calls[0]["function"]["name"] == self.name:
                # the streamed fragments are the raw text of the arguments: keep them as the value
                rest = self.buf[self.start:len(self.buf) - 2][self.sent:]
                if rest:
                    out.append(self._delta_args(rest))
                parsed.tool_calls[0].update(id=self.id)
                parsed.tool_calls[0]["function"]["arguments"] = "".join(self.args)
                self.reply = parsed
            else:            # cut short (length): the call as far as it got, held-back tail included
                rest = self.buf[self.start:][self.sent:]
                if rest:
                    out.append(self._delta_args(rest))
                self.reply = ToolReply(None, [_call(self.name, "".join(self.args), self.id)])
            return out
        whole = _json(self.buf.strip())
        if self.kind == "response" and isinstance(whole, dict) and isinstance(whole.get("response"), str):
            full = whole["response"]
            if len(full) > self.sent:
                out.append(self._delta_content(full[self.sent:]))
            self.reply = ToolReply(full)
            return out
        if self.kind == "response":       # cut short: what was decoded so far
            self.reply = ToolReply("".join(self.content))
            return out
        self.reply = parsed
        if parsed.content:
            out.append(self._delta_content(parsed.content))
        for i, c in enumerate(parsed.tool_calls):
            out.append({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                        "function": {"name": c["function"]["name"], "arguments": ""}}]})
            if c["function"]["arguments"]:
                out.append({"tool_calls": [{"index": i, "function": {"arguments": c["function"]["arguments"]}}]})
        return out

    def finish_reason(self, reason: str | None) -> str | None:
        """"tool_calls" when the reply is a complete call, else the generation's reason."""
        if self.reply is not None and self.reply.tool_calls and reason == "stop":
            return "tool_calls"
        return reason


def _decode_prefix(s: str) -> str:
    """The longest prefix of the body of a JSON string (no quotes) that decodes: an escape
    cut mid-way is left for later."""
    for cut in range(0, min(len(s), 12) + 1):
        try:
            out: str = json.loads(f'"{s[:len(s) - cut]}"')
        except json.JSONDecodeError:
            continue
        if out and "\ud800" <= out[-1] <= "\udbff":     # half a surrogate pair: wait for the rest
            out = out[:-1]
        return out
    return ""
