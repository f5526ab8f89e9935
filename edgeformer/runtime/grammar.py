"""Constrained decoding: a grammar over the output, applied as a token mask in the sampler.

The engine is llguidance (Microsoft's Rust grammar engine behind Guidance; no Python
dependencies). It was picked over xgrammar by `bench/grammar_engines.py` on the real
vocabularies (BENCHMARKS "Structured output"): its per-token mask costs 14-22 us median
(SmolLM2's 49k and Gemma 3's 262k tokens), under 1% of a decode step; a JSON schema
compiles in ~1 ms against xgrammar's 6-44 ms (the first token waits for it); and
`pip install xgrammar` pulls torch, transformers and triton. xgrammar's masks are
faster (2-3 us), which does not show next to a multi-millisecond step.

A `Grammar` names what the output must match: any JSON value of type object ("json",
OpenAI's `json_object`), a JSON Schema ("json_schema"), a regular expression ("regex"),
a Lark grammar ("lark") or a llama.cpp GBNF grammar ("gbnf", converted to Lark by
llguidance). It is part of `SamplingParams` (frozen and hashable), so the same request
object carries it through `Engine`, `BatchEngine` and the server. `Constraint` is one
generation's matcher: `mask(logits)` returns the logits with every token the grammar
forbids at this position set to -inf, `accept(token)` advances it. Once the grammar is
complete only the end-of-generation tokens are allowed, so generation ends there.

JSON is generated without free whitespace (`, ` and `: ` separators), and numbers with
at most 15 integral and 9 fraction digits (where the schema sets no tighter bound; llama.cpp's
converter caps both at 16): with flexible whitespace or unbounded digits, small models
sampled at llama.cpp's defaults pad with newlines or loop on digits until the token
budget runs out (7 of 50 SmolLM2 draws did). Every output still validates against the
schema as given.

Where a mask for step n+1 could be computed while step n's forward pass runs, it does not
pay here: the mask depends on the token step n samples, and at ~20 us it is under 1% of
the step (measured in `bench/structured.py`), less than a thread hand-off would cost.
"""
from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.errors import EdgeformerError, InputError

