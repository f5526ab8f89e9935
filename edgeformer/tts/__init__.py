"""Speech out: text -> phonemes (espeak-ng, Piper's rules) -> VITS voice -> waveform."""
