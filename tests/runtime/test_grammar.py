"""Constrained decoding (runtime/grammar.py) on the real shipped models: every sampled
generation under a JSON-schema mask parses and validates; without the mask most do not;
regex and GBNF outputs match on every draw; bad grammars fail fast with InputError."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from edgeformer.errors import InputError
from edgeformer.runtime.grammar import Constraint, Grammar
from edgeformer.runtime.sampler import SamplingParams

jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,12}$"},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "email": {"type": "string", "maxLength": 24},
        "roles": {"type": "array", "items": {"type": "string", "enum": ["admin", "editor", "viewer"]},
                  "minItems": 1, "maxItems": 3},
        "address": {"type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 16},
                                   "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "roles", "address"],
    "additionalProperties": False,
}
READING = {
    "type": "object",
    "properties": {
        "sensor": {"type": "string", "enum": ["temperature", "humidity", "pressure"]},
        "value": {"type": "number", "minimum": -40, "maximum": 60},
        "ok": {"type": "boolean"},
        "samples": {"type": "array", "maxItems": 3,
                    "items": {"type": "object", "properties": {"minute": {"type": "integer", "minimum": 0,
                                                                          "maximum": 59},
                                                               "v": {"type": "number"}},
                              "required": ["minute", "v"], "additionalProperties": False}},
    },
    "required": ["sensor", "value", "samples"],
    "additionalProperties": False,
}
PROMPTS = {"person": "Write a JSON record for a new employee.", "reading": "Report one sensor reading as JSON."}
N_DRAWS = 50
N_FREE = 20          # unmasked draws of the same prompt: enough to show most fail


def sampled(seed: int, max_tokens: int, grammar: Grammar | None = None) -> SamplingParams:
    """llama.cpp's default sampling (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05)."""
    return SamplingParams(temperature=0.8, seed=seed, max_tokens=max_tokens, grammar=grammar)


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma3-270m"])
def batch(request):
    """A BatchEngine over a shipped model (25 streams at a time), with its chat encoder."""
    from edgeformer.api import load
    from edgeformer.runtime.scheduler import BatchEngine
    try:
        eng = load(request.param, n_ctx=512)
    except Exception as e:     # noqa: BLE001 - the registry package is optional
        pytest.skip(f"{request.param} unavailable: {e}")
    be = BatchEngine(eng.model, eng.tokenizer, kv_budget_bytes=160 << 20, max_batch=25, n_ctx=512)
    prompt = (lambda text: eng.encode_chat([{"role": "user", "content": text}])) if eng.chat_template else \
        (lambda text: eng.encode(text + "\n"))
    return be, prompt, request.param


def _draw(be, ids, params_list):
    hs = [be.submit(ids, p) for p in params_list]
    while any(not h.done for h in hs):
        be.step()
    return [h.result() for h in hs]


def _valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False


@pytest.mark.parametrize("name,schema", [("person", PERSON), ("reading", READING)])
def test_masked_samples_all_validate_and_unmasked_mostly_do_not(batch, name, schema) -> None:
    be, prompt, model = batch
    ids = prompt(PROMPTS[name])
    g = Grammar.json_schema(schema)
    masked = _draw(be, ids, [sampled(s, 256, g) for s in range(N_DRAWS)])
    bad = [r.text for r in masked if not _valid(r.text, schema)]
    assert not bad, f"{model} {name}: {len(bad)}/{N_DRAWS} masked outputs invalid, e.g. {bad[0]!r}"
    assert all(r.finish_reason == "stop" for r in masked)
    assert len({r.text for r in masked}) > N_DRAWS // 2          # sampled, not one forced answer
    # the same draws unmasked, with room for 1.5x the longest valid answer
    budget = int(1.5 * max(len(r.token_ids) for r in masked)) + 8
    free = _draw(be, ids, [sampled(s, budget) for s in range(N_FREE)])
    n_free = sum(_valid(r.text, schema) for r in free)
    assert n_free < N_FREE // 2, f"{model} {name}: {n_free}/{N_FREE} valid without the mask"
    print(f"{model} {name}: masked {N_DRAWS}/{N_DRAWS} valid, unmasked {n_free}/{N_FREE}")


