"""Hostile chat templates (issue 16): each known Jinja escape, and each way to spend
unbounded time or memory, is refused with an edgeformer error, quickly, with a short
message that names no file path. A template that fails on a one-message conversation is
broken (FormatError when it is loaded); one that fails only on some conversation refuses
that request (InputError). `bench/template_escapes.py` prints this corpus as a table."""
from __future__ import annotations

import re
import time

import pytest

from edgeformer.errors import EdgeformerError, FormatError, InputError
from edgeformer.formats.chat_template import BUILTIN_FAMILIES, ChatTemplate, builtin_template, render_chat
from edgeformer.formats.template_sandbox import TemplateLimits

BIG = "{% set s = 'a' * 1000000 %}"
# (name, template, what the refusal says): every one fails on any conversation
ATTACKS = [
    ("__class__ walk", "{{ messages.__class__ }}", "unsafe"),
    ("__mro__ walk", "{{ ''.__class__.__mro__[1] }}", "unsafe"),
    ("__subclasses__ walk", "{{ [].__class__.__base__.__subclasses__() }}", "unsafe"),
    ("__globals__ of a global", "{{ raise_exception.__globals__ }}", "unsafe"),
    ("cycler __init__.__globals__", "{{ cycler.__init__.__globals__.os }}", "unsafe"),
    ("joiner __init__.__globals__", "{{ joiner.__init__.__globals__.os }}", "unsafe"),
    ("namespace __init__", "{% set ns = namespace() %}{{ ns.__init__.__globals__ }}", "__init__"),
    ("namespace attrs", "{% set ns = namespace() %}{{ ns._Namespace__attrs }}", "unsafe|no attribute"),
    ("self._TemplateReference__context", "{{ self._TemplateReference__context }}", "unsafe"),
    ("str.format field walk", "{{ '{0.__class__.__mro__}'.format(messages) }}", "unsafe"),
    ("str.format_map field walk", "{{ '{m.__class__}'.format_map({'m': messages}) }}", "unsafe"),
    ("|format on an attribute", "{{ '%s'|format(messages.__class__) }}", "unsafe"),
    ("% on an attribute", "{{ '%s' % messages.__init__ }}", "unsafe"),
    ("lipsum (removed)", "{{ lipsum(10**5) }}", "lipsum"),
    ("range(10**9)", "{{ range(10**9)|length }}", "Range too big"),
    ("'a' * 10**10", "{{ 'a' * 10**10 }}", "over the limit"),
    ("[0] * 10**10", "{{ ([0] * 10**10)|length }}", "over the limit"),
    ("7 ** 99999999", "{{ 7 ** 99999999 }}", "bits"),
    ("int * int growth", "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
     "{% endfor %}", "bits"),
    ("nested loops, empty body", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "time limit"),
    ("nested loops, output", "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
     "output .* over the limit|time limit"),   # whichever comes first on this machine
    ("tojson(indent=10**9)", "{{ messages|tojson(indent=10**9) }}", "indent"),
    ("deep macro recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested over"),
    ("recursive loop, no end", "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", "nested over"),
    ("division by zero", "{{ 1 / 0 }}", "ZeroDivisionError"),
    ("undefined filter", "{{ messages|no_such_filter }}", "No filter named"),
    ("syntax error", "{% for m in messages %}", "syntax error"),
    ("'~' doubling", "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", "'~' result .* over the limit"),
    ("block set doubling", "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}"
     "{% endset %}{% set ns.s = t %}{% endfor %}", "output .* over the limit"),
    ("print [s] * 10**5", BIG + "{{ [s] * 100000 }}", "printed value .* over the limit"),
    ("join [s] * 10**5", BIG + "{{ ([s] * 100000)|join }}", "join result .* over the limit"),
    ("str.join [s] * 10**5", BIG + "{{ ''.join([s] * 100000) }}", "str.join result .* over the limit"),
    ("str.replace('', s)", BIG + "{{ s.replace('', s) }}", "replace result .* over the limit"),
    ("|replace('', s)", BIG + "{{ s|replace('', s) }}", "replace result .* over the limit"),
    ("str.center(10**9)", "{{ 'a'.center(10**9) }}", "center width .* over the limit"),
    ("|center(10**9)", "{{ 'a'|center(10**9) }}", "center width .* over the limit"),
    ("|indent(s) on many lines", "{% set t = 'a\n' * 500000 %}{{ t|indent(' ' * 100000) }}",
     "indent result .* over the limit"),
    ("|wordwrap with a long wrapstring", BIG + "{{ s|wordwrap(1, true, s) }}", "wordwrap result .* over the limit"),
    ("str.format width", "{{ '{:>1000000000}'.format(1) }}", "str.format .* over the limit"),
    ("str.format repeated field", BIG + "{{ ('{0}' * 1000).format(s) }}", "str.format .* over the limit"),
    ("% width", "{{ '%1000000000d' % 1 }}", "'%' formatting .* over the limit"),
    ("% '*' width", "{{ '%*d' % (10**9, 1) }}", "'\\*' widths"),
    ("str.expandtabs", "{{ ('\t' * 1000).expandtabs(1000000) }}", "not allowed"),
    ("|batch fill", "{{ [1]|batch(10**12, 0)|list }}", "batch count"),
    ("|sum of lists", "{{ ([[1] * 1000] * 100000)|sum(start=[]) }}", "non-numbers"),
]


