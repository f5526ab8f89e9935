"""Speculative decoding for the Engine: a drafter proposes k tokens, the target model
checks them all in one forward pass, and the longest acceptable prefix is kept.

Use: `Engine(model, tokenizer, ..., speculative=SpeculativeConfig(drafter, num_draft=k))`
with a drafter from `runtime/drafters.py` (`PromptLookupDrafter()`, or
`ModelDrafter(small_model)`), or `edgeformer.load(..., lookup=k)` / `load(..., draft=MODEL,
draft_n=k)`. Everything else (generate / stream / chat, stops, logprobs, cache reuse
between calls) is unchanged. One config (its drafter holds a KV cache) serves one
Engine; `BatchEngine(..., speculative=config)` (the server) runs the same rounds per
decoding sequence inside its batched steps, with a drafter forked per sequence.

Each round (the target cache holds every token but the last emitted one, x):
1. the drafter proposes d_1..d_k (k <= num_draft, fewer near the token budget);
2. the target runs [x, d_1..d_k] in ONE forward: logits for k + 1 positions, p_j at
   position j being the distribution for the token after d_j (p_0: after x);
3. verification, position by position, with the generation's processors applied to
   both p_j and q_j over the same context (prompt + emitted + d_1..d_j):
   - greedy: accept d_{j+1} iff it is argmax p_j; at the first mismatch emit argmax p_j;
   - sampled (Leviathan et al. 2023, Chen et al. 2023): accept d ~ q with probability
     min(1, p(d)/q(d)); on rejection draw from norm(max(0, p - q)), which is exactly p
     overall. A deterministic draft is q = one-hot: accept with probability p(d), else
     draw from p with d removed, renormalized;
   - all k accepted: one bonus token from p_k, drawn like plain decoding;
4. the target session is truncated to the accepted tokens (the new last token is not in
   it); the drafter resynchronizes from the sequence on its next proposal.
Tokens are then emitted one by one through the same stop logic as plain decoding, so
EOS, stop strings and max_tokens inside an accepted run cut exactly there.

Greedy output equals plain greedy decoding token for token, up to float rounding: a
(k+1)-row forward may round differently from a 1-row one, which can flip a near tie.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgeformer.errors import InputError
from edgeformer.runtime.drafters import Drafter, ModelDrafter, PromptLookupDrafter
from edgeformer.runtime.events import TokenEmitter, TokenEvent
from edgeformer.runtime.sampler import TokenPicker, check_logits, draw
from edgeformer.runtime.session import Session

__all__ = ["SpeculativeConfig", "SpeculativeStats", "ModelDrafter", "PromptLookupDrafter",
           "accept_or_resample", "speculative_steps", "verify"]


@dataclass
class SpeculativeStats:
    """Counters of one generation: rounds = target forward passes in decode, drafted /
    accepted = draft tokens proposed / kept, emitted = tokens produced by rounds."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.emitted / self.rounds if self.rounds else 0.0


@dataclass
class SpeculativeConfig:
    """drafter: a `drafters.Drafter`; num_draft: tokens proposed per round (>= 1).
    `last_stats` holds the SpeculativeStats of the latest generation."""

    drafter: Drafter
    num_draft: int = 4
    last_stats: SpeculativeStats = field(default_factory=SpeculativeStats)

    def __post_init__(self) -> None:
        if not isinstance(self.num_draft, int) or isinstance(self.num_draft, bool) or self.num_draft < 1:
            raise InputError(f"speculative: num_draft must be an int >= 1, got {self.num_draft!r}")

    @classmethod
    def prompt_lookup(cls, num_draft: int = 4, max_ngram: int = 3, min_ngram: int = 1) -> SpeculativeConfig:
        """n-gram drafting from prompt + output (no draft model)."""
        return cls(PromptLookupDrafter(max_ngram, min_ngram), num_draft)

    @classmethod
    def draft_model(cls, model: object, num_draft: int = 4) -> SpeculativeConfig:
        """A smaller draft model with the target's vocabulary."""
        return cls(ModelDrafter(model), num_draft)

    def bind(self, vocab_size: int, n_ctx: int) -> None:
        """Check the drafter against the target (InputError) and allocate its state."""
        self.drafter.bind(vocab_size, n_ctx)

    def fork_drafter(self) -> Drafter:
        """A drafter for one more sequence decoded beside others (`drafter.fork()`: its
        own state over the same model; the drafter itself when it has no `fork`, which is
        still correct, since a drafter resynchronizes from the sequence it is given)."""
        fork = getattr(self.drafter, "fork", None)
        return fork() if fork is not None else self.drafter


