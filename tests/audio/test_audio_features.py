"""Whisper log-mel features vs transformers' WhisperFeatureExtractor and mel_filter_bank."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.audio.features import N_FRAMES, log_mel_spectrogram, mel_filter_bank
from edgeformer.errors import InputError

transformers = pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank  # noqa: E402


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("n_mels", [80, 128, 13])
def test_mel_filter_bank_matches_transformers(n_mels):
    ref = hf_mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                             max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    ours = mel_filter_bank(n_mels)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


# odd lengths: 1 sample, under one FFT window, a few seconds, exactly 30 s, over 30 s (truncated)
@pytest.mark.parametrize("n", [1, 397, 3 * 16000 + 7, 30 * 16000, 61 * 16000 + 33])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n, n_mels):
    rng = np.random.default_rng(n + n_mels)
    audio = (rng.standard_normal(n) * rng.uniform(0.01, 0.5)).astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    ref = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = log_mel_spectrogram(audio, n_mels)
    assert ours.shape == ref.shape == (n_mels, N_FRAMES)
    assert ours.dtype == np.float32
    assert _rel(ours, ref) <= 1e-4


def test_log_mel_long_form_matches_unpadded_extractor():
    """n_samples=None keeps all of a > 30 s signal, as `truncation=False, padding="longest"`."""
    rng = np.random.default_rng(7)
    audio = (np.sin(np.arange(35 * 16000 + 123) * 0.05) * 0.3 + rng.standard_normal(35 * 16000 + 123) * 0.01)
    audio = audio.astype(np.float32)
    fe = WhisperFeatureExtractor()
    ref = fe(audio, sampling_rate=16000, return_tensors="np", truncation=False,
             padding="longest").input_features[0]
    ours = log_mel_spectrogram(audio, n_samples=None)
    assert ours.shape == ref.shape == (80, audio.size // 160)
    assert _rel(ours, ref) <= 1e-4


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 100), np.float32),
                                 np.array([0.0, np.nan, 0.1], np.float32)])
def test_log_mel_rejects_bad_waveforms(bad):
    with pytest.raises(InputError):
        log_mel_spectrogram(bad)
