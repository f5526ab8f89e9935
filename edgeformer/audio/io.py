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


# Most mono frames decoded from one file, and most made by resampling: 2^27, 512 MiB of
# float32, 46 min at 48 kHz or 2.3 h at 16 kHz. A file's header frame count is not
# trusted: it is decoded in blocks and refused once past this.
MAX_FRAMES = 1 << 27
_BLOCK_SAMPLES = 1 << 20     # frames x channels decoded at once


def to_mono_16k(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n,) or (n, channels) samples at `sample_rate` -> (m,) float32 mono at
    `target_rate` (channels averaged; soxr "HQ" resampling). InputError for an empty
    signal, a bad rate, non-finite samples, or a result over MAX_FRAMES."""
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
        n_out = -(-x.size * target_rate // int(sample_rate))
        if n_out > MAX_FRAMES:     # e.g. a header saying 1 Hz: every sample becomes 16000
            raise InputError(f"{x.size} samples at {sample_rate} Hz resample to {n_out} at {target_rate} Hz, "
                             f"over the limit of {MAX_FRAMES}")
        soxr = require("soxr", "audio", "resampling audio")
        x = soxr.resample(x, int(sample_rate), target_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x)


def load_audio(path: str | os.PathLike, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at `target_rate` from an audio file.

    InputError if the file does not exist, is empty, is not audio libsndfile can read,
    holds no samples or more than MAX_FRAMES. Silence is valid audio and is returned as is."""
    sf = require("soundfile", "audio", "reading audio files")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such audio file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty")
    parts, frames = [], 0
    try:
        with sf.SoundFile(str(p)) as f:
            rate, channels = f.samplerate, f.channels
            for block in f.blocks(blocksize=max(1, _BLOCK_SAMPLES // max(channels, 1)), dtype="float32",
                                  always_2d=True):       # (n, channels)
                frames += block.shape[0]
                if frames > MAX_FRAMES:
                    raise InputError(f"{p}: the audio is longer than {MAX_FRAMES} frames "
                                     f"({MAX_FRAMES / rate / 60:.0f} min at {rate} Hz); split it")
                parts.append(block.mean(axis=1) if channels > 1 else block[:, 0].copy())
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"{p}: not a readable audio file (WAV, FLAC, OGG...): {e}") from e
    if frames == 0:
        raise InputError(f"{p}: the audio file holds no samples")
    try:
        return to_mono_16k(np.concatenate(parts), int(rate), target_rate)
    except InputError as e:
        raise InputError(f"{p}: {e}") from e
