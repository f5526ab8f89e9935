"""The Engine over the real Decoder on a tiny random HF Llama, against transformers'
`generate` (greedy, and sampled logprobs): prefill chunks, the KV cache across decode
steps and cache reuse between calls all have to agree with HF's own loop."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams

from support.fakes import ByteTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 300   # >= the byte tokenizer's 260 ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rope_theta=10000.0, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # larger weights than the default init, so greedy paths are not flat
        for name, p in hf.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn_like(p) / (p.shape[-1] ** 0.5 if p.ndim == 2 and "embed" not in name else 1))
    path = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(path)
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    model = Decoder(load_checkpoint(path), get_backend("numpy"))
    return hf, model


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("chunk", [1, 4, 512])
def test_greedy_matches_transformers(tiny, chunk):
    hf, model = tiny
    eng = Engine(model, ByteTokenizer(), None, "numpy", n_ctx=128, prefill_chunk=chunk)
    ids = [5, 17, 200, 33, 250, 8, 99, 140, 3, 77]
    res = eng.generate(ids, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    assert res.token_ids == _hf_greedy(hf, ids, 20)
    # a follow-up that extends the cached sequence must match HF from scratch too
    follow = ids + res.token_ids + [11, 12]
    res2 = eng.generate(follow, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    assert res2.stats.cached_tokens == len(ids) + len(res.token_ids) - 1
    assert res2.token_ids == _hf_greedy(hf, follow, 10)


def test_sampled_logprobs_match_transformers(tiny):
    hf, model = tiny
    eng = Engine(model, ByteTokenizer(), None, "numpy", n_ctx=128)
    ids = [1, 2, 3, 250, 251]
    res = eng.generate(ids, SamplingParams(temperature=1.0, seed=4, max_tokens=12, logprobs=True, ignore_eos=True))
    with torch.no_grad():
        logits = hf(torch.tensor([ids + res.token_ids])).logits[0].double()
    ref = torch.log_softmax(logits, -1).numpy()[len(ids) - 1:-1]
    got = np.array([lp.logprob for lp in res.logprobs])
    want = ref[np.arange(len(res.token_ids)), res.token_ids]
    # float32 model vs float32 model: logprobs agree to float32 accumulation error
    np.testing.assert_allclose(got, want, atol=1e-4)
