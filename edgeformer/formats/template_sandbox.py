"""Bounded rendering of untrusted Jinja templates (chat templates come from model files).

Jinja's `ImmutableSandboxedEnvironment` stops attribute escapes (`__class__`, `__globals__`,
`str.format` field walks) and caps `range()` at 100,000 items, but nothing else: a nested
loop, `7 ** 99999999`, `'a' * 10**10` or `tojson(indent=10**9)` runs for minutes or fills
memory (jinja declines in-process limits, pallets/jinja#1691 and #2149; vLLM caps the
Rust renderer with minijinja's instruction "fuel" and the Python one with a timeout).
`BoundedEnvironment` adds, with no tracing hook:

- time: a wall-clock deadline, checked at every loop iteration (the compiled `for` iterates
  through `bounded_iter`), call, intercepted operator, filter and output piece;
- size: every string, list, buffer and the output stays under a character budget, checked
  *before* allocating where one step can multiply a size (`*` `**` `+` `%` `~`,
  `str.format`, `join`, `replace`, `center`, `indent`, `wordwrap`, `tojson`); printing or
  joining a container first weighs it;
- depth: calls nested through template code (macros, `caller()`, recursive loops, blocks)
  at most `depth` deep;
- an access to an unsafe attribute raises `SecurityError` at once (Jinja alone renders it
  as an empty Undefined); `lipsum` is gone and methods on bytes, `str.expandtabs`,
  `str.translate` and the sum of non-numbers are refused (no chat template needs them).

A refused operation raises `TemplateLimitError` or `jinja2.exceptions.SecurityError`; the
caller (`chat_template.py`) turns every exception into an edgeformer error.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from string import Formatter
from typing import Any

import jinja2
from jinja2 import nodes, pass_environment
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_INT_BITS = 4096          # `**` and `*` on ints; 2**4096 prints in 1,234 digits (Python caps at 4,300)
MAX_JSON_INDENT = 64         # tojson(indent=...), as characters


@dataclass(frozen=True)
class TemplateLimits:
    """Per-render bounds. `time_s` and `chars` (the output, and any string, list or buffer
    built on the way) grow with the size of the input text (`per_input_char`: that many
    more characters and microseconds per input character), so a long conversation is never
    refused by a template that is linear in it. `depth`: nested template calls."""
    time_s: float = 1.0
    chars: int = 1 << 20
    depth: int = 50
    per_input_char: int = 4


DEFAULT_LIMITS = TemplateLimits()


class TemplateLimitError(TemplateRuntimeError):
    """A template went past a time, size or depth bound."""


class _Budget:
    """The bounds of the render in progress (or, outside one, of compile-time folding)."""
    __slots__ = ("deadline", "time_s", "chars", "max_depth", "depth")

    def __init__(self, limits: TemplateLimits, input_chars: int = 0, timed: bool = True) -> None:
        self.time_s = limits.time_s + limits.per_input_char * input_chars * 1e-6
        self.deadline = time.monotonic() + self.time_s if timed else math.inf
        self.chars = limits.chars + limits.per_input_char * input_chars
        self.max_depth, self.depth = limits.depth, 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took over {self.time_s:.3g} s (the time limit)")

    def size(self, n: int, what: str) -> None:
        if n > self.chars:
            raise TemplateLimitError(f"{what} would be {n:,} long, over the limit of {self.chars:,}")


_ACTIVE: ContextVar[_Budget | None] = ContextVar("edgeformer_template_budget", default=None)
_UNTIMED = _Budget(DEFAULT_LIMITS, timed=False)


def _budget() -> _Budget:
    return _ACTIVE.get() or _UNTIMED


def render_bounded(template: jinja2.Template, variables: Mapping[str, Any],
                   limits: TemplateLimits = DEFAULT_LIMITS, input_chars: int = 0) -> str:
    """`template.render(variables)` (a template of a BoundedEnvironment) within `limits`
    scaled by `input_chars`. Raises whatever the template raises: TemplateLimitError past
    a bound, SecurityError for an unsafe access, any Python error of its code."""
    token = _ACTIVE.set(_Budget(limits, input_chars))
    try:
        return template.render(variables)
    finally:
        _ACTIVE.reset(token)


# ---- sizes ----------------------------------------------------------------------------------

def _weight(x: Any, b: _Budget, what: str) -> int:
    """About how many characters str(x) has (str of a container: its items' plus 4 each),
    counted without building it; TemplateLimitError past the budget."""
    total, stack, seen = 0, [x], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen & 1023 == 0:
            b.tick()
        if isinstance(v, (str, bytes)):
            total += len(v) + 4
        elif isinstance(v, Mapping):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif isinstance(v, Namespace):
            stack.append(v._Namespace__attrs)
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 2
        else:
            total += 64
        if total > b.chars:
            b.size(total, what)
    return total


def _sized(x: Any, b: _Budget, what: str) -> Any:
    if isinstance(x, (str, bytes, list, tuple, dict)):
        b.size(len(x), what)
    return x


def _text(x: Any, b: _Budget, what: str) -> str:
    """str(x), weighed first when x is not a string."""
    if isinstance(x, str):
        return x
    _weight(x, b, what)
    return str(x)


def _join(sep: str, items: Iterable[Any], b: _Budget, what: str) -> str:
    """sep.join(str(item)...) with the running length checked (and the clock)."""
    out, total = [], 0
    for x in items:
        b.tick()
        s = _text(x, b, what)
        total += len(s) + len(sep)
        b.size(total, what)
        out.append(s)
    return sep.join(out)


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_formatting(n_fields: int, widths: Iterable[str], values: Iterable[Any], fixed: int,
                      b: _Budget, what: str) -> None:
    """Refuse a format whose result could pass the budget: `n_fields` fields, each up to
    the largest width plus the largest value."""
    widest = 0
    for w in widths:
        if w == "*":
            raise TemplateLimitError(f"{what}: '*' widths are not allowed")
        if w:
            b.size(len(w), f"{what} width")   # a 10**6-digit width is refused before int()
            widest = max(widest, int(w))
    largest = max((_weight(v, b, what) for v in values), default=0)
    b.size(fixed + n_fields * (widest + largest), what)


def _percent(fmt: Any, args: Any, b: _Budget) -> Any:
    """`fmt % args`, bounded when fmt is a string (printf formatting)."""
    if isinstance(fmt, str):
        fields = _PRINTF_FIELD.findall(fmt)
        values = args.values() if isinstance(args, Mapping) else args if isinstance(args, tuple) else (args,)
        _check_formatting(len(fields), (w for f in fields for w in f), values, len(fmt), b, "'%' formatting")
    return fmt % args


def _check_str_format(fmt: str, args: tuple, kwargs: Mapping[str, Any], b: _Budget) -> None:
    fields = [(name, spec or "") for _, name, spec, _ in Formatter().parse(fmt) if name is not None]
    if any("{" in spec for _, spec in fields):
        raise TemplateLimitError("str.format: nested replacement fields are not allowed")
    widths = (w for _, spec in fields for w in re.findall(r"\d+", spec))
    _check_formatting(len(fields), widths, [*args, *kwargs.values()], len(fmt), b, "str.format")


# ---- operators and calls --------------------------------------------------------------------

def _add(a: Any, c: Any, b: _Budget) -> Any:
    if isinstance(a, (str, list, tuple)) and isinstance(c, (str, list, tuple)):
        b.size(len(a) + len(c), "'+' result")
    return a + c


def _mul(a: Any, c: Any, b: _Budget) -> Any:
    if isinstance(a, int) and isinstance(c, int):
        if a.bit_length() + c.bit_length() > MAX_INT_BITS:
            raise TemplateLimitError(f"'*' result over {MAX_INT_BITS} bits")
    else:
        seq, n = (a, c) if isinstance(c, int) else (c, a)
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int):
            b.size(len(seq) * max(n, 0), f"'*' on a {type(seq).__name__}")
    return a * c


def _pow(a: Any, c: Any, b: _Budget) -> Any:
    if isinstance(a, int) and isinstance(c, int) and c > 0 and abs(a) > 1 and a.bit_length() * c > MAX_INT_BITS:
        raise TemplateLimitError(f"'**' result over {MAX_INT_BITS} bits")
    return a ** c


_BINOPS: dict[str, Callable[[Any, Any, _Budget], Any]] = {"+": _add, "*": _mul, "**": _pow, "%": _percent}


def _width_arg(args: tuple, kwargs: Mapping[str, Any], b: _Budget, what: str) -> None:
    w = args[0] if args else kwargs.get("width", 0)
    if isinstance(w, int):
        b.size(w, what)


_STR_DENIED = frozenset({"expandtabs", "translate", "maketrans"})


def _str_method(method: Any, args: tuple, kwargs: Mapping[str, Any], b: _Budget) -> Callable[[], Any] | None:
    """Checks before a call of a bound str/bytes method; returns a bounded replacement
    call where there is one (join), else None (call it as is)."""
    s, name = method.__self__, method.__name__
    if isinstance(s, (bytes, bytearray)) or name in _STR_DENIED:
        raise SecurityError(f"{type(s).__name__}.{name} is not allowed in chat templates")
    if name == "join" and len(args) == 1 and not kwargs:
        return lambda: _join(s, args[0], b, "str.join result")
    if name in ("center", "ljust", "rjust", "zfill"):
        _width_arg(args, kwargs, b, f"str.{name} width")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_replace(s, args[0], args[1], b)
    return None


def _check_replace(s: str, old: str, new: str, b: _Budget) -> None:
    hits = s.count(old) if old else len(s) + 1
    b.size(len(s) + hits * len(new), "replace result")


# ---- filters --------------------------------------------------------------------------------

def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """transformers' `tojson` (json.dumps, no HTML escaping), streamed under the budget."""
    b = _budget()
    if isinstance(indent, int) and not 0 <= indent <= MAX_JSON_INDENT or \
            isinstance(indent, str) and len(indent) > MAX_JSON_INDENT:
        raise TemplateLimitError(f"tojson indent over {MAX_JSON_INDENT}")
    if separators is not None and sum(len(str(s)) for s in separators) > 2 * MAX_JSON_INDENT:
        raise TemplateLimitError("tojson separators too long")
    enc = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return _join("", enc.iterencode(x), b, "tojson result")


@pass_environment
def _sum(env: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    if attribute is not None:
        iterable = map(make_attrgetter(env, attribute), iterable)
    items = list(iterable)
    if not all(isinstance(x, (int, float)) for x in [start, *items]):
        raise SecurityError("sum of non-numbers is not allowed in chat templates")
    return sum(items, start)


def _check_filter(name: str, args: tuple, kwargs: Mapping[str, Any], b: _Budget) -> None:
    """Checks before calling filter `name`(value, *params)."""
    value: Any = args[0] if args else ""
    params = args[1:]
    if name in _STRINGIFY and not isinstance(value, str):
        _weight(value, b, f"filter {name} input")
        value = str(value)
    if name == "center":
        _width_arg(params, kwargs, b, "center width")
    elif name in ("batch", "slice"):
        n = params[0] if params else kwargs.get("linecount", kwargs.get("slices", 0))
        if isinstance(n, int) and n > MAX_RANGE:
            raise TemplateLimitError(f"{name} count {n} over {MAX_RANGE}")
    elif name == "indent":
        w = params[0] if params else kwargs.get("width", 4)
        width = len(w) if isinstance(w, str) else w if isinstance(w, int) else 0
        b.size(len(value) + (value.count("\n") + 1) * width, "indent result")
    elif name == "wordwrap":
        width = params[0] if params else kwargs.get("width", 79)
        wrap = params[2] if len(params) > 2 else kwargs.get("wrapstring") or "\n"
        if isinstance(width, int) and width > 0 and isinstance(wrap, str):
            lines = len(value) // width + value.count("\n") + 1
            b.size(len(value) + lines * len(wrap), "wordwrap result")
    elif name == "replace" and len(params) >= 2:
        _check_replace(value, str(params[0]), str(params[1]), b)


# filters that turn their input into a string (weighed first when it is a container)
_STRINGIFY = frozenset({"string", "trim", "upper", "lower", "title", "capitalize", "center", "indent", "wordwrap",
                        "truncate", "striptags", "escape", "e", "forceescape", "urlencode", "urlize", "replace",
                        "pprint", "safe", "wordcount", "format"})


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    passes = getattr(f, "jinja_pass_arg", None) is not None   # context/eval_ctx/env first

    @wraps(f)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.tick()
        _check_filter(name, args[passes:], kwargs, b)
        return _sized(f(*args, **kwargs), b, f"filter {name} result")
    return guarded


@pass_environment
def _join_filter(env: jinja2.Environment, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(make_attrgetter(env, attribute), value)
    return _join(str(d), value, _budget(), "join result")


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise jinja2.exceptions.FilterArgumentError("can't handle positional and keyword arguments at the same time")
    return _percent(str(value), kwargs or args, _budget())


# ---- the environment ------------------------------------------------------------------------

class _CodeGenerator(CodeGenerator):
    """Compiles every `for` loop to iterate through `environment.bounded_iter` and every
    `~` to `environment.str_concat` (Jinja forbids new node types, so the loops' iterables
    are recognized by identity as they are visited)."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        self._loop_iters = {id(loop.iter) for loop in node.find_all(nodes.For)}
        super().visit_Template(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in getattr(self, "_loop_iters", ()):
            return super().visit(node, *args, **kwargs)
        self.write("environment.bounded_iter(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:   # `~`
        self.write("environment.str_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with time, size and depth bounds (module docstring);
    render its templates with `render_bounded`. Never autoescapes."""

    intercepted_binops = frozenset(_BINOPS)
    code_generator_class = _CodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(autoescape=False, finalize=_finalize, **kwargs)
        self.globals.pop("lipsum", None)
        self.filters.update(tojson=_tojson, sum=_sum, join=_join_filter, format=_format_filter)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = _budget()
        b.tick()
        return _sized(_BINOPS[operator](left, right, b), b, f"'{operator}' result")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        b = _budget()
        b.tick()
        bounded = None
        if isinstance(getattr(__obj, "__self__", None), (str, bytes, bytearray)) and hasattr(__obj, "__name__"):
            bounded = _str_method(__obj, args, kwargs, b)
        if b.depth >= b.max_depth:
            raise TemplateLimitError(f"calls nested over {b.max_depth} deep (recursion?)")
        b.depth += 1
        try:
            rv = bounded() if bounded is not None else super().call(__context, __obj, *args, **kwargs)
        finally:
            b.depth -= 1
        return _sized(rv, b, "a call's result")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        fmt, is_map = value.__self__, value.__name__ == "format_map"

        @wraps(sandboxed)
        def bounded(*args: Any, **kwargs: Any) -> str:
            values = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            _check_str_format(fmt, () if is_map else args, values, _budget())
            return sandboxed(*args, **kwargs)
        return bounded

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def concat(self, pieces: Iterable[str]) -> str:   # output and buffers
        return _join("", pieces, _budget(), "output")

    def str_concat(self, values: Iterable[Any]) -> str:
        """`a ~ b ~ ...`."""
        return _join("", values, _budget(), "'~' result")

    def bounded_iter(self, iterable: Any) -> Iterator[Any]:
        """A `for` loop's iterable: the clock is checked before each item."""
        b = _budget()
        for x in iterable:
            b.tick()
            yield x


def _finalize(value: Any) -> Any:
    """`{{ value }}`: a container is weighed before it is printed."""
    if not isinstance(value, str):
        _text(value, _budget(), "printed value")
    return value
