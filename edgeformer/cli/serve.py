"""`edgeformer serve [MODEL]`: an OpenAI-compatible HTTP server (chat and text completions,
SSE streaming, /v1/models, /health, /metrics) run by uvicorn.

    edgeformer serve --port 8080 --kv-budget 256MiB --backend cpu
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}'

With `--audio`, /v1/embeddings and /v1/audio/{transcriptions,speech} too; /v1/models then
lists those models as well, and OpenAI's names (whisper-1, tts-1, text-embedding-3-small,
...) select them. `--lookup N` or `--draft MODEL [--draft-n N]`: speculative decoding, as
in `edgeformer run` (each decoding sequence verifies its drafts inside the batched step;
greedy output is unchanged).
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from edgeformer.cli.backend_choice import add_backend_args, make_backend
from edgeformer.cli.run import add_chat_template_arg, add_speculative_args, speculative_config
from edgeformer.errors import InputError
from edgeformer.extras import require

DEFAULTS = dict(host="127.0.0.1", port=8080, kv_budget="256MiB", kv_dtype="f16", block_size=16, max_batch=16,
                prefill_chunk=256, max_body="4MiB", max_client_requests=64, stall_timeout=30.0, shutdown_grace=10.0)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes in "256MiB", "1.5GB", "4096" (decimal k/M/G, binary KiB/MiB/GiB); InputError otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise InputError(f"size {text!r}: expected a number with an optional unit (KiB, MiB, GiB, KB, MB, GB)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise InputError(f"size {text!r} must be > 0")
    return n


def model_id(model: str | None) -> str:
    """The id clients pass as `model`: a shipped model's name, else the file or directory
    name without a .gguf suffix."""
    from edgeformer.models.shipped import DEFAULT_MODEL, SHIPPED
    if model is None:
        return DEFAULT_MODEL
    if str(model).strip().lower() in SHIPPED and not Path(model).exists():
        return str(model).strip().lower()
    name = Path(model).expanduser().resolve().name
    return name.removesuffix(".gguf")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file, HF model directory, or shipped model name (default: the default shipped model)")
    add_backend_args(p)
    add_chat_template_arg(p)
    p.add_argument("-c", "--ctx-size", type=int, default=None, dest="n_ctx",
                   help="context length per request, prompt + output (default: min(model max, 4096))")
    p.add_argument("--host", default=DEFAULTS["host"], help="default: %(default)s")
    p.add_argument("--port", type=int, default=DEFAULTS["port"], help="default: %(default)s")
    p.add_argument("--model-name", default=None, help="id clients use as `model` (default: from MODEL)")
    p.add_argument("--kv-budget", default=DEFAULTS["kv_budget"],
                   help="memory for the KV cache of all running requests (default: %(default)s)")
    p.add_argument("--kv-dtype", default=DEFAULTS["kv_dtype"], choices=["f16", "bf16", "f32", "int8"],
                   help="default: %(default)s")
    p.add_argument("--block-size", type=int, default=DEFAULTS["block_size"], help="tokens per KV block")
    p.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"],
                   help="most sequences decoded together (default: %(default)s)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULTS["prefill_chunk"],
                   help="most prompt tokens of one request per step; smaller evens out inter-token latency "
                        "of running streams, larger gives faster TTFT (default: %(default)s)")
    p.add_argument("--max-body", default=DEFAULTS["max_body"], help="request body limit (default: %(default)s)")
    p.add_argument("--max-client-requests", type=int, default=DEFAULTS["max_client_requests"],
                   help="requests in flight per client address; more get 429 (default: %(default)s)")
    p.add_argument("--stall-timeout", type=float, default=DEFAULTS["stall_timeout"],
                   help="seconds a stream waits on a client that reads nothing before dropping it "
                        "(default: %(default)s)")
    p.add_argument("--shutdown-grace", type=float, default=DEFAULTS["shutdown_grace"],
                   help="on SIGTERM, seconds the streams in flight get to finish before they end with an "
                        "error event (default: %(default)s)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on every endpoint but /health "
                        "(default: $EDGEFORMER_API_KEY, else none)")
    p.add_argument("--audio", action="store_true",
                   help="also serve /v1/embeddings, /v1/audio/transcriptions and /v1/audio/speech with the "
                        "shipped MiniLM, Whisper tiny.en and Piper voice (those installed)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_speculative_args(p)
    from edgeformer.cli.serve_ray import add_ray_args
    add_ray_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeformer.cli import serve_ray
    serve_ray.check_flags(args)
    if args.ray:
        return serve_ray.run(args)
    require("uvicorn", "serve", "edgeformer serve")
    from edgeformer.runtime.memory import check_fits
    from edgeformer.runtime.setup_thread import run_in_setup_thread
    from edgeformer.serve.limits import serve

    # validate every flag before the (slow) load
    kv_budget, max_body = parse_size(args.kv_budget), parse_size(args.max_body)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port")
    for flag, v in (("--block-size", args.block_size), ("--max-batch", args.max_batch),
                    ("--prefill-chunk", args.prefill_chunk), ("--max-client-requests", args.max_client_requests)):
        if v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    for flag, t in (("--stall-timeout", args.stall_timeout), ("--shutdown-grace", args.shutdown_grace)):
        if not 0 <= t < 1e6:
            raise InputError(f"{flag} must be a number of seconds >= 0, got {t}")
    check_fits(kv_budget, f"--kv-budget {args.kv_budget}")
    spec = check_speculative_args(args)
    # load, warm and build on a thread that ends: the engine's step thread is then the only
    # one holding a pool of kernel threads (runtime/setup_thread.py: 2x the decode speed)
    app = run_in_setup_thread(lambda: _build(args, spec, kv_budget, max_body))
    serve(app, host=args.host, port=args.port, log_level=args.log_level, grace=args.shutdown_grace)
    return 0


def _build(args: argparse.Namespace, spec, kv_budget: int, max_body: int):
    """The model loaded and the app built (with --audio, its models too) for `run`."""
    from edgeformer.api import load
    from edgeformer.serve.app import create_app

    engine = load(args.model, backend=make_backend(args), n_ctx=args.n_ctx, chat_template=args.chat_template)
    if args.draft is not None:
        spec = speculative_config(args, engine.backend)     # the draft, on the target's backend
    if spec is not None:
        import sys

        engine.speculative = spec                           # InputError for a draft with another vocabulary
        what = f"prompt lookup, {args.lookup}" if args.lookup is not None else f"draft {args.draft}, {args.draft_n}"
        print(f"edgeformer serve: speculative decoding ({what} tokens per step)", file=sys.stderr, flush=True)
    app = create_app(engine, model_name=args.model_name or model_id(args.model), kv_budget_bytes=kv_budget,
                     kv_dtype=args.kv_dtype, block_size=args.block_size, max_batch=args.max_batch,
                     prefill_chunk=args.prefill_chunk, max_body_bytes=max_body,
                     api_key=args.api_key or os.environ.get("EDGEFORMER_API_KEY") or None,
                     max_client_requests=args.max_client_requests, stall_timeout=args.stall_timeout)
    if args.audio:
        mount_shipped_audio(app, engine.backend)
    return app


def check_speculative_args(args: argparse.Namespace):
    """--lookup / --draft / --draft-n checked before any load: InputError for a count < 1,
    a draft that does not exist, or speculative decoding of a vision-language model.
    Returns the prompt-lookup config (None otherwise; a draft is loaded after the target)."""
    if args.draft_n < 1:
        raise InputError(f"--draft-n must be >= 1, got {args.draft_n}")
    spec = speculative_config(args) if args.lookup is not None else None   # --lookup < 1: InputError
    if args.draft is None and spec is None:
        return None
    from edgeformer.models.shipped import resolve_model
    from edgeformer.models.vlm import is_vlm_dir
    if args.model is not None and is_vlm_dir(args.model):
        raise InputError("speculative decoding (--draft / --lookup) is not supported for vision-language models")
    if args.draft is not None and is_vlm_dir(resolve_model(args.draft)):   # InputError for a missing draft
        raise InputError(f"--draft {args.draft}: a vision-language model cannot draft; use a text decoder")
    return spec


def mount_shipped_audio(app, backend) -> None:
    """Mount the embedding/speech endpoints with whichever shipped models are installed;
    a missing one leaves its endpoint answering 404 and says so."""
    import sys

    from edgeformer.errors import EdgeformerError
    from edgeformer.serve.audio_embeddings import AudioModels, mount_audio_embeddings

    def get(what: str, make):
        try:
            return make()
        except (EdgeformerError, OSError) as e:
            print(f"edgeformer serve: no {what}: {e}", file=sys.stderr)
            return None

    from edgeformer.models.bert import TextEmbedder, shipped_minilm_dir
    from edgeformer.models.whisper_decode import load_whisper
    from edgeformer.tts.piper import load_piper_voice
    mount_audio_embeddings(app, AudioModels(
        embedder=get("embedding model", lambda: TextEmbedder(shipped_minilm_dir(), backend)),
        asr=get("speech recognition model", lambda: load_whisper(None, backend)),
        voice=get("voice", lambda: load_piper_voice(None, backend))))
