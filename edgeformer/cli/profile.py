"""`edgeformer profile MODEL`: where a decode step's time goes, op by op.

Each op the model calls (the tracer's op list) is replayed in a loop of >= 0.2 s; the
table gives ms per token, share, achieved GB/s and GFLOP/s and the fraction of the
roofline (bytes / measured bandwidth, FLOPs / measured peak), then checks that the
per-op sum matches the measured step time."""
from __future__ import annotations

import argparse
import json

from edgeformer.cli.backend_choice import add_backend_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="per-op time of a decode step, against the roofline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="GGUF file, HF directory or shipped model name")
    add_backend_args(p)
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: Numba's)")
    p.add_argument("--ctx", type=int, default=64, help="cached positions before the step (default: %(default)s)")
    p.add_argument("-T", "--tokens", type=int, default=1, help="tokens in the step: 1 = decode (default)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timing loop (default: %(default)s)")
    p.add_argument("--measure-ceilings", action="store_true",
                   help="re-measure bandwidth and peak FLOP/s now (default: the cached host figures)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeformer.cli.bench import load_model
    from edgeformer.errors import InputError
    from edgeformer.perf.profile import format_profile, profile_decoder, profile_dict
    if args.tokens < 1 or args.ctx < 0 or args.min_time <= 0 or (args.threads is not None and args.threads < 1):
        raise InputError("--tokens >= 1, --ctx >= 0, --min-time > 0 and --threads >= 1 are required")
    model, backend = load_model(args.model, args.backend, args.threads, args.activations)
    bw = peak = None
    if args.measure_ceilings:
        from edgeformer.perf.bandwidth import host_ceilings
        bw, peak = host_ceilings(refresh=True)
    prof = profile_decoder(model, n_ctx=args.ctx, tokens=args.tokens, min_time=args.min_time,
                           bandwidth=bw, peak_flops=peak)
    print(json.dumps(profile_dict(prof), indent=1) if args.json else format_profile(prof))
    return 0