def _refusal(template: str, messages: list[dict]) -> tuple[EdgeformerError, float]:
    t0 = time.perf_counter()
    with pytest.raises(EdgeformerError) as e:
        render_chat(template, messages)
    return e.value, time.perf_counter() - t0


@pytest.mark.parametrize("template,match", [(t, m) for _, t, m in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_quickly(template, match):
    err, seconds = _refusal(template, [{"role": "user", "content": "hi"}])
    assert isinstance(err, FormatError), err   # fails on a one-message conversation: broken
    assert seconds < 2.0, f"refused after {seconds:.2f} s"
    what = err.what
    assert len(what) <= 300 and "\n" not in what
    assert re.search(match, what), what


def test_conversation_that_blows_a_bound_is_the_requests_error():
    """A cubic template passes the load check (one message) but runs past the time limit
    on 2,000 messages: InputError, named by file name only, within the bound."""
    cubic = ("{% for a in messages %}{% for b in messages %}{% for c in messages %}{% endfor %}{% endfor %}"
             "{% endfor %}{{ messages|length }}")
    ct = ChatTemplate(cubic, origin="/very/secret/dir/model.gguf")
    assert ct.render([{"role": "user", "content": "hi"}]) == "1"
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="time limit") as e:
        ct.render([{"role": "user", "content": "hi"}] * 2000)
    assert time.perf_counter() - t0 < 2.0
    assert "model.gguf" in str(e.value) and "/very/secret" not in str(e.value)


ORDINARY = """{%- macro tree(n) %}{% if n %}({{ tree(n - 1) }}){% endif %}{% endmacro -%}
{{ '%s-%03d' % ('a', 7) }} {{ '{}:{x}'.format(1, x='y') }} {{ messages|join(', ', attribute='content') }}
{{ [{'n': 2}, {'n': 3}]|sum(attribute='n') }} {{ 'a b a'|replace('a', 'cc') }} {{ 'x\ny'|indent(2, true) }}
{{ 'mid'|center(9) }}|{{ 'one two three four'|wordwrap(8) }} {{ 'ab' * 3 }} {{ 2 ** 10 }} {{ [1] + [2] }}
{{ 'p' ~ 1 ~ none }} {{ tree(6) }} {{ ', '.join(['x', 'y']) }} {{ [1, 2, 3]|batch(2)|list }}
{% set block %}{% for m in messages %}{{ loop.index }}{{ '.' if not loop.last }}{% endfor %}{% endset %}{{ block }}
{% for x in [[1, [2]], 3] recursive %}{% if x is iterable %}[{{ loop(x) }}]{% else %}{{ x }}{% endif %}{% endfor %}
{{ {'k': [1, {'z': 'é<'}]}|tojson(indent=2) }} {{ messages|tojson }}"""


def test_ordinary_templates_render_as_plain_jinja_does():
    """Every operation the sandbox bounds still gives plain Jinja's result when used as
    chat templates use it (transformers' environment, tojson without HTML escaping)."""
    import json

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    plain.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    want = plain.from_string(ORDINARY).render(messages=conv, add_generation_prompt=True)
    assert render_chat(ORDINARY, conv) == want


def test_limits_are_settable():
    loop = "{% for i in range(100000) %}{{ i }}{% endfor %}"
    with pytest.raises(FormatError, match="output"):
        ChatTemplate(loop, limits=TemplateLimits(chars=1000))
    with pytest.raises(FormatError, match="nested over 3"):
        ChatTemplate("{% macro f(n) %}{{ f(n - 1) if n else '' }}{% endmacro %}{{ f(5) }}",
                     limits=TemplateLimits(depth=3))
    assert len(ChatTemplate(loop).render([{"role": "user", "content": "x"}])) == 488890


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_long_real_conversation_renders_within_the_default_limits(shipped, family):
    """The shipped templates (built-in families, and SmolLM2's own) render a long
    conversation (400 turns, 1.8 MB, well over the 1 MB base output budget: the budget
    grows with the input) well inside the default limits."""
    words = "The quick brown fox jumps over the lazy dog; 中文 😀 <b>tags</b> 'quotes' \"dq\"\n".split(" ")
    conv = [{"role": "system", "content": "Be terse."}] if family != "gemma" else []
    for i in range(400):
        conv.append({"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(words * 60)})
    conv.append({"role": "user", "content": "the end"})
    sources = [builtin_template(family)]
    if family == "chatml":
        sources.append(shipped.tokenizer_metadata("smollm2-135m-instruct")["tokenizer.chat_template"])
    for src in sources:
        t0 = time.perf_counter()
        out = ChatTemplate(src).render(conv)
        assert time.perf_counter() - t0 < 1.0
        assert len(out) > 1 << 20 and conv[-2]["content"].strip() in out
