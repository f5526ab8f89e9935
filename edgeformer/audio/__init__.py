"""Audio input for speech models: file reading/resampling (`io`) and Whisper's log-mel
features (`features`)."""
from edgeformer.audio.features import SAMPLE_RATE, log_mel_spectrogram, mel_filter_bank
from edgeformer.audio.io import load_audio, to_mono_16k

__all__ = ["SAMPLE_RATE", "log_mel_spectrogram", "mel_filter_bank", "load_audio", "to_mono_16k"]
