"""Whisper's log-mel spectrogram in numpy, equal to transformers' `WhisperFeatureExtractor`
(and OpenAI whisper's `log_mel_spectrogram`).

Pipeline: pad/trim the 16 kHz waveform (30 s for one window) -> STFT (periodic Hann
window of n_fft=400, hop 160, centered with reflect padding) -> power spectrum -> Slaney
mel filter bank (0-8 kHz, Slaney-normalized) -> log10(max(1e-10, .)) -> drop the last
frame -> clamp to (max - 8) -> (x + 4) / 4. Constants are transformers'
`WhisperFeatureExtractor.__init__` defaults (which are OpenAI whisper's audio.py).
"""
from __future__ import annotations

import numpy as np

from edgeformer.errors import InputError

SAMPLE_RATE = 16000      # Hz, every Whisper model
N_FFT = 400              # 25 ms window
HOP_LENGTH = 160         # 10 ms hop -> 100 frames/s
CHUNK_SECONDS = 30       # one encoder window
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE   # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH        # 3000 mel frames per window
LOG_FLOOR = 1e-10        # transformers spectrogram(mel_floor=1e-10)
DYNAMIC_RANGE = 8.0      # log10 units kept below the maximum (80 dB)


def _hz_to_mel(f: float | np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    mel = 3.0 * f / 200.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-30) / min_log_hz) * logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), 200.0 * m / 3.0)


def mel_filter_bank(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                    f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """(1 + n_fft // 2, n_mels) float64 triangular filters on the Slaney mel scale with
    Slaney area normalization (librosa `mel(htk=False, norm="slaney")`)."""
    n_bins = 1 + n_fft // 2
    fft_freqs = np.linspace(0, sample_rate // 2, n_bins)
    mels = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    edges = _mel_to_hz(mels)                                   # (n_mels + 2,)
    diff = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]               # (n_bins, n_mels + 2)
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[None, :]


_FILTERS: dict[tuple[int, int, int], np.ndarray] = {}


def _filters(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    key = (n_mels, n_fft, sample_rate)
    if key not in _FILTERS:
        _FILTERS[key] = mel_filter_bank(n_mels, n_fft, sample_rate)
    return _FILTERS[key]


def pad_or_trim(audio: np.ndarray, n_samples: int = N_SAMPLES) -> np.ndarray:
    """The first `n_samples` of audio, zero-padded at the end if shorter."""
    if audio.shape[-1] >= n_samples:
        return audio[..., :n_samples]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, n_samples - audio.shape[-1])])


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, *, n_samples: int | None = N_SAMPLES,
                        n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
                        sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whisper log-mel features of a mono 16 kHz waveform (1-D float array).

    `n_samples`: pad/trim to this many samples first (default 30 s, as
    WhisperFeatureExtractor's default `padding="max_length", truncation=True`); None
    keeps the whole signal (long-form: the (max - 8) clamp is then over all of it).
    Returns (n_mels, n_samples // hop_length) float32 (n_frames = len // hop when None).
    InputError for an empty or non-1-D waveform or non-finite samples."""
    x = np.asarray(audio)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"audio must be a non-empty 1-D waveform, got shape {x.shape}")
    # WhisperFeatureExtractor casts to float32 before padding; do the same
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError("audio contains NaN or Inf samples")
    if n_samples is not None:
        x = pad_or_trim(x, n_samples)
    half = n_fft // 2
    if x.size <= half:
        x = np.pad(x, (0, half + 1 - x.size))   # reflect padding needs more than n_fft/2 samples
    xp = np.pad(x.astype(np.float64), (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop_length]   # (n_frames + 1, n_fft)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)          # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2                     # (n_frames + 1, n_bins)
    mel = power @ _filters(n_mels, n_fft, sample_rate)                             # (n_frames + 1, n_mels)
    log_spec = np.log10(np.maximum(mel, LOG_FLOOR)).T[:, :-1]                      # (n_mels, n_frames)
    log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
