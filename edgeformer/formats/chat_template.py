"""Chat templates: Jinja2 templates (from GGUF `tokenizer.chat_template` or HF
`tokenizer_config.json`) rendered the way HF `transformers` renders them.

The environment matches transformers' `_compile_jinja_template`: a sandbox (templates
from model files are untrusted code) with `trim_blocks`, `lstrip_blocks`, the
`loopcontrols` extension, a `tojson` that does not escape HTML, and the globals
`raise_exception` and `strftime_now`. Template variables: `messages`,
`add_generation_prompt`, `tools`, `documents`, the special-token strings (`bos_token`,
`eos_token`, `unk_token`, `pad_token`), and any extra keyword arguments. The sandbox is
`template_sandbox.BoundedEnvironment`: each render runs within time, size and call-depth
limits (`TemplateLimits`).

Errors: a template that does not compile, or that fails on a one-message conversation
(`[{"role": "user", "content": "hi"}]`: a bug, an unsafe access, a limit) is broken,
FormatError when the ChatTemplate is made (at load). A render that fails later is about
that conversation: InputError (the server's 400), whether the template refused it
(`raise_exception`) or its code failed or ran past a limit on it. Messages are one line,
at most 300 characters, and name the template by file name, never by its path.

A file without a template is a base model as far as chat goes: it runs as plain
continuation. A built-in template (`templates/*.jinja`: chatml for SmolLM/Qwen, Gemma's
`<start_of_turn>`, Llama 3) is applied only when asked (`--chat-template NAME`,
`load(chat_template=NAME)`; "auto" picks the family the vocabulary's turn markers belong
to), and `ChatTemplate.builtin` says so. Guessing one for a base model made the shipped
Gemma 3 270M (pretrained, no template) loop on chat-wrapped prompts.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes

from edgeformer.errors import FormatError, InputError
from edgeformer.formats.template_sandbox import DEFAULT_LIMITS, BoundedEnvironment, TemplateLimits, render_bounded

BUILTIN_FAMILIES = ("chatml", "gemma", "llama3")
# A vocabulary token that identifies the family's turn markers, checked in this order.
_FAMILY_MARKERS = (("gemma", "<start_of_turn>"), ("llama3", "<|start_header_id|>"), ("chatml", "<|im_start|>"))


_PROBE = [{"role": "user", "content": "hi"}]
_MAX_MESSAGE = 300


class _Rejected(jinja2.exceptions.TemplateError):
    """The template's own `raise_exception`: it refuses the conversation."""