KINDS = ("json", "json_schema", "regex", "lark", "gbnf")
# compact JSON: no free whitespace, so a small model cannot pad until the budget is gone
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Grammar:
    """What the output must match: `kind` one of KINDS, `source` the schema (JSON text),
    regex or grammar text ("" for "json")."""

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"grammar kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise InputError(f"grammar source must be text, got {type(self.source).__name__}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> "Grammar":
        """From a JSON Schema (a dict, or its JSON text); InputError if it is not JSON."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise InputError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise InputError(f"a JSON schema must be an object, got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema))       # key order kept: properties come out in it

    @classmethod
    def from_response_format(cls, rf: Any) -> "Grammar | None":
        """OpenAI's `response_format`: {"type": "text"} (None), {"type": "json_object"}, or
        {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}.
        InputError for anything else. `strict` changes nothing here: the schema is always
        enforced by the mask."""
        if rf is None:
            return None
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise InputError("response_format must be an object with a 'type'")
        t = rf["type"]
        if t == "text":
            return None
        if t == "json_object":
            return cls("json")
        if t == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                raise InputError("response_format json_schema needs 'json_schema': {'name': ..., 'schema': {...}}")
            return cls.json_schema(js.get("schema", {}))
        raise InputError(f"response_format type must be text, json_object or json_schema, got {t!r}")


def _llg() -> Any:
    import llguidance      # imported on first use: most generations are unconstrained
    return llguidance


def _grammar_text(g: Grammar) -> str:
    """The llguidance grammar for `g` (InputError where the source cannot be read)."""
    llg = _llg()
    m = llg.LLMatcher
    try:
        if g.kind == "json":
            return m.grammar_from_json_schema({"type": "object"}, overrides=_JSON_OPTIONS)
        if g.kind == "json_schema":
            return m.grammar_from_json_schema(_bounded_numbers(json.loads(g.source)), overrides=_JSON_OPTIONS)
        if g.kind == "regex":
            return m.grammar_from_regex(g.source)
        if g.kind == "lark":
            return m.grammar_from_lark(g.source)
        from llguidance.gbnf_to_lark import gbnf_to_lark
        return m.grammar_from_lark(gbnf_to_lark(g.source))
    except Exception as e:  # noqa: BLE001 - llguidance's GBNF converter raises plain Exception
        raise InputError(f"{g.kind} grammar: {e}") from None


# digits a generated number may have (module docstring): |x| < 1e15, multiples of 1e-9
_NUMBER_LIMIT, _NUMBER_STEP = 10 ** 15 - 1, 1e-9


def _bounded_numbers(node: Any) -> Any:
    """A copy of a JSON Schema in which every "number" / "integer" without its own bound
    gets +-_NUMBER_LIMIT, and every "number" without `multipleOf` gets _NUMBER_STEP."""
    if isinstance(node, list):
        return [_bounded_numbers(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bounded_numbers(v) for k, v in node.items()}
    if out.get("type") in ("number", "integer"):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_NUMBER_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _NUMBER_LIMIT
        if out["type"] == "number" and "multipleOf" not in out:
            out["multipleOf"] = _NUMBER_STEP
    return out


class _Vocab:
    """One tokenizer as llguidance sees it (built once per tokenizer and vocabulary size:
    ~0.1 s for SmolLM2, ~0.8 s for Gemma 3's 262k tokens)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        llg = _llg()
        tok = tokenizer
        pieces = []
        for i in range(vocab_size):
            if i >= tok.vocab_size:
                pieces.append(b"")
            elif tok.is_control(i):     # llguidance marks special tokens with a 0xff prefix
                pieces.append(b"\xff" + tok.token_text(i).encode())
            else:
                pieces.append(tok.piece(i))
        eos = sorted(set(tok.eog_ids) | ({tok.eos_id} if tok.eos_id is not None else set()))
        if not eos:
            raise InputError("constrained decoding needs a tokenizer with an end-of-generation token")

        class Wrap:
            eos_token_id, bos_token_id, tokens = eos[0], tok.bos_id, pieces
            special_token_ids: list[int] = []

            def __call__(self, s: bytes | str) -> list[int]:
                text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                return list(tok.encode(text, add_special=False))
        self.tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(Wrap()), n_vocab=vocab_size, eos_token=eos)
        self.vocab_size = vocab_size
        self.grammars: dict[Grammar, str] = {}     # compiled and validated, by Grammar

    def grammar(self, g: Grammar) -> str:
        """`g` as a validated llguidance grammar, cached (a schema compiles once per tokenizer)."""
        text = self.grammars.get(g)
        if text is None:
            text = _grammar_text(g)
            err = _llg().LLMatcher.validate_grammar(text, self.tokenizer)
            if err:
                raise InputError(f"{g.kind} grammar: {err}")
            if len(self.grammars) > 256:     # a server sees many schemas: keep the cache bounded
                self.grammars.clear()
            self.grammars[g] = text
        return text


_VOCABS: dict[tuple[int, int], tuple[Any, _Vocab]] = {}
_LOCK = threading.Lock()


def _vocab(tokenizer: Any, vocab_size: int) -> _Vocab:
    key = (id(tokenizer), vocab_size)
    with _LOCK:
        hit = _VOCABS.get(key)
        if hit is None or hit[0] is not tokenizer:
            hit = (tokenizer, _Vocab(tokenizer, vocab_size))     # keeps the tokenizer: id stays unique
            _VOCABS[key] = hit
        return hit[1]


