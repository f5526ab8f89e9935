"""Reading audio files for speech models: any format libsndfile reads (WAV incl. 8-bit
and float, FLAC, OGG/Vorbis...) at any sample rate, mixed to mono and resampled to
16 kHz with soxr. Bad input raises InputError naming the file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeformer.audio.features import SAMPLE_RATE
from edgeformer.errors import InputError
from edgeformer.extras import require


def to_mono_16k(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n,) or (n, channels) samples at `sample_rate` -> (m,) float32 mono at
    `target_rate` (channels averaged; soxr "HQ" resampling). InputError for an empty
    signal, a bad rate or non-finite samples."""
    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.astype(np.float32, copy=False).mean(axis=1)      # (n,) average of channels
    if x.ndim != 1:
        raise InputError(f"audio must be (samples,) or (samples, channels), got shape {np.shape(samples)}")
    if x.size == 0:
        raise InputError("audio has no samples")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample rate must be a positive integer, got {sample_rate!r}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError("audio contains NaN or Inf samples")
    if sample_rate != target_rate:
        soxr = require("soxr", "audio", "resampling audio")
        x = soxr.resample(x, int(sample_rate), target_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x)


def load_audio(path: str | os.PathLike, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at `target_rate` from an audio file.

    InputError if the file does not exist, is empty, is not audio libsndfile can read,
    or holds no samples. Silence is valid audio and is returned as is."""
    sf = require("soundfile", "audio", "reading audio files")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such audio file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)   # (n, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"{p}: not a readable audio file (WAV, FLAC, OGG...): {e}") from e
    if data.shape[0] == 0:
        raise InputError(f"{p}: the audio file holds no samples")
    try:
        return to_mono_16k(data, int(rate), target_rate)
    except InputError as e:
        raise InputError(f"{p}: {e}") from e
