"""Beam search on a random-weight Whisper: token for token transformers'
`generate(num_beams=N)` (with and without timestamps), with <|endoftext|> made likely
enough that hypotheses finish at different lengths, some at the token limit."""
from __future__ import annotations

import numpy as np
import pytest
from support.whisper_util import (
    hf_generate,
    ids,
    tiny_hf_config,
    tiny_tokenizer,
    whisper_generation_config,
)

from edgeformer.backends import get_backend
from edgeformer.encoder_config import WhisperConfig
from edgeformer.models.whisper import Whisper, whisper_tensors_from_hf
from edgeformer.models.whisper_decode import WhisperASR

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SP = ids()
EOT, NOTS = SP["<|endoftext|>"], SP["<|notimestamps|>"]
SUPPRESS = [3, 17, SP["<|startoftranscript|>"], SP["<|translate|>"], SP["<|transcribe|>"], SP["<|startoflm|>"],
            SP["<|startofprev|>"], SP["<|nocaptions|>"]]
BEGIN_SUPPRESS = [5, EOT]
MAX_NEW = 12
EOT_SCALE = 0.055      # found by trial: with timestamps decodes end after 1 or 4 tokens


@pytest.fixture(scope="module")
def models():
    from transformers import WhisperForConditionalGeneration
    torch.manual_seed(0)
    hf = WhisperForConditionalGeneration(tiny_hf_config()).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        # point <|endoftext|>'s (tied) embedding along the mean final decoder state
        mel = torch.from_numpy(np.random.default_rng(99).standard_normal((13, 30)).astype(np.float32))[None]
        dec = torch.tensor([[SP["<|startoftranscript|>"], NOTS, 4, 9, 22, 40, 11, 2]])
        d = hf(input_features=mel, decoder_input_ids=dec, output_hidden_states=True).decoder_hidden_states[-1][0]
        d = d.mean(0)
        hf.model.decoder.embed_tokens.weight[EOT] = d / d.norm() * EOT_SCALE
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    ours = Whisper(WhisperConfig.from_hf(hf.config.to_dict()), whisper_tensors_from_hf(state), get_backend("numpy"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # far faster than several threads on a shared machine
    yield hf, WhisperASR(ours, tiny_tokenizer(), SUPPRESS, BEGIN_SUPPRESS, 7)
    torch.set_num_threads(threads)


def test_beam_search_matches_transformers(models):
    hf, asr = models
    gen = whisper_generation_config(SP, SUPPRESS, BEGIN_SUPPRESS, 7)
    lengths = set()
    for seed in range(3):
        mel = np.random.default_rng(seed).standard_normal((asr.config.n_mels, asr.config.n_frames)).astype(np.float32)
        cross = asr.encode_window(mel)
        for beam in (2, 3, 5):
            for ts in (False, True):
                ours = asr.decode_window(cross, beam_size=beam, timestamps=ts, max_new_tokens=MAX_NEW)
                ref = hf_generate(hf, mel, gen, max_new_tokens=MAX_NEW, num_beams=beam, return_timestamps=ts)
                assert ours == [t for t in ref if t != EOT], (seed, beam, ts)
                lengths.add(len(ours))
    assert min(lengths) < MAX_NEW and MAX_NEW in lengths      # finished by <|endoftext|> and by the limit