def _raise_exception(message: str) -> None:
    raise _Rejected(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders its
    body unchanged, so templates that use it compile."""
    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@lru_cache(maxsize=1)
def _environment() -> BoundedEnvironment:
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def builtin_template(family: str) -> str:
    """The text of the built-in template for `family` (one of BUILTIN_FAMILIES). Raises
    InputError for an unknown family."""
    if family not in BUILTIN_FAMILIES:
        raise InputError(f"no built-in chat template {family!r}; built-in: {', '.join(BUILTIN_FAMILIES)}")
    return resources.files("edgeformer.formats").joinpath("templates", f"{family}.jinja").read_text("utf-8")


def detect_family(vocab: Mapping[str, int] | Sequence[str]) -> str | None:
    """The built-in family whose turn-marker token the vocabulary has, or None."""
    have = vocab if isinstance(vocab, Mapping) else set(vocab)
    return next((fam for fam, marker in _FAMILY_MARKERS if marker in have), None)


def _plain(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # fresh dicts without None values, as transformers' `_normalize_chat_messages` does
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(_short(f"chat message {i} must be a mapping with 'role' and 'content', got {m!r}"))
        out.append({k: v for k, v in m.items() if v is not None})
    return out


@dataclass
class ChatTemplate:
    """A compiled chat template. `source`: the Jinja text; `builtin`: True when the model
    file had none and a built-in family template is used (`family` names it);
    `special_tokens`: the strings bound to bos_token/eos_token/... when rendering."""

    source: str
    builtin: bool = False
    family: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    origin: str = "<template>"
    limits: TemplateLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        failure = _check(self.source, tuple(sorted(self.special_tokens.items())), self.limits)
        if failure is not None:
            raise FormatError(self.origin, failure)

    @property
    def name(self) -> str:
        """The template's name in messages: the file name of `origin`, never its path."""
        return self.origin if self.origin.startswith("<") else f"of {Path(self.origin).name}"

    @classmethod
    def for_tokenizer(cls, template: str | None, tokenizer: Any, origin: str = "<model>",
                      override: str | None = None) -> "ChatTemplate | None":
        """The template a model runs with: `override` when given, else the file's
        `template`, else None (plain continuation). `override` is a built-in family name
        (BUILTIN_FAMILIES; builtin=True), "auto" (the built-in family of the tokenizer's
        vocabulary) or the path of a Jinja file; InputError for anything else, or for
        "auto" with a vocabulary of no known family. Special-token strings come from the
        tokenizer (`bos_id`, `eos_id`, `unk_id`, `pad_id`)."""
        sp = special_token_strings(tokenizer)
        if override is None:
            return cls(template, builtin=False, special_tokens=sp, origin=origin) if template else None
        family = override.strip().lower()
        if family == "auto":
            detected = detect_family(tokenizer.token_to_id)
            if detected is None:
                raise InputError(f"--chat-template auto: the vocabulary has none of the turn markers of "
                                 f"{', '.join(BUILTIN_FAMILIES)}; name a template")
            family = detected
        if family in BUILTIN_FAMILIES:
            return cls(builtin_template(family), builtin=True, family=family, special_tokens=sp,
                       origin=f"<built-in {family}>")
        from pathlib import Path
        path = Path(override).expanduser()
        if not path.is_file():
            raise InputError(f"chat template {override!r}: not a built-in ({', '.join(BUILTIN_FAMILIES)}, auto) "
                             f"nor a Jinja file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"chat template {override!r}: cannot read it: {e}") from None
        return cls(text, builtin=False, special_tokens=sp, origin=str(path))

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]). Extra
        keyword arguments become template variables (they override the special-token
        strings). Raises InputError when the template rejects the conversation
        (`raise_exception`), or fails or runs past `limits` on it (module docstring)."""
        variables: dict[str, Any] = {**self.special_tokens, **kwargs, "messages": _plain(messages), "tools": tools,
                                     "documents": documents, "add_generation_prompt": add_generation_prompt}
        try:
            return _render(self.source, variables, self.limits)
        except _Rejected as e:
            raise InputError(_short(f"chat template {self.name} rejected the conversation: {e}")) from e
        except Exception as e:   # noqa: BLE001 - untrusted code: any failure is the caller's error
            raise InputError(_short(f"chat template {self.name} failed on this conversation: {_what(e)}")) from e


def _render(source: str, variables: dict[str, Any], limits: TemplateLimits) -> str:
    input_chars = sum(map(len, _strings(list(variables.values()))))
    return render_bounded(_compile(source), variables, limits, input_chars)


@lru_cache(maxsize=32)
def _check(source: str, special_tokens: tuple[tuple[str, str], ...], limits: TemplateLimits) -> str | None:
    """Why the template is broken (see the module docstring), or None."""
    try:
        _compile(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        return _short(f"chat template syntax error (line {e.lineno}): {e.message}")
    except Exception as e:   # noqa: BLE001 - e.g. RecursionError for deeply nested source
        return _short(f"chat template does not compile: {_what(e)}")
    try:
        _render(source, {**dict(special_tokens), "messages": _PROBE, "tools": None, "documents": None,
                         "add_generation_prompt": True}, limits)
    except _Rejected:
        pass
    except Exception as e:   # noqa: BLE001
        return _short(f"chat template fails on a one-message conversation: {_what(e)}")
    return None


def _what(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _short(message: str) -> str:
    """One line of at most _MAX_MESSAGE characters."""
    line = " ".join(message.split())
    return line if len(line) <= _MAX_MESSAGE else line[:_MAX_MESSAGE - 3] + "..."


def special_token_strings(tokenizer: Any) -> dict[str, str]:
    """{"bos_token": "<s>", "eos_token": ...} for the tokenizer's special ids that exist."""
    out = {}
    for var, attr in (("bos_token", "bos_id"), ("eos_token", "eos_id"), ("unk_token", "unk_id"),
                      ("pad_token", "pad_id")):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            out[var] = tokenizer.token_text(tid)
    return out


