"""Sampling: `SamplingParams`, logits processors and samplers as small pure functions.

Composed like mlx-lm's `sample_utils.py`: `make_logits_processors(params)` returns
functions `(context_tokens, logits) -> logits` that run in order (logit bias, then
penalties), and `make_sampler(params)` returns `(logits, rng) -> token_id`. `TokenPicker`
bundles them for one generation; plain, batched and speculative decoding all draw
through it, after `check_logits`.

Order of operations for one step (HF transformers / vLLM order, stated because llama.cpp
differs — it truncates *before* temperature):

1. logit bias (OpenAI `logit_bias`: added to the raw logit of each named token);
2. repetition penalty (CTRL / llama.cpp `repeat_penalty`): for each distinct token in
   the penalty window, a positive logit is divided by the penalty, a negative one
   multiplied by it;
3. frequency and presence penalties (OpenAI semantics, also llama.cpp's):
   `logit -= count * frequency_penalty + (count > 0) * presence_penalty`;
4. temperature 0 → greedy argmax of the processed logits; otherwise logits / temperature;
5. truncation on the tempered distribution: top-k, then top-p (smallest set, in order of
   decreasing probability, whose mass reaches top_p), then min-p (keep tokens with
   p >= min_p * p_max);
6. draw from the kept tokens, renormalized, with a `numpy.random.Generator`.

The penalty window is the last `penalty_last_n` tokens of the whole context, prompt
included (llama.cpp `penalty_last_n`, default 64; -1 = whole context, 0 = off).

Log-probabilities reported per token are those of the *raw* model distribution
(`quant.metrics.log_softmax` of the unprocessed logits, like vLLM's default
`raw_logprobs`), so they do not depend on the sampling settings and can be used for
scoring.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.errors import EdgeformerError, InputError
from edgeformer.quant.metrics import log_softmax
from edgeformer.runtime.grammar import Constraint, Grammar

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
Sampler = Callable[[np.ndarray, np.random.Generator], int]

MAX_TOP_LOGPROBS = 20   # OpenAI's limit for `top_logprobs`


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated on construction (InputError).
    The defaults are the one set `load()`, every command and the server use: greedy
    (temperature 0: sub-billion models answer factual prompts far better greedily;
    SmolLM2-135M at llama.cpp's 0.8 drifts into French for "What is the capital of
    France?"), with llama.cpp's truncation (`common_params_sampling`: top-k 40, top-p 0.95,
    min-p 0.05) for when a temperature is given, and no penalties. A server request that
    omits `temperature` or `top_p` gets these, not OpenAI's 1.0.

    temperature: 0 = greedy; top_k: 0 = off; top_p: in (0, 1], 1 = off; min_p: in [0, 1),
    0 = off. logit_bias: token id -> bias added to its logit (a Mapping or pairs; stored as
    sorted pairs so the dataclass stays hashable). stop: strings that end generation (the
    output is cut right before the first one). stop_token_ids: extra token ids that end
    generation like EOS. logprobs: report each token's log-probability; top_logprobs:
    also the n most likely alternatives (0..20). ignore_eos: keep going past EOS/EOT.
    truncate: drop prompt tokens from the left when the prompt does not fit the context,
    instead of raising InputError. grammar: what the output must match
    (`runtime.grammar.Grammar`: JSON, a JSON Schema, a regex, a Lark or GBNF grammar),
    applied as a token mask after the penalties; None = unconstrained.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    truncate: bool = False
    grammar: Grammar | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(f"sampling: {name}={getattr(self, name)!r} {why}")

        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
                and math.isfinite(float(v))

        if not is_int(self.max_tokens) or self.max_tokens <= 0:
            raise bad("max_tokens", "must be a positive int")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty",
                     "frequency_penalty", "presence_penalty"):
            if not is_num(getattr(self, name)):
                raise bad(name, "must be a finite number")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0 (0 = greedy)")
        if not is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "must be an int >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise bad("min_p", "must be in [0, 1)")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "must be > 0 (1 = off)")
        # OpenAI's documented range for both penalties
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise bad(name, "must be in [-2, 2]")
        if not is_int(self.penalty_last_n) or self.penalty_last_n < -1:
            raise bad("penalty_last_n", "must be an int >= -1 (-1 = whole context, 0 = off)")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise bad("seed", "must be a non-negative int or None")
        if not is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise bad("top_logprobs", f"must be an int in [0, {MAX_TOP_LOGPROBS}]")
        object.__setattr__(self, "logit_bias", _normalize_bias(self.logit_bias))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise bad("stop", "must be non-empty strings")
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids)
        if not all(is_int(t) and t >= 0 for t in ids):
            raise bad("stop_token_ids", "must be non-negative ints")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in ids))
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise bad("grammar", "must be a runtime.grammar.Grammar or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_vocab(self, vocab_size: int) -> None:
        """Raise InputError if a logit_bias or stop_token_ids id is outside the vocabulary."""
        for t, _ in self.logit_bias:
            if t >= vocab_size:
                raise InputError(f"sampling: logit_bias token id {t} is outside the vocabulary (size {vocab_size})")
        for t in self.stop_token_ids:
            if t >= vocab_size:
                raise InputError(f"sampling: stop_token_ids id {t} is outside the vocabulary (size {vocab_size})")


def _normalize_bias(bias: Mapping[int, float] | Sequence[tuple[int, float]] | None) -> tuple[tuple[int, float], ...]:
    items = bias.items() if isinstance(bias, Mapping) else (bias or ())
    out: dict[int, float] = {}
    for k, v in items:
        try:
            tid = int(k)   # JSON object keys arrive as strings ("50256": -100)
        except (TypeError, ValueError):
            raise InputError(f"sampling: logit_bias key {k!r} is not a token id") from None
        if tid < 0 or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"sampling: logit_bias {k!r}: {v!r} needs a token id >= 0 and a finite bias")
        out[tid] = float(v)
    return tuple(sorted(out.items()))


# ---- logits processors: (context tokens, logits (vocab,) float32) -> new logits ----------

def make_logit_bias(bias: Sequence[tuple[int, float]]) -> LogitsProcessor:
    ids = np.array([t for t, _ in bias], dtype=np.int64)
    vals = np.array([b for _, b in bias], dtype=np.float32)

    def apply(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[ids] += vals
        return out
    return apply


def _window(tokens: np.ndarray, last_n: int) -> np.ndarray:
    return tokens if last_n == -1 else tokens[-last_n:]


def make_repetition_penalty(penalty: float, last_n: int) -> LogitsProcessor:
    """CTRL / llama.cpp repeat penalty: each distinct token in the window has a positive
    logit divided by `penalty`, a negative one multiplied by it (applied once per token,
    however often it occurs)."""
    def apply(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        ids = np.unique(_window(tokens, last_n))
        if ids.size == 0:
            return logits
        out = logits.copy()
        v = out[ids]
        out[ids] = np.where(v > 0, v / penalty, v * penalty)
        return out
    return apply


def make_count_penalty(frequency: float, presence: float, last_n: int) -> LogitsProcessor:
    """OpenAI frequency/presence penalties over the window:
    `logit[j] -= count[j] * frequency + (count[j] > 0) * presence`."""
    def apply(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
        ids, counts = np.unique(_window(tokens, last_n), return_counts=True)
        if ids.size == 0:
            return logits
        out = logits.copy()
        out[ids] -= (counts * frequency + presence).astype(np.float32)
        return out
    return apply


def make_logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """The processors `params` asks for, in application order (bias, repetition,
    frequency/presence); [] when none is active."""
    procs: list[LogitsProcessor] = []
    if params.logit_bias:
        procs.append(make_logit_bias(params.logit_bias))
    if params.penalty_last_n != 0:
        if params.repetition_penalty != 1.0:
            procs.append(make_repetition_penalty(params.repetition_penalty, params.penalty_last_n))
        if params.frequency_penalty or params.presence_penalty:
            procs.append(make_count_penalty(params.frequency_penalty, params.presence_penalty,
                                            params.penalty_last_n))
    return procs


def apply_processors(procs: Sequence[LogitsProcessor], tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
    for p in procs:
        logits = p(tokens, logits)
    return logits


# ---- truncation and sampling ------------------------------------------------------------

def check_logits(logits: np.ndarray, pos: int) -> None:
    """The one check a model's logits pass before anything samples from them: no NaN and
    at least one finite value (banned tokens are -inf; +inf is a usable certainty).
    EdgeformerError otherwise, naming `pos`, the position of the token they follow."""
    if np.isnan(logits).any() or not np.isfinite(logits).any():
        raise EdgeformerError(f"the model produced NaN (or no finite) logits at position {pos}: "
                              f"broken weights or a numerical overflow")


PRESELECT = 1024   # top-p on a big vocabulary sorts only this many first (if they hold the mass)


def _sort_desc(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """`ids` ordered by decreasing x, ties by lower id."""
    return ids[np.lexsort((ids, -x[ids]))]


def _top_sorted(x: np.ndarray, k: int) -> np.ndarray:
    return _sort_desc(x, np.argpartition(-x, k - 1)[:k])


def candidates(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0,
               min_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The tokens sampling may emit and their renormalized probabilities.

    logits: (vocab,) processed logits; temperature > 0. Returns (ids int64, probs float64)
    with ids in decreasing-probability order (ties by lower id) and probs summing to 1.
    top_k keeps the k most likely; top_p keeps the shortest prefix whose mass reaches
    top_p (always >= 1 token); min_p keeps p >= min_p * p_max. Each filter sees the
    distribution the previous one left, renormalized. NaN logits count as -inf.
    InputError if no logit is finite."""
    x = np.asarray(logits, dtype=np.float64) / temperature
    x = np.where(np.isnan(x), -np.inf, x)
    m = float(np.max(x))
    if not np.isfinite(m):
        raise InputError("sampling: every logit is -inf or NaN (a logit bias banned all tokens?)")
    ids = None
    if top_k and top_k < x.size:
        ids = _top_sorted(x, top_k)
        ids = ids[np.isfinite(x[ids])]
        p = np.exp(log_softmax(x[ids]))   # top-p then sees the renormalized top-k distribution
    else:
        lp = log_softmax(x)
        # avoid sorting a whole 256k vocabulary: every later filter keeps a prefix of the
        # sorted order, so a prefix known to contain the answer is enough
        if min_p > 0.0:
            # p >= min_p * p_max  <=>  x >= max + log(min_p); the slack keeps rounding ties
            ids = _sort_desc(x, np.flatnonzero(x >= m + np.log(min_p) - 1e-9))
        elif top_p < 1.0 and x.size > PRESELECT:
            cand = _top_sorted(x, PRESELECT)
            if np.exp(lp[cand]).sum() >= top_p:
                ids = cand
        if ids is None:
            ids = _sort_desc(x, np.flatnonzero(np.isfinite(x)))
        p = np.exp(lp[ids])               # probabilities under the distribution so far
    if top_p < 1.0:
        # shortest prefix with cumulative mass >= top_p; float slack so mass exactly at
        # top_p does not pull in one more token
        keep = int(np.searchsorted(np.cumsum(p), top_p - 1e-12, side="left")) + 1
        ids, p = ids[:keep], p[:keep]
    if min_p > 0.0:
        keep = int(np.count_nonzero(p >= min_p * p[0]))   # p is sorted: a prefix survives
        ids, p = ids[:keep], p[:keep]
    return ids.astype(np.int64), p / p.sum()


