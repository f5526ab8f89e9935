"""Reading audio files: formats, rates, channels, 8-bit, and bad files."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from edgeformer.audio.io import load_audio, to_mono_16k
from edgeformer.errors import InputError

sf = pytest.importorskip("soundfile")


def _tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spec)])


def test_16k_int16_wav_is_read_exactly(tmp_path):
    x = (np.random.default_rng(0).integers(-32768, 32767, 16001)).astype(np.int16)
    p = tmp_path / "a.wav"
    sf.write(p, x, 16000, subtype="PCM_16")
    y = load_audio(p)
    np.testing.assert_array_equal(y, x.astype(np.float32) / 32768.0)


@pytest.mark.parametrize("rate,fmt", [(22050, "WAV"), (44100, "FLAC"), (8000, "WAV"), (48000, "OGG")])
def test_any_rate_and_format_is_resampled_to_16k(tmp_path, rate, fmt):
    x = _tone(rate, 1.5)
    p = tmp_path / f"a.{fmt.lower()}"
    sf.write(p, x, rate, format=fmt)
    y = load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - round(x.size * 16000 / rate)) <= 1
    assert abs(_peak_hz(y) - 440.0) < 2.0                 # pitch kept: the rate was converted
    assert abs(np.abs(y[2000:-2000]).max() - 0.5) < 0.05   # level kept


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = _tone(16000, 1.0, 440.0, 0.4), _tone(16000, 1.0, 1000.0, 0.2)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(p), (left + right) / 2, atol=1e-7)


def test_8bit_unsigned_wav_is_converted(tmp_path):
    x = _tone(11025, 1.0, 440.0, 0.6)
    p8, p16 = tmp_path / "a8.wav", tmp_path / "a16.wav"
    sf.write(p8, x, 11025, subtype="PCM_U8")
    sf.write(p16, x, 11025, subtype="PCM_16")
    assert sf.info(str(p8)).subtype == "PCM_U8"
    y8, y16 = load_audio(p8), load_audio(p16)
    assert y8.shape == y16.shape
    assert np.abs(y8 - y16).max() < 2.5 / 128    # 8-bit quantization step is 1/128, resampling spreads it


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_sox_made_8bit_stereo_44k_wav(tmp_path):
    src = tmp_path / "src.wav"
    sf.write(src, _tone(16000, 1.0, 300.0, 0.5), 16000, subtype="PCM_16")
    out = tmp_path / "u8st.wav"
    subprocess.run(["sox", str(src), "-r", "44100", "-c", "2", "-b", "8", "-e", "unsigned-integer", str(out)],
                   check=True)
    y = load_audio(out)
    assert abs(y.size - 16000) <= 2 and abs(_peak_hz(y) - 300.0) < 2.0


def test_to_mono_16k_validates():
    with pytest.raises(InputError):
        to_mono_16k(np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError):
        to_mono_16k(np.zeros((2, 3, 4), np.float32), 16000)
    with pytest.raises(InputError):
        to_mono_16k(np.ones(10, np.float32), 0)
    with pytest.raises(InputError):
        to_mono_16k(np.array([np.inf, 0.0], np.float32), 16000)


def test_bad_files_raise_input_error(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all\n" * 20)
    no_frames = tmp_path / "zero.wav"
    sf.write(no_frames, np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match="empty"):
        load_audio(empty)
    with pytest.raises(InputError, match="not a readable audio file"):
        load_audio(text)
    with pytest.raises(InputError, match="no samples"):
        load_audio(no_frames)
    with pytest.raises(InputError, match="no such"):
        load_audio(tmp_path / "missing.wav")
