"""Speculative greedy decoding over the real Decoder: tiny random-weight models built
from HF configs (tests/models/families.py) must produce exactly plain greedy decoding's
tokens for many prompts, with a draft of another architecture (same vocabulary), with
the target itself as the draft (then nearly every draft is accepted), and with prompt
lookup on repetitive prompts. Plain greedy decoding itself is checked against
transformers in test_engine_hf.py."""
from __future__ import annotations


import numpy as np
import pytest

from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams
from edgeformer.runtime.speculative import SpeculativeConfig

from support.fakes import ByteTokenizer

pytest.importorskip("torch")
pytest.importorskip("transformers")
from support.families import BY_NAME, VOCAB, checkpoint_from_hf_dir, hf_model, save_hf  # noqa: E402

N_PROMPTS = 10
N_TOKENS = 24


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    from edgeformer.backends import get_backend
    from edgeformer.models.decoder import Decoder
    import torch
    be = get_backend("numpy")
    out = {}
    # qwen2: qkv bias, one sliding-window layer; gemma2: softcaps, alternating sliding
    # window (prompts + output run past the window of 11); llama3 only as a draft
    for name in ("qwen2", "gemma2", "llama3"):
        hf = hf_model(BY_NAME[name], seed=3)
        out[name] = Decoder(checkpoint_from_hf_dir(save_hf(hf, tmp_path_factory.mktemp(name))), be)
        if name != "llama3":
            # a noisy copy: agrees with the target often but not always, so drafts are
            # accepted and rejected mid-run
            torch.manual_seed(4)
            with torch.no_grad():
                for prm in hf.parameters():
                    prm.add_(0.15 * prm.std() * torch.randn_like(prm))
            out[name + "_noisy"] = Decoder(checkpoint_from_hf_dir(save_hf(hf, tmp_path_factory.mktemp(name))), be)
    return out


def _prompts(repetitive: bool) -> list[list[int]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_PROMPTS):
        if repetitive:
            seg = rng.integers(0, VOCAB, int(rng.integers(3, 9))).tolist()
            out.append((seg * 4)[:int(rng.integers(8, 30))])
        else:
            out.append(rng.integers(0, VOCAB, int(rng.integers(1, 30))).tolist())
    return out


def _run(eng: Engine, prompts, stats: SpeculativeConfig | None = None):
    p = SamplingParams(temperature=0, max_tokens=N_TOKENS, ignore_eos=True)
    toks, drafted, accepted = [], 0, 0
    for ids in prompts:
        toks.append(eng.generate(ids, p).token_ids)
        if stats is not None:
            drafted += stats.last_stats.drafted
            accepted += stats.last_stats.accepted
    return toks, (accepted / drafted if drafted else 0.0)


@pytest.mark.parametrize("target", ["qwen2", "gemma2"])
@pytest.mark.parametrize("drafter", ["other_arch", "noisy_copy", "same_model", "lookup"])
def test_greedy_equals_plain(decoders, target, drafter):
    model = decoders[target]
    prompts = _prompts(repetitive=drafter == "lookup")
    plain, _ = _run(Engine(model, ByteTokenizer(), None, "numpy", n_ctx=128), prompts)
    if drafter == "other_arch":
        cfg = SpeculativeConfig.draft_model(decoders["llama3"], 4)   # a llama drafting for qwen2/gemma2
    elif drafter == "noisy_copy":
        cfg = SpeculativeConfig.draft_model(decoders[target + "_noisy"], 3)
    elif drafter == "same_model":
        cfg = SpeculativeConfig.draft_model(model, 4)   # same weights, its own cache
    else:
        cfg = SpeculativeConfig.prompt_lookup(5, max_ngram=3)
    eng = Engine(model, ByteTokenizer(), None, "numpy", n_ctx=128, speculative=cfg, prefill_chunk=7)
    spec, rate = _run(eng, prompts, cfg)
    assert spec == plain
    if drafter == "same_model":
        # only float rounding (a 5-row vs a 1-row forward) can make the target disagree with itself
        assert rate > 0.95
    elif drafter in ("lookup", "noisy_copy"):
        # random models fall into loops that the lookup predicts; the noisy copy mostly agrees
        assert 0.1 < rate < 1.0
    # the caches hold exactly what the bookkeeping says: a follow-up reuses the prefix
    follow = prompts[-1] + spec[-1] + [5, 6]
    res = eng.generate(follow, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert res.stats.cached_tokens >= len(prompts[-1]) + len(spec[-1]) - 1
    ref = Engine(model, ByteTokenizer(), None, "numpy", n_ctx=128).generate(
        follow, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert res.token_ids == ref.token_ids
