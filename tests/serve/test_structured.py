"""Structured output and tool calling through the server, with the official `openai`
client on loopback, on the real shipped SmolLM2-135M-Instruct (cpu backend, greedy):
`response_format` json_schema / json_object on both endpoints, a weather-tool round trip
(call -> role:tool result -> final answer) streamed and not, a named `tool_choice` forcing
its function, and 400s for bad schemas and tools that leave the server serving."""
from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current local time in a time zone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40},
                                                    "format": {"type": "string", "enum": ["12h", "24h"]}},
                   "required": ["timezone", "format"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
RESULT = json.dumps({"temperature": 18, "unit": "celsius", "sky": "sunny"})
READING = {"type": "object", "properties": {
    "sensor": {"type": "string", "enum": ["temperature", "humidity", "pressure"]},
    "value": {"type": "number", "minimum": -40, "maximum": 60},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3}},
    "required": ["sensor", "value", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(real_server):
    return openai.OpenAI(base_url=real_server.base_url, api_key="unused", max_retries=0, timeout=300)


def _args_valid(call, tool) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def _streamed(chunks):
    """(content, [(id, name, arguments)], finish_reason, header deltas seen, argument fragments)."""
    content, calls, frags, finish = [], {}, 0, None
    for ch in chunks:
        if not ch.choices:
            continue
        d, c = ch.choices[0].delta, ch.choices[0]
        content.append(d.content or "")
        for tc in d.tool_calls or []:
            if tc.id is not None:           # the header: id, type and name first, arguments ""
                assert tc.index not in calls and tc.type == "function" and tc.function.arguments == ""
                calls[tc.index] = [tc.id, tc.function.name, ""]
            else:
                assert tc.function.name is None and tc.index in calls
                calls[tc.index][2] += tc.function.arguments
                frags += 1
        if c.finish_reason is not None:
            finish = c.finish_reason
    return "".join(content), [tuple(v) for _, v in sorted(calls.items())], finish, frags


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_weather_round_trip(client, stream):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=60)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and msg.content is None
    (call,) = msg.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert _args_valid(call, WEATHER)["city"] == "Paris"
    if stream:
        content, calls, finish, frags = _streamed(client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=60, stream=True))
        assert finish == "tool_calls" and not content
        (cid, name, arguments), = calls
        # same greedy call; its arguments arrived as several fragments while being generated
        assert cid.startswith("call_") and name == "get_weather" and arguments == call.function.arguments
        assert frags > 3
    history = [*ASK, msg.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=40)
    answer = final.choices[0].message
    assert not answer.tool_calls and final.choices[0].finish_reason in ("stop", "length")
    assert isinstance(answer.content, str) and "18" in answer.content      # it read the tool's result
    assert not answer.content.lstrip().startswith("{")                       # the reply, not its JSON envelope
    if stream:
        content, calls, finish, _ = _streamed(client.chat.completions.create(
            model=MODEL, messages=history, tools=[WEATHER], max_tokens=40, stream=True))
        assert not calls and finish == final.choices[0].finish_reason and content == answer.content
    # tool_choice "none": the same history, no call can come back
    none = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",
                                          max_tokens=40)
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason in ("stop", "length")


def test_named_and_required_tool_choice(client):
    forced = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], max_tokens=60,
                                            tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = forced.choices[0].message.tool_calls
    assert call.function.name == "get_time" and forced.choices[0].finish_reason == "tool_calls"
    _args_valid(call, CLOCK)
    req = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello!"}],
                                         tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=60)
    (call,) = req.choices[0].message.tool_calls
    _args_valid(call, {"get_weather": WEATHER, "get_time": CLOCK}[call.function.name])


def test_response_format_json_schema_and_json_object(client):
    rf = {"type": "json_schema", "json_schema": {"name": "reading", "schema": READING, "strict": True}}
    r = client.chat.completions.create(model=MODEL, max_tokens=120, response_format=rf,
                                       messages=[{"role": "user", "content": "Give one sensor reading."}])
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), READING)
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=120, response_format=rf, stream=True,
                                                 messages=[{"role": "user", "content": "Give one sensor reading."}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    c = client.completions.create(model=MODEL, prompt="A sensor reading in JSON:", max_tokens=120,
                                  extra_body={"response_format": rf})
    jsonschema.validate(json.loads(c.choices[0].text), READING)
    o = client.chat.completions.create(model=MODEL, max_tokens=80, response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "Describe a cat."}])
    assert isinstance(json.loads(o.choices[0].message.content), dict)


def _tool(name, params):
    return {"type": "function", "function": {"name": name, "parameters": params}}


@pytest.mark.parametrize("kw, param, says", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format", "nonsense"),
    ({"response_format": {"type": "json_schema", "json_schema": {     # compiles to nothing
        "name": "x", "schema": {"type": "string", "minLength": 10, "maxLength": 2}}}}, "response_format", "maxLength"),
    ({"response_format": {"type": "xml"}}, "response_format", "xml"),
    ({"tools": [_tool("f", {"type": "object", "properties": {"a": {"type": 5}}})]}, "tools", "parameters"),
    ({"tools": [_tool("f", {"type": "object", "properties": {"a": {"type": "nonsense"}}})]}, "tools", None),
    ({"tools": [_tool("f", {"type": "object"}), _tool("f", {"type": "object"})]}, "tools", "duplicate"),
    ({"tools": [_tool("bad name!", {"type": "object"})]}, "tools", "name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "sometimes"),
    ({"tool_choice": "required"}, "tool_choice", "tools"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "tools"),
])
def test_bad_schemas_and_tools_are_400_and_the_server_keeps_serving(client, kw, param, says):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, **kw)
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert says is None or says in err["message"], err["message"]
    ok = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert ok.choices[0].message.content


def test_tool_messages_are_checked(client):
    with pytest.raises(openai.BadRequestError) as e:      # a tool result must say which call it answers
        client.chat.completions.create(model=MODEL, max_tokens=4, messages=[*ASK, {"role": "tool", "content": "x"}])
    assert e.value.body["param"] == "messages[1].tool_call_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=4, messages=[
            *ASK, {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}])
    assert e.value.body["param"] == "messages[1].tool_calls[0]"