def make_sampler(params: SamplingParams) -> Sampler:
    """`(processed logits (vocab,), rng) -> token id`: argmax when temperature is 0
    (lowest id on ties, like numpy), else a draw from `candidates(...)`."""
    if params.greedy:
        return lambda logits, rng: int(np.argmax(logits))
    t, k, tp, mp = params.temperature, params.top_k, params.top_p, params.min_p

    def sample(logits: np.ndarray, rng: np.random.Generator) -> int:
        ids, p = candidates(logits, t, k, tp, mp)
        if ids.size == 1:
            return int(ids[0])
        # inverse CDF on one uniform draw: reproducible for a given seed
        j = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
        return int(ids[min(j, ids.size - 1)])
    return sample


def make_rng(seed: int | None) -> np.random.Generator:
    """A Generator seeded with `seed` (same seed -> same draws), or from OS entropy."""
    return np.random.default_rng(seed)


def top_logprobs(logprobs: np.ndarray, n: int) -> list[tuple[int, float]]:
    """The n most likely (token id, logprob) pairs, most likely first."""
    if n <= 0:
        return []
    n = min(n, logprobs.size)
    part = np.argpartition(-logprobs, n - 1)[:n]
    order = part[np.lexsort((part, -logprobs[part]))]
    return [(int(i), float(logprobs[i])) for i in order]


