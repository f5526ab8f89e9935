"""Decoder logits vs `transformers` on tiny random models of every family: the HF
(safetensors) path, the GGUF F32/F16 paths, and incremental decode vs full recompute."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from support.families import (FAMILIES, N_DECODE, PROMPT_LENS, checkpoint_from_hf_dir,
                      convert_gguf, hf_logits, hf_model, prompt, rel_err, round_matrices_f16,
                      write_gguf_reference)

from edgeformer.backends import get_backend
from edgeformer.formats import load_checkpoint
from edgeformer.models import Decoder

TOL = 1e-4
NAMES = [f.name for f in FAMILIES]


@pytest.fixture(scope="module")
def backend():
    return get_backend("numpy")


@pytest.mark.parametrize("backend_name", ["numpy", "cpu"])
@pytest.mark.parametrize("name", NAMES)
def test_hf_path_matches_transformers(built, backend_name, name):
    backend = get_backend(backend_name)
    b = built(name)
    dec = Decoder(checkpoint_from_hf_dir(b.dir), backend)
    for n in PROMPT_LENS:
        toks = prompt(n)
        err = rel_err(dec.forward(toks, dec.make_cache(64)), hf_logits(b.model, toks))
        assert err <= TOL, f"{name} prompt {n}: rel err {err:.2e}"
        last = dec.forward(toks, dec.make_cache(64), last_only=True)
        assert last.shape == (1, 211)
        assert rel_err(last, hf_logits(b.model, toks)[-1:]) <= TOL


@pytest.mark.parametrize("backend_name", ["numpy", "cpu"])
@pytest.mark.parametrize("name", NAMES)
def test_incremental_decode_matches_full_recompute(built, backend_name, name):
    backend = get_backend(backend_name)
    b = built(name)
    dec = Decoder(checkpoint_from_hf_dir(b.dir), backend)
    for n in PROMPT_LENS:
        toks = prompt(n + N_DECODE)
        full = dec.forward(toks, dec.make_cache(64))
        cache = dec.make_cache(64)
        steps = [dec.forward(toks[:n], cache)]
        steps += [dec.forward(toks[n + j:n + j + 1], cache) for j in range(N_DECODE)]
        inc = np.concatenate(steps)
        assert cache.offset == n + N_DECODE
        assert rel_err(inc, full) <= TOL, f"{name} prompt {n}: {rel_err(inc, full):.2e}"
        assert rel_err(inc, hf_logits(b.model, toks)) <= TOL


def _gguf_cases():
    for name in NAMES:
        for writer in ("convert", "gguf-py"):
            for qtype in ("F32", "F16"):
                yield pytest.param(name, writer, qtype, id=f"{name}-{writer}-{qtype}")


@pytest.mark.parametrize("name,writer,qtype", list(_gguf_cases()))
def test_gguf_path_matches_transformers(built, backend, tmp_path, name, writer, qtype):
    """GGUF written by edgeformer's converter, or by llama.cpp's gguf-py writer from
    `to_gguf()` + `extra_gguf_tensors`, read back by `load_checkpoint`. For F16 the HF
    reference holds the same F16-rounded matrices, so the bound stays the fp32 one."""
    b = built(name)
    path = tmp_path / f"{name}.{qtype}.gguf"
    if writer == "convert":
        convert_gguf(b.dir, path, qtype)
    else:
        write_gguf_reference(b.dir, path, qtype == "F16")
    ck = load_checkpoint(path)
    assert ck.config.arch == checkpoint_from_hf_dir(b.dir).config.arch
    ref_model = b.model
    if qtype == "F16":
        ref_model = hf_model(b.fam)
        round_matrices_f16(ref_model)
    dec = Decoder(ck, backend)
    for n in PROMPT_LENS:
        toks = prompt(n + N_DECODE)
        err = rel_err(dec.forward(toks, dec.make_cache(64)), hf_logits(ref_model, toks))
        assert err <= TOL, f"{name} {writer} {qtype} prompt {n}: rel err {err:.2e}"


# The comparisons above can fail: dropping one family feature breaks parity by far more
# than the tolerance. Each case names the feature and the family that exercises it.
MUTATIONS = [
    ("mistral", "sliding window", dict(sliding_window=None, layer_types=())),
    ("gemma2", "attention softcap", dict(attn_softcap=None)),
    ("gemma2", "final softcap", dict(final_softcap=None)),
    ("gemma2", "query_pre_attn_scalar", dict(attn_scale=None)),
    ("gemma3", "local rope base", dict(rope_local_theta=None)),
    ("llama3", "llama3 rope scaling", dict(rope_scaling=None)),
    ("llama3", "interleaved rope", dict(rope_neox=True)),
    ("gemma", "embedding scale", dict(embed_scale=None)),
]


@pytest.mark.parametrize("name,what,change", MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_parity_check_catches_a_missing_feature(built, backend, name, what, change):
    b = built(name)
    ck = checkpoint_from_hf_dir(b.dir)
    ck.config = dataclasses.replace(ck.config, **change)
    dec = Decoder(ck, backend)
    toks = prompt(33 + N_DECODE)
    assert rel_err(dec.forward(toks, dec.make_cache(64)), hf_logits(b.model, toks)) > 100 * TOL
