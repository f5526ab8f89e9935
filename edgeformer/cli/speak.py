"""`edgeformer speak TEXT -o out.wav [--voice PATH] [--speed] [--noise-scale] [--noise-w] [--seed]`:
text to a 16-bit mono WAV with a Piper (VITS) voice; default: the shipped en_US-joe-medium.

Like Piper, the waveform is scaled so its peak reaches full scale before it is written."""
from __future__ import annotations

import argparse
import sys
import time
import wave
from pathlib import Path

import numpy as np

from edgeformer.cli.backend_choice import add_backend_args, make_backend
from edgeformer.errors import InputError

_MIN_PEAK = 0.01    # piper's audio_float_to_int16: never amplify by more than 1 / 0.01


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("speak", help="synthesize speech from text into a WAV file")
    p.add_argument("text", metavar="TEXT", help="text to speak ('-' reads standard input)")
    p.add_argument("-o", "--output", required=True, help="output .wav path")
    p.add_argument("--voice", default=None, help="Piper voice .onnx (its .onnx.json next to it); "
                                                 "default: the shipped en_US-joe-medium")
    p.add_argument("--speed", type=float, default=1.0, help="speaking rate multiplier (default 1.0)")
    p.add_argument("--noise-scale", type=float, default=None, help="prior noise (default: the voice's, 0.667)")
    p.add_argument("--noise-w", type=float, default=None, help="duration noise (default: the voice's, 0.8)")
    p.add_argument("--seed", type=int, default=None, help="noise seed for reproducible output")
    add_backend_args(p, activations=False)
    p.set_defaults(func=run)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float waveform -> int16 scaled so the peak is full scale (piper's rule)."""
    peak = max(float(np.abs(audio).max()) if audio.size else 0.0, _MIN_PEAK)
    return np.clip(audio * (32767.0 / peak), -32768, 32767).astype(np.int16)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM WAV (stdlib `wave`)."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(to_int16(audio).tobytes())


def run(args: argparse.Namespace) -> int:
    from edgeformer.tts.piper import load_piper_voice

    text = sys.stdin.read() if args.text == "-" else args.text
    for name in ("speed", "noise_scale", "noise_w"):
        v = getattr(args, name)
        if v is not None and not (np.isfinite(v) and (v > 0 if name == "speed" else v >= 0)):
            raise InputError(f"--{name.replace('_', '-')} must be a finite number "
                             f"{'> 0' if name == 'speed' else '>= 0'}, got {v}")
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InputError(f"output directory {str(out.parent)!r} does not exist")
    voice = load_piper_voice(args.voice, make_backend(args))
    t0 = time.perf_counter()
    audio, sr = voice.synthesize(text, speed=args.speed, noise_scale=args.noise_scale, noise_w=args.noise_w,
                                 seed=args.seed)
    dt = time.perf_counter() - t0
    write_wav(out, audio, sr)
    secs = audio.size / sr
    print(f"wrote {out} ({secs:.2f} s of audio at {sr} Hz in {dt:.2f} s, real-time factor {dt / max(secs, 1e-9):.2f})",
          file=sys.stderr)
    return 0