def render_chat(template: str | ChatTemplate, messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, tokenizer: Any = None, **kwargs: Any) -> str:
    """Render `messages` with a template (text or ChatTemplate); with `tokenizer`, its
    special-token strings are bound (bos_token...). Errors as ChatTemplate.render."""
    if isinstance(template, str):
        sp = special_token_strings(tokenizer) if tokenizer is not None else {}
        template = ChatTemplate(template, special_tokens=sp)
    return template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)


def _protect(value: Any, controls: Sequence[str], pattern: re.Pattern | None, protected: list[str],
             marker: str) -> Any:
    """`value` with each control-token text inside its strings replaced by a marker that
    indexes `protected` (recursively through dicts, lists and tuples)."""
    if isinstance(value, str):
        if pattern is None or not any(c in value for c in controls):
            return value

        def repl(m: re.Match) -> str:
            protected.append(m.group(0))
            return f"\ue000{marker}:{len(protected) - 1}\ue001"
        return pattern.sub(repl, value)
    if isinstance(value, Mapping):
        return {k: _protect(v, controls, pattern, protected, marker) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_protect(v, controls, pattern, protected, marker) for v in value)
    return value


def encode_chat(tokenizer: Any, template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, tools: Sequence[Mapping[str, Any]] | None = None,
                **kwargs: Any) -> list[int]:
    """Token ids of the rendered chat prompt. The template's own markers (<|im_start|>,
    <start_of_turn>...) become control tokens; the same texts inside messages or tools are
    tokenized as plain text, so user content cannot forge turns. BOS is prepended when the
    tokenizer wants one and the template did not write it. Errors as ChatTemplate.render."""
    controls = [c for c in tokenizer.control_texts() if c]
    user_text = "\x00".join(_strings([messages, tools]))   # no control text holds NUL
    present = [c for c in controls if c in user_text]
    pattern = re.compile("|".join(map(re.escape, present))) if present else None
    protected: list[str] = []
    marker = secrets.token_hex(6)   # unguessable, so user text cannot fake a marker
    try:
        msgs = _protect(list(messages), present, pattern, protected, marker)
        tls = _protect(tools, present, pattern, protected, marker)
    except RecursionError:
        raise InputError("chat messages or tools are nested too deeply") from None
    text = template.render(msgs, add_generation_prompt=add_generation_prompt, tools=tls, **kwargs)
    ids: list[int] = []
    pos = 0
    for m in re.finditer(f"\ue000{marker}:(\\d+)\ue001", text):
        ids += tokenizer.encode(text[pos:m.start()], add_special=False, parse_special=True)
        ids += tokenizer.encode(protected[int(m.group(1))], add_special=False, parse_special=False)
        pos = m.end()
    ids += tokenizer.encode(text[pos:], add_special=False, parse_special=True)
    bos = getattr(tokenizer, "bos_id", None)
    if getattr(tokenizer, "add_bos", False) and bos is not None and ids[:1] != [bos]:
        ids.insert(0, bos)
    return ids


def _strings(value: Any) -> list[str]:
    """Every string inside nested dicts/lists/tuples (keys excluded), in order."""
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (Mapping, list, tuple)):
            stack.extend(reversed(list(v.values()) if isinstance(v, Mapping) else v))
    return out