class TokenPicker:
    """One generation's sampling rule (processors, temperature, truncation and its rng),
    shared by plain decoding, a drafter and the verifier, so that p and q see the same
    processing at each position."""

    def __init__(self, params: SamplingParams, vocab_size: int, rng: np.random.Generator,
                 tokenizer: Any = None) -> None:
        """`tokenizer` is needed when params.grammar is set (InputError if that grammar
        does not compile for it or admits no output)."""
        self.params = params
        self.greedy = params.greedy
        self.vocab_size = vocab_size
        self.rng = rng
        self.procs = make_logits_processors(params)
        self.sample = make_sampler(params)
        self.constraint: Constraint | None = None
        if params.grammar is not None:
            if tokenizer is None:
                raise InputError("a grammar needs the model's tokenizer")
            self.constraint = Constraint(params.grammar, tokenizer, vocab_size)

    def process(self, context: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Logits after bias and penalties over `context` (prompt + tokens before this one),
        then the grammar's mask (forbidden tokens at -inf)."""
        out = apply_processors(self.procs, context, logits) if self.procs else logits
        return self.constraint.mask(out) if self.constraint is not None else out

    def next_token(self, context: np.ndarray, logits: np.ndarray) -> int:
        """The token plain decoding draws after `context` from the model's raw `logits`
        (checked by `check_logits`: EdgeformerError for NaN); the grammar, if any, moves
        past it."""
        check_logits(logits, context.shape[0] - 1)
        tok = self.sample(self.process(context, logits), self.rng)
        if self.constraint is not None:
            self.constraint.accept(tok)
        return tok

    def probs(self, processed: np.ndarray) -> np.ndarray:
        """(vocab,) float64 distribution plain sampling draws from (temperature, top-k/p, min-p)."""
        p = self.params
        ids, pr = candidates(processed, p.temperature, p.top_k, p.top_p, p.min_p)
        out = np.zeros(self.vocab_size, dtype=np.float64)
        out[ids] = pr
        return out

    def pick(self, context: np.ndarray, logits: np.ndarray) -> tuple[int, np.ndarray | None]:
        """A draft token from raw `logits` after `context`: (argmax, None) when greedy,
        else (token drawn from q, q) with q the processed, truncated distribution."""
        proc = self.process(context, logits)
        if self.greedy:
            return int(np.argmax(proc)), None
        q = self.probs(proc)
        return draw(q, self.rng), q


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw from a (vocab,) distribution; only tokens with p > 0 come out."""
    ids = np.flatnonzero(p > 0)
    j = int(np.searchsorted(np.cumsum(p[ids]), rng.random() * p[ids].sum(), side="right"))
    return int(ids[min(j, ids.size - 1)])
