"""Helpers for the Whisper tests: random HF models, a tiny Whisper-style tokenizer, and
loading our tensors into an HF model (the reference runs on the very same weights)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

# special tokens in the order of the Whisper vocabulary; timestamps follow <|notimestamps|>
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
N_WORDS = 60
N_TIMESTAMPS = 31


def tiny_tokenizer():
    """A WordLevel tokenizer: N_WORDS words, then the Whisper special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    vocab = {f"w{i}": i for i in range(N_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")   # joins words with spaces
    tok.add_special_tokens(SPECIALS)
    assert tok.token_to_id("<|notimestamps|>") == N_WORDS + len(SPECIALS) - 1
    return tok


def ids() -> dict[str, int]:
    return {s: N_WORDS + i for i, s in enumerate(SPECIALS)}


def tiny_hf_config(**kw):
    from transformers import WhisperConfig
    sp = ids()
    base = dict(vocab_size=N_WORDS + len(SPECIALS) + N_TIMESTAMPS, num_mel_bins=13, encoder_layers=2,
                decoder_layers=2, encoder_attention_heads=6, decoder_attention_heads=6, d_model=42,
                encoder_ffn_dim=37, decoder_ffn_dim=41, max_source_positions=15, max_target_positions=40,
                pad_token_id=sp["<|endoftext|>"], bos_token_id=sp["<|endoftext|>"],
                eos_token_id=sp["<|endoftext|>"], decoder_start_token_id=sp["<|startoftranscript|>"])
    base.update(kw)
    return WhisperConfig(**base)


def whisper_generation_config(vocab_special: dict[str, int], suppress: list[int], begin_suppress: list[int],
                              max_initial_timestamp_index: int = 50):
    """An HF GenerationConfig with the Whisper fields an English-only model's has."""
    from transformers import GenerationConfig
    eot = vocab_special["<|endoftext|>"]
    return GenerationConfig(decoder_start_token_id=vocab_special["<|startoftranscript|>"], eos_token_id=eot,
                            pad_token_id=eot, bos_token_id=eot,
                            no_timestamps_token_id=vocab_special["<|notimestamps|>"], is_multilingual=False,
                            suppress_tokens=list(suppress), begin_suppress_tokens=list(begin_suppress),
                            max_initial_timestamp_index=max_initial_timestamp_index,
                            prev_sot_token_id=vocab_special["<|startofprev|>"])


def hf_generate(model, mel: np.ndarray, gen_config, **kw) -> list[int]:
    """HF generate on one window -> the generated tokens (no prompt); a fresh copy of the
    config per call (generate edits it). With return_timestamps, HF trims its returned
    sequence to complete segments; the raw decoded sequence is in each segment's
    `result`, so that is what is returned."""
    import torch
    feats = torch.from_numpy(np.ascontiguousarray(mel))[None]
    with torch.no_grad():
        if not kw.get("return_timestamps"):
            return model.generate(feats, generation_config=copy.deepcopy(gen_config), **kw)[0].tolist()
        out = model.generate(feats, generation_config=copy.deepcopy(gen_config), return_dict_in_generate=True, **kw)
    segs = out["segments"][0]
    assert segs, "transformers returned no segment: its raw sequence is not available"
    raw = segs[0]["result"]["sequences"].tolist()
    assert raw[0] == gen_config.decoder_start_token_id
    return raw[1:]


def hf_model_from_ours(hf_config, tensors: dict[str, np.ndarray]):
    """A transformers WhisperForConditionalGeneration holding our tensors (float32)."""
    import torch
    from transformers import WhisperForConditionalGeneration
    from edgeformer.models.whisper import whisper_name
    model = WhisperForConditionalGeneration(hf_config).eval()
    state = {}
    for k, v in model.state_dict().items():
        name = whisper_name(k)
        if name == "dec.output.weight" and name not in tensors:
            name = "dec.token_embd.weight"    # tied projection
        state[k] = torch.from_numpy(np.asarray(tensors[name], dtype=np.float32).reshape(v.shape))
    model.load_state_dict(state, strict=True)
    return model


def save_tiny_hf_dir(model, d: Path, gen_config) -> Path:
    """An HF Whisper directory: config, safetensors, tokenizer.json, generation_config."""
    model.generation_config = gen_config
    model.save_pretrained(d)
    tiny_tokenizer().save(str(d / "tokenizer.json"))
    json.loads((d / "generation_config.json").read_text())   # written by save_pretrained
    return d
