"""Whisper on random-weight models: parity with transformers' WhisperForConditionalGeneration
(encoder states, decoder logits with the KV cache, logit rules, greedy decoding with and
without timestamps), loading, the CLI, and bad model files."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from support.whisper_util import (hf_generate, ids, save_tiny_hf_dir, tiny_hf_config,  # noqa: E402
                          tiny_tokenizer, whisper_generation_config)

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.encoder_config import WhisperConfig  # noqa: E402
from edgeformer.errors import ConfigError, FormatError, InputError  # noqa: E402
from edgeformer.models.whisper import Whisper, whisper_name, whisper_tensors_from_hf  # noqa: E402
from edgeformer.models.whisper_decode import WhisperASR, load_whisper  # noqa: E402

SP = ids()
EOT, NOTS = SP["<|endoftext|>"], SP["<|notimestamps|>"]
TB = NOTS + 1
SUPPRESS = [3, 17, SP["<|startoftranscript|>"], SP["<|translate|>"], SP["<|transcribe|>"], SP["<|startoflm|>"],
            SP["<|startofprev|>"], SP["<|nocaptions|>"]]
BEGIN_SUPPRESS = [5, EOT]
MAX_INIT = 7


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def hf():
    from transformers import WhisperForConditionalGeneration
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_hf_config()).eval()
    # random init leaves LayerNorms at 1/0 and biases at 0: perturb them so they are tested
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def ours(hf):
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return Whisper(WhisperConfig.from_hf(hf.config.to_dict()), whisper_tensors_from_hf(state), get_backend("numpy"))


@pytest.fixture(scope="module")
def asr(ours):
    return WhisperASR(ours, tiny_tokenizer(), SUPPRESS, BEGIN_SUPPRESS, MAX_INIT)


@pytest.fixture(scope="module")
def gen_config():
    return whisper_generation_config(SP, SUPPRESS, BEGIN_SUPPRESS, MAX_INIT)


def _mel(seed: int, cfg: WhisperConfig) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((cfg.n_mels, cfg.n_frames)).astype(np.float32)


def test_encoder_matches_transformers(hf, ours):
    mel = _mel(0, ours.config)
    with torch.no_grad():
        ref = hf.model.encoder(torch.from_numpy(mel)[None]).last_hidden_state[0].numpy()
    out = ours.encode(mel)
    assert out.shape == ref.shape == (15, 42)
    assert _rel(out, ref) <= 1e-4


def test_decoder_logits_match_transformers_prefill_and_cached_steps(hf, ours):
    mel = _mel(1, ours.config)
    tokens = [SP["<|startoftranscript|>"], NOTS, 4, 59, 0, 33, TB + 3, 11, EOT]
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(mel)[None],
                 decoder_input_ids=torch.tensor([tokens])).logits[0].numpy()
    cross = ours.cross_kv(ours.encode(mel))
    cache = ours.new_cache()
    got = [ours.decode(tokens[:4], cache, cross, all_logits=True)]          # prefill 4
    for t in tokens[4:]:                                                    # then one at a time
        got.append(ours.decode([t], cache, cross))
    out = np.concatenate(got)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-4


def test_decoder_rejects_context_overflow_and_bad_ids(ours):
    cross = ours.cross_kv(ours.encode(_mel(2, ours.config)))
    with pytest.raises(InputError, match="context"):
        ours.decode(list(range(41)), ours.new_cache(), cross)
    with pytest.raises(InputError, match="out of range"):
        ours.decode([ours.config.vocab_size], ours.new_cache(), cross)
    with pytest.raises(InputError):
        ours.encode(np.zeros((13, 29), np.float32))


def _hf_processors(begin_index: int, gen_config):
    from transformers.generation.logits_process import (SuppressTokensAtBeginLogitsProcessor,
                                                        SuppressTokensLogitsProcessor,
                                                        WhisperTimeStampLogitsProcessor)
    # transformers' order in WhisperGenerationMixin._retrieve_logit_processors
    return [SuppressTokensAtBeginLogitsProcessor(BEGIN_SUPPRESS, begin_index),
            SuppressTokensLogitsProcessor(SUPPRESS),
            WhisperTimeStampLogitsProcessor(gen_config, begin_index=begin_index)]


@pytest.mark.parametrize("generated", [[], [TB], [TB + 2], [TB, 7], [TB, 7, 9], [TB, 7, TB + 4],
                                       [TB, 7, TB + 4, TB + 4], [TB + 1, 7, TB + 5, TB + 6, 8],
                                       [7, 8], [TB, TB + 3, 7, TB + 9]])
def test_logit_rules_match_transformers_processors(asr, gen_config, generated):
    rng = np.random.default_rng(len(generated))
    prompt = asr.prompt(timestamps=True)
    for trial in range(4):
        logits = rng.standard_normal(asr.config.vocab_size).astype(np.float32) * 3
        if trial % 2:
            logits[TB:] += 4.0      # make the "timestamps beat every text token" rule fire
        scores = torch.from_numpy(logits.copy())[None]
        ids_t = torch.tensor([prompt + generated])
        for proc in _hf_processors(len(prompt), gen_config):
            scores = proc(ids_t, scores)
        ref = scores[0].numpy()
        out = asr.process_logits(logits, generated, timestamps=True)
        np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
        np.testing.assert_allclose(out[np.isfinite(out)], ref[np.isfinite(ref)], rtol=0, atol=0)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_greedy_decoding_matches_transformers_generate(hf, asr, gen_config, seed):
    mel = _mel(seed, asr.config) * 3
    cross = asr.encode_window(mel)
    ours = asr.decode_window(cross, timestamps=False, max_new_tokens=12)
    ref = hf_generate(hf, mel, gen_config, max_new_tokens=12)
    assert ours == [t for t in ref if t != EOT]
    ours_ts = asr.decode_window(cross, timestamps=True, max_new_tokens=12)
    ref_ts = hf_generate(hf, mel, gen_config, max_new_tokens=12, return_timestamps=True)
    assert ours_ts == [t for t in ref_ts if t != EOT]
    assert ours_ts and ours_ts[0] >= TB    # timestamp mode starts with a timestamp


def test_beam_search_runs_and_validates(asr):
    cross = asr.encode_window(_mel(6, asr.config))
    for beam in (2, 5):
        out = asr.decode_window(cross, beam_size=beam, max_new_tokens=8)
        assert isinstance(out, list) and len(out) <= 8 and all(0 <= t < EOT for t in out if t < TB)
    with pytest.raises(InputError, match="beam"):
        asr.decode_window(cross, beam_size=0)


def test_hf_names_map_and_unknown_names_fail(hf):
    names = [whisper_name(k) for k in hf.state_dict()]
    assert len(set(names)) == len(names)
    assert "dec.blk.1.cross_attn_k.weight" in names and "enc.blk.0.attn_k.weight" in names
    with pytest.raises(FormatError):
        whisper_name("model.encoder.layers.0.mystery.weight")


def test_config_validation():
    with pytest.raises(ConfigError):
        WhisperConfig.from_hf({"model_type": "bert"})
    with pytest.raises(ConfigError):
        WhisperConfig.from_hf(tiny_hf_config(d_model=40).to_dict())   # 40 is not a multiple of 6 heads


def test_hf_directory_loads_and_cli_transcribes(hf, gen_config, tmp_path, capsys):
    import soundfile as sf
    from edgeformer.cli.__main__ import main
    d = save_tiny_hf_dir(hf, tmp_path / "tiny-whisper", gen_config)
    asr = load_whisper(d)
    assert list(asr.suppress) == sorted(SUPPRESS) and list(asr.begin_suppress) == sorted(BEGIN_SUPPRESS)
    wav = tmp_path / "noise.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(2000) * 0.3).astype(np.float32), 8000)   # 0.25 s: one 0.3 s window
    assert main(["transcribe", str(wav), "--model", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the reference: HF greedy on the features of the same file (20 = n_text_ctx // 2 new tokens)
    from edgeformer.audio import load_audio, log_mel_spectrogram
    from edgeformer.models.whisper_decode import transcribe
    mel = log_mel_spectrogram(load_audio(wav), 13, n_samples=30 * 160)
    ref = [t for t in hf_generate(hf, mel, gen_config, max_new_tokens=20) if t != EOT]
    tr = transcribe(wav, asr)
    assert ref and [t for s in tr.segments for t in s.tokens] == ref
    assert out["text"] == tr.text == tiny_tokenizer().decode([t for t in ref if t < EOT]).strip()
    assert main(["transcribe", str(wav), "--model", str(d), "--beam", "2", "--timestamps"]) == 0
    with pytest.raises(SystemExit):
        main(["transcribe", str(wav), "--model", str(d), "--beam", "0"])
    capsys.readouterr()
    for name, content in (("empty.wav", b""), ("text.wav", b"hello, not audio\n" * 30)):
        (tmp_path / name).write_bytes(content)
        assert main(["transcribe", str(tmp_path / name), "--model", str(d)]) == 1
        assert name in capsys.readouterr().err


def test_unknown_model_files_fail_clearly(tmp_path, capsys):
    from edgeformer.cli.__main__ import main
    text = tmp_path / "model.bin"
    text.write_text("definitely not a model\n")
    with pytest.raises(FormatError, match="CTranslate2"):
        load_whisper(text)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(FormatError):
        load_whisper(gguf)
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(FormatError, match="not a Whisper model"):
        load_whisper(empty_dir)
    with pytest.raises(InputError):
        load_whisper(tmp_path / "missing")
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    assert main(["transcribe", str(wav), "--model", str(text)]) == 1
    assert "CTranslate2" in capsys.readouterr().err


def test_silence_gives_empty_transcript_without_running_the_model(asr):
    tr = asr.transcribe(np.zeros(16000, np.float32))
    assert tr.text == "" and tr.segments == []
    with pytest.raises(InputError):
        asr.transcribe(np.zeros(0, np.float32))