def test_regex_and_gbnf_hold_on_every_draw(batch) -> None:
    be, prompt, model = batch
    ids = prompt("Is the sky blue? Answer and give a reason.")
    rx = r"(yes|no), because [a-z ]{4,40}\."
    gbnf = 'root ::= answer " (" num "%)"\nanswer ::= "yes" | "no" | "maybe"\nnum ::= [1-9] [0-9]?'
    for g, check in ((Grammar("regex", rx), lambda t: re.fullmatch(rx, t)),
                     (Grammar("gbnf", gbnf), lambda t: re.fullmatch(r"(yes|no|maybe) \([1-9][0-9]?%\)", t))):
        out = _draw(be, ids, [sampled(s, 60, g) for s in range(16)])
        assert all(check(r.text) for r in out), [r.text for r in out if not check(r.text)]


def test_bad_grammars_fail_at_submission(batch) -> None:
    be, prompt, _ = batch
    ids = prompt("hello")
    for g, why in ((Grammar("regex", "(("), "regex"), (Grammar.json_schema({"type": "nonsense"}), "json_schema"),
                   (Grammar("lark", "start: start"), "admits no output"),
                   (Grammar("gbnf", "root ::= undefined-rule"), "gbnf")):
        with pytest.raises(InputError, match=why):
            be.submit(ids, SamplingParams(grammar=g))
    assert not be._requests and not be.scheduler.has_work      # nothing was queued


def test_grammar_inputs_are_checked() -> None:
    with pytest.raises(InputError):
        Grammar("yaml", "")
    with pytest.raises(InputError):
        Grammar.json_schema("{not json")
    with pytest.raises(InputError):
        Grammar.from_response_format({"type": "xml"})
    with pytest.raises(InputError):
        Grammar.from_response_format({"type": "json_schema", "json_schema": {"schema": [1]}})
    assert Grammar.from_response_format({"type": "text"}) is None
    assert Grammar.from_response_format({"type": "json_object"}) == Grammar("json")
    with pytest.raises(InputError):
        SamplingParams(grammar="root ::= x")


def test_engine_api_constrains_greedy_output() -> None:
    from edgeformer.api import load
    eng = load(None, n_ctx=512)
    r = eng.chat([{"role": "user", "content": "Give one sensor reading as JSON."}], response_format={
        "type": "json_schema", "json_schema": {"name": "reading", "schema": READING, "strict": True}})
    jsonschema.validate(json.loads(r.text), READING)
    assert list(json.loads(r.text))[:2] == ["sensor", "value"]     # the schema's key order
    r = eng.generate("The capital of France is", grammar=Grammar("regex", r" [A-Z][a-z]+\."))
    assert re.fullmatch(r" [A-Z][a-z]+\.", r.text)
    with pytest.raises(InputError, match="not both"):
        eng.generate("x", response_format={"type": "json_object"}, grammar=Grammar("regex", "a"))


def test_mask_forbids_exactly_what_the_grammar_forbids() -> None:
    """The mask over the default model's vocabulary: after '{"a": ' only digits and a
    minus sign may follow for an integer property, and `mask` puts -inf exactly on the rest."""
    from edgeformer.api import load
    tok = load(None, n_ctx=64).tokenizer
    c = Constraint(Grammar.json_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                                        "required": ["a"]}), tok, tok.vocab_size)
    for t in tok.encode('{"a": ', add_special=False):
        assert c.allowed()[t]
        c.accept(t)
    ok = np.flatnonzero(c.allowed())
    texts = {tok.decode([int(t)]) for t in ok}
    assert texts and all(re.fullmatch(r"-|-?[0-9]+", s) for s in texts), sorted(texts)[:20]
    logits = np.zeros(tok.vocab_size, np.float32)
    masked = c.mask(logits)
    assert np.isneginf(masked).sum() == tok.vocab_size - ok.size and np.isfinite(masked[ok]).all()
