"""runtime/tools.py without a model: tool and tool_choice validation, which rendering
path a template takes (native `tools` vs the generic JSON format), the reply grammar,
parsing replies, and ToolStream's deltas (whatever the split of the text, they add up
to the parsed reply, the call's header first)."""
from __future__ import annotations

import json

import pytest

from edgeformer.errors import InputError
from edgeformer.formats.chat_template import render_chat
from edgeformer.runtime.tools import (ToolChoice, ToolStream, parse_reply, parse_tool_choice, parse_tools, plan,
                                      reply_schema, template_supports_tools)

jsonschema = pytest.importorskip("jsonschema")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
STRICT = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('roles: system, user, assistant') }}{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
          "{% endfor %}")
# a Hermes-style template that renders tools, calls and results itself
NATIVE = ("{% if tools %}<tools>{% for t in tools %}{{ t['function'] | tojson }}{% endfor %}</tools>\n{% endif %}"
          "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
          "{% for c in m.get('tool_calls', []) %}<tool_call>{\"name\": \"{{ c['function']['name'] }}\", "
          "\"arguments\": {{ c['function']['arguments'] | tojson }}}</tool_call>{% endfor %}\n{% endfor %}")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "local time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
HISTORY = [{"role": "user", "content": "Weather in Oslo?"},
           {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
               "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "RESULT-4C"}]


@pytest.mark.parametrize("tools, says", [
    ("x", "array"), ([{"type": "retrieval"}], "function"),
    ([{"type": "function", "function": {"name": "a b"}}], "name"),
    ([WEATHER, WEATHER], "duplicate"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "x"}}}],
     "not a valid JSON Schema"),
])
def test_bad_tools(tools, says):
    with pytest.raises(InputError, match=says):
        parse_tools(tools)


def test_tool_choice():
    tools = parse_tools([WEATHER, CLOCK])
    assert parse_tool_choice(None, tools) == ToolChoice("auto") and parse_tool_choice(None, ()) == ToolChoice("none")
    assert parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, tools) == \
        ToolChoice("function", "get_time")
    for bad in ("always", {"type": "function", "function": {"name": "nope"}}, {"type": "x"}):
        with pytest.raises(InputError):
            parse_tool_choice(bad, tools)
    with pytest.raises(InputError):
        parse_tool_choice("required", ())
    assert parse_tools([{"type": "function", "function": {"name": "f"}}])[0].parameters["type"] == "object"


def test_reply_schema_admits_exactly_the_allowed_replies():
    tools = parse_tools([WEATHER, CLOCK])
    call = {"tool_call": {"name": "get_time", "arguments": {"tz": "CET"}}}
    named = reply_schema(tools, ToolChoice("function", "get_weather"))
    auto = reply_schema(tools, ToolChoice("auto"))
    jsonschema.validate(call, reply_schema(tools, ToolChoice("required")))
    jsonschema.validate(call, auto)
    jsonschema.validate({"response": "hi"}, auto)
    for bad, schema in ((call, named), ({"response": "hi"}, named),
                        ({"tool_call": {"name": "get_weather", "arguments": {}}}, auto)):   # city is required
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert reply_schema(tools, ToolChoice("none")) is None


