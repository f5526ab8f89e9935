"""`edgeformer serve --ray`: the same server as N engine replicas on Ray Serve, behind one
OpenAI-compatible ingress with prefix-aware routing (serve/ray_deploy.py, docs/SCALING.md).

    edgeformer serve --ray --replicas 2 --threads-per-replica 1
    edgeformer serve --ray --replicas 1 --max-replicas 4 --target-queue 8   # autoscaling

Every other `edgeformer serve` flag applies to each replica (model, backend, KV budget,
batch, body limit, API key, --lookup). Needs the ray extra: pip install 'edgeformer[ray]'.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from edgeformer.errors import InputError, UnsupportedError
from edgeformer.extras import require

RAY_ONLY = ("replicas", "max_replicas", "target_queue", "threads_per_replica", "routing", "ray_address",
            "replica_timeout")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray Serve (--ray; needs the ray extra)")
    g.add_argument("--ray", action="store_true",
                   help="serve with N engine replicas on Ray Serve behind one ingress (same endpoints)")
    g.add_argument("--replicas", type=int, default=None, help="engine replicas (default 1; with --max-replicas: "
                                                               "the least)")
    g.add_argument("--max-replicas", type=int, default=None,
                   help="autoscale between --replicas and this on requests in flight")
    g.add_argument("--target-queue", type=float, default=None,
                   help="requests in flight per replica the autoscaler aims at (default: --max-batch / 2)")
    g.add_argument("--threads-per-replica", type=int, default=None, help="Numba threads of each replica (default 1)")
    g.add_argument("--routing", default=None, choices=["prefix", "round-robin"],
                   help="prefix: a prompt goes to the replica holding its longest cached prefix unless that one "
                        "is busy (default); round-robin: in turn")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else a new local one)")
    g.add_argument("--replica-timeout", type=float, default=None,
                   help="seconds to wait for the next piece of a replica's reply before failing it (default 300)")


def check_flags(args: argparse.Namespace) -> None:
    """InputError when a Ray-only flag is given without --ray."""
    given = [f"--{k.replace('_', '-')}" for k in RAY_ONLY if getattr(args, k, None) is not None]
    if not args.ray and given:
        raise InputError(f"{', '.join(given)} only apply with --ray")


def config(args: argparse.Namespace):
    """The RayServeConfig of the parsed flags (validated; paths made absolute, since the
    replicas run in other processes and maybe other machines)."""
    from edgeformer.cli.serve import check_speculative_args, model_id, parse_size
    from edgeformer.models.shipped import resolve_model
    from edgeformer.serve.ray_config import RayServeConfig
    if args.audio:
        raise UnsupportedError("--audio is not served with --ray (run a single-process server for audio)")
    if args.draft is not None:
        raise UnsupportedError("--draft is not supported with --ray (--lookup is)")
    check_speculative_args(args)
    template = args.chat_template
    if template is not None and Path(template).exists():
        template = str(Path(template).resolve())
    model = str(resolve_model(args.model)) if args.model is not None else None
    return RayServeConfig(
        model=model, model_name=args.model_name or model_id(args.model), backend=args.backend,
        activations=args.activations, n_ctx=args.n_ctx, chat_template=template,
        kv_budget_bytes=parse_size(args.kv_budget), kv_dtype=args.kv_dtype, block_size=args.block_size,
        max_batch=args.max_batch, prefill_chunk=args.prefill_chunk, max_body_bytes=parse_size(args.max_body),
        api_key=args.api_key or os.environ.get("EDGEFORMER_API_KEY") or None, lookup=args.lookup,
        replicas=args.replicas or 1, max_replicas=args.max_replicas, target_queue=args.target_queue,
        threads_per_replica=args.threads_per_replica or 1, routing=args.routing or "prefix",
        replica_timeout_s=args.replica_timeout or 300.0)


def run(args: argparse.Namespace) -> int:
    """Deploy, print the URL, and serve until Ctrl-C / SIGTERM (then shut Serve down)."""
    require("ray.serve", "ray", "edgeformer serve --ray")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port")
    cfg = config(args)
    from ray import serve

    from edgeformer.serve.ray_deploy import deploy
    url = deploy(cfg, args.host, args.port, args.ray_address or os.environ.get("RAY_ADDRESS"))
    scale = f"{cfg.replicas}-{cfg.max_replicas}" if cfg.max_replicas else str(cfg.replicas)
    print(f"edgeformer serve: {scale} replica(s) of {cfg.model_name} on Ray Serve at {url} "
          f"({cfg.routing} routing; Ctrl-C stops)", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