class Constraint:
    """One generation's grammar state over a model's vocabulary (`vocab_size` logits)."""

    def __init__(self, grammar: Grammar, tokenizer: Any, vocab_size: int) -> None:
        """InputError if the grammar does not compile or admits no output at all."""
        llg = _llg()
        v = _vocab(tokenizer, vocab_size)
        self.grammar = grammar
        self.vocab_size = vocab_size
        self._m = llg.LLMatcher(v.tokenizer, v.grammar(grammar), log_level=0)
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._fresh = False
        self._fill()
        if self._m.is_error():
            why = self._m.get_error().splitlines()[0]
            raise InputError(f"the {grammar.kind} grammar admits no output ({why})")
        if not self._bits.any():
            raise InputError(f"the {grammar.kind} grammar admits no output")

    def _fill(self) -> None:
        if not self._fresh:
            self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
            self._fresh = True

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens the grammar allows next."""
        self._fill()
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:self.vocab_size].astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` (vocab,) with every forbidden token at -inf (a new float32 array).
        Raises EdgeformerError if the grammar allows nothing (it cannot be continued)."""
        self._fill()
        if not self._bits.any():
            raise EdgeformerError(f"the {self.grammar.kind} grammar allows no token here: "
                                  f"{self._m.get_error() or 'no continuation'}")
        lg = np.ascontiguousarray(logits, dtype=np.float32)
        out = np.empty_like(lg)
        _apply_bits()(lg, self._bits, out)
        return out

    def accept(self, token: int) -> None:
        """Advance past `token` (one the mask allowed; EdgeformerError otherwise)."""
        if not self._m.consume_token(int(token)):
            raise EdgeformerError(f"the {self.grammar.kind} grammar rejected token {token}: {self._m.get_error()}")
        self._fresh = False

    @property
    def complete(self) -> bool:
        """The output so far matches the whole grammar."""
        return bool(self._m.is_accepting())


def _apply_bits_py(logits, bits, out):
    """out[i] = logits[i] where bit i of `bits` is set, else -inf. Compiled by Numba
    (`_apply_bits`): 14 us (49k tokens) to 56 us (262k) where np.where over the unpacked
    bits took 0.1 to 1.3 ms."""
    v = logits.shape[0]
    ninf = np.float32(-np.inf)
    for w in range(bits.shape[0]):
        b, base = bits[w], w * 32
        for j in range(min(32, v - base)):
            out[base + j] = logits[base + j] if (b >> j) & 1 else ninf


@functools.cache
def _apply_bits() -> Any:
    """`_apply_bits_py` compiled, on the first constrained step. numba is imported here,
    after `edgeformer.backends.cpu` has applied EDGEFORMER_CPU_ISA (a module-level import
    would let `SamplingParams` import numba first and refuse a forced ISA)."""
    import edgeformer.backends.cpu  # noqa: F401 - sets Numba's target for EDGEFORMER_CPU_ISA
    from numba import njit
    return njit(cache=True, nogil=True)(_apply_bits_py)


def check(grammar: Grammar, tokenizer: Any, vocab_size: int) -> None:
    """Compile and validate `grammar` for this tokenizer now (cached), so a request fails
    before submission with InputError (the server does this off its event loop)."""
    Constraint(grammar, tokenizer, vocab_size)


def constrained(params: Any, response_format: Any = None, grammar: Grammar | None = None) -> Any:
    """`params` (SamplingParams) with the grammar that `response_format` (OpenAI's) or
    `grammar` names; InputError if both are given, or params already has another one."""
    from dataclasses import replace
    g = Grammar.from_response_format(response_format)
    if g is not None and grammar is not None:
        raise InputError("give response_format or grammar, not both")
    g = g or grammar
    if g is None:
        return params
    if not isinstance(g, Grammar):
        raise InputError(f"grammar must be a runtime.grammar.Grammar, got {type(g).__name__}")
    if params.grammar is not None and params.grammar != g:
        raise InputError("the sampling params already carry a different grammar")
    return replace(params, grammar=g)