# ---- verifying tokens ------------------------------------------------------------------------

def accept_or_resample(p: np.ndarray, token: int, q: np.ndarray | None,
                       rng: np.random.Generator) -> tuple[bool, int]:
    """The speculative-sampling rule for one draft token drawn from q (None = one-hot).
    p, q: (vocab,) target and draft distributions. Returns (True, token) with probability
    min(1, p(token)/q(token)), else (False, t) with t ~ norm(max(0, p - q)), so that the
    token returned is distributed as p."""
    qx = 1.0 if q is None else float(q[token])
    px = float(p[token])
    if qx > 0 and rng.random() * qx < px:      # u < p/q without dividing
        return True, token
    if q is None:
        resid = p.copy()
        resid[token] = 0.0
    else:
        resid = np.maximum(p - q, 0.0)
    if resid.sum() <= 0:
        # only when p <= q everywhere, i.e. p == q up to rounding, where rejection has
        # probability ~0: p itself is then the right distribution
        resid = p
    return False, draw(resid, rng)


def verify(picker: TokenPicker, ctx: np.ndarray, n: int, drafts: Sequence[int],
           q: Sequence[np.ndarray] | None, logits: np.ndarray) -> list[int]:
    """Tokens a round emits: the accepted drafts plus one corrected or bonus token.
    ctx[:n] is the sequence before the round, ctx[n:n+len(drafts)] the drafts; logits
    (len(drafts) + 1, vocab) from the target. EdgeformerError for NaN logits."""
    out: list[int] = []
    for j in range(len(drafts) + 1):
        if j == len(drafts):
            out.append(picker.next_token(ctx[:n + j], logits[j]))    # bonus: exactly plain decoding
            break
        check_logits(logits[j], n + j - 1)
        proc = picker.process(ctx[:n + j], logits[j])
        d = int(drafts[j])
        if picker.greedy:
            best = int(np.argmax(proc))
            ok, tok = best == d, best
        else:
            ok, tok = accept_or_resample(picker.probs(proc), d, None if q is None else q[j], picker.rng)
        out.append(tok)
        if not ok:
            break
    return out


# ---- the generation loop ----------------------------------------------------------------------

def speculative_steps(spec: SpeculativeConfig, session: Session, ids: list[int], em: TokenEmitter,
                      picker: TokenPicker) -> Iterator[TokenEvent]:
    """The token stream of prompt `ids` on the target's `session` (same events, stats and
    stop semantics as plain decoding through `em`), with tokens produced by
    draft-and-verify rounds of `spec`. Used by the Engine when it has a `speculative`
    config."""
    spec.bind(picker.vocab_size, session.n_ctx)
    sstats = spec.last_stats = SpeculativeStats()
    ctx = em.ctx   # prompt + emitted (+ drafts in flight)
    _, cached = session.prefill(ids, run_last=False)
    em.prefilled(cached)
    while True:
        # each round emits <= k + 1 tokens; the session then holds <= len(ids) + budget - 1
        n, i = em.n, em.i
        k = min(spec.num_draft, em.budget - i - 1)
        draft = spec.drafter.propose(ctx[:n], k, picker) if k > 0 else None
        drafts = [] if draft is None else [int(t) for t in draft.tokens[:k]]
        ctx[n:n + len(drafts)] = drafts
        base = len(session)
        logits = session.forward([int(ctx[n - 1])] + drafts, last_only=False)
        out = verify(picker, ctx, n, drafts, None if draft is None else draft.q, logits)
        session.truncate(base + len(out))        # keep x and the accepted drafts
        sstats.rounds += 1
        sstats.drafted += len(drafts)
        sstats.accepted += len(out) - 1
        sstats.emitted += len(out)
        if i == 0:
            em.prefilled(cached)   # the first round also ran the last prompt token

        for j, tok in enumerate(out):
            yield em.emit(tok, logits[j])
            if em.done:
                return