def test_template_paths():
    assert not template_supports_tools(CHATML) and template_supports_tools(NATIVE)
    tools = parse_tools([WEATHER])
    # generic, template with a tool role: the call as the generic JSON, the result as a tool turn
    p = plan(HISTORY, tools, ToolChoice("auto"), CHATML)
    assert not p.native and p.tools is None and p.grammar is not None
    text = render_chat(CHATML, p.messages)
    assert text.startswith("<|im_start|>system\nYou can call the following tools:\n{\"name\": \"get_weather\"")
    assert '<|im_start|>assistant\n{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}' in text
    assert "<|im_start|>tool\nRESULT-4C<|im_end|>" in text and "Once a tool_response" in text
    # a template that rejects the tool role: the result goes in a user turn (llama.cpp's polyfill)
    text = render_chat(STRICT, plan(HISTORY, tools, ToolChoice("auto"), STRICT).messages)
    assert 'user: {"tool_response": {"tool": "get_weather", "content": "RESULT-4C", "tool_call_id": "call_1"}}' \
        in text
    # none: no tools shown, nothing constrained, the history still rendered
    p = plan(HISTORY, tools, ToolChoice("none"), CHATML)
    assert p.grammar is None and not p.active and "You can call" not in render_chat(CHATML, p.messages)
    # native: the template gets the tools and HF-style calls (arguments as an object)
    p = plan(HISTORY, tools, ToolChoice("auto"), NATIVE)
    assert p.native and p.grammar is None
    text = render_chat(NATIVE, p.messages, tools=p.tools)
    assert text.startswith('<tools>{"name": "get_weather"') and "You can call" not in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in text
    assert plan(HISTORY, tools, ToolChoice("required"), NATIVE).grammar is not None


def test_parse_reply_formats():
    r = parse_reply('{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}')
    assert r.content is None and json.loads(r.tool_calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert parse_reply('{"response": "It is \\"mild\\"."}').content == 'It is "mild".'
    r = parse_reply('Sure.\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>')
    assert r.content == "Sure." and r.tool_calls[0]["function"]["name"] == "get_time"
    assert parse_reply('{"name": "get_time", "arguments": {}}', ["get_time"]).tool_calls
    assert parse_reply('{"name": "other", "arguments": {}}', ["get_time"]).tool_calls == []
    assert parse_reply("plain text").content == "plain text"


def _run(text: str, cuts: list[int], native: bool = False):
    ts, deltas, pos = ToolStream(native, ["get_weather"]), [], 0
    for c in [*cuts, len(text)]:
        deltas += ts.feed(text[pos:c])
        pos = c
    deltas += ts.finish()
    return ts, deltas


@pytest.mark.parametrize("text", [
    '{"tool_call": {"name": "get_weather", "arguments": {"city": "S\\u00e3o Paulo \\"SP\\"", "n": [1, {"a": 2}]}}}',
    '{"response": "Cold: -3 \\u00b0C, \\"windy\\"\\n\\\\ more \\ud83d\\ude00 end"}',
])
def test_tool_stream_deltas_add_up_whatever_the_split(text):
    whole = parse_reply(text)
    for step in (1, 2, 3, 7, len(text)):
        ts, deltas = _run(text, list(range(step, len(text), step)))
        assert ts.reply is not None and ts.finish_reason("stop") == ("tool_calls" if whole.tool_calls else "stop")
        content = "".join(d.get("content", "") for d in deltas)
        tcs = [tc for d in deltas for tc in d.get("tool_calls", [])]
        if whole.tool_calls:
            assert not content and tcs[0]["id"] == ts.reply.tool_calls[0]["id"]
            assert tcs[0]["function"] == {"name": "get_weather", "arguments": ""}
            args = "".join(tc["function"]["arguments"] for tc in tcs[1:])
            assert json.loads(args) == json.loads(whole.tool_calls[0]["function"]["arguments"])
            assert args == ts.reply.tool_calls[0]["function"]["arguments"]
            if step < 5:       # fragments went out while the arguments were being generated
                assert len(tcs) > 3
        else:
            assert content == whole.content == ts.reply.content and not tcs


def test_tool_stream_cut_short_and_native():
    ts, deltas = _run('{"tool_call": {"name": "get_weather", "arguments": {"ci', [5, 30])
    assert ts.finish_reason("length") == "length" and ts.reply.tool_calls[0]["function"]["arguments"] == '{"ci'
    assert "".join(tc["function"]["arguments"] for d in deltas for tc in d["tool_calls"]) == '{"ci'
    ts, deltas = _run('I will check.<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>',
                      [3, 20, 50], native=True)
    assert deltas[0] == {"content": "I will check."} and deltas[1]["tool_calls"][0]["function"]["name"] == \
        "get_weather" and ts.finish_reason("stop") == "tool_calls"
