"""`edgeformer run [MODEL] -p PROMPT`: one completion, streamed to stdout; timings on stderr.

An instruct model (one with a chat template) gets the prompt wrapped as a user message
unless `--raw`. Sampling defaults are the ones `load()` and the server share
(`SamplingParams`): greedy (temp 0); with `--temp T`, llama.cpp's truncation (top-k 40,
top-p 0.95, min-p 0.05); no repeat penalty.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeformer.cli.backend_choice import add_backend_args, make_backend
from edgeformer.errors import InputError
from edgeformer.runtime.sampler import SamplingParams

# the sampling defaults are SamplingParams' (shared with load() and the server)
_SP = SamplingParams()
DEFAULTS = dict(max_tokens=_SP.max_tokens, temp=_SP.temperature, top_k=_SP.top_k, top_p=_SP.top_p,
                min_p=_SP.min_p, repeat_penalty=_SP.repetition_penalty, repeat_last_n=_SP.penalty_last_n,
                presence_penalty=_SP.presence_penalty, frequency_penalty=_SP.frequency_penalty)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF file, HF model directory, or shipped model name (default: the default shipped model)")
    add_backend_args(p)
    p.add_argument("-c", "--ctx-size", type=int, default=None, dest="n_ctx",
                   help="context length in tokens, prompt + output (default: min(model max, 4096))")
    add_chat_template_arg(p)


def add_chat_template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-template", default=None, metavar="NAME",
                   help="chat template to use instead of the file's: chatml, gemma, llama3, auto (the "
                        "vocabulary's family) or a Jinja file (default: the file's; a file without one, "
                        "a base model, runs as plain continuation)")


NO_TEMPLATE_NOTE = ("note: this model file has no chat template (a base model): the text is continued as "
                    "plain text; --chat-template NAME (chatml, gemma, llama3, auto) applies one")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=DEFAULTS["max_tokens"], help="default: %(default)s")
    g.add_argument("--temp", type=float, default=DEFAULTS["temp"], help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=DEFAULTS["top_k"], help="0 = off (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=DEFAULTS["top_p"], help="1 = off (default: %(default)s)")
    g.add_argument("--min-p", type=float, default=DEFAULTS["min_p"], help="0 = off (default: %(default)s)")
    g.add_argument("--repeat-penalty", type=float, default=DEFAULTS["repeat_penalty"],
                   help="1 = off (default: %(default)s)")
    g.add_argument("--repeat-last-n", type=int, default=DEFAULTS["repeat_last_n"],
                   help="penalty window in tokens, -1 = whole context (default: %(default)s)")
    g.add_argument("--presence-penalty", type=float, default=DEFAULTS["presence_penalty"])
    g.add_argument("--frequency-penalty", type=float, default=DEFAULTS["frequency_penalty"])
    g.add_argument("--seed", type=int, default=None, help="random seed (default: fresh each run)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")


def sampling_params(args: argparse.Namespace):
    """SamplingParams from parsed flags; invalid values raise InputError (never clamped)."""
    from edgeformer.runtime.sampler import SamplingParams
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                          min_p=args.min_p, repetition_penalty=args.repeat_penalty,
                          penalty_last_n=args.repeat_last_n, presence_penalty=args.presence_penalty,
                          frequency_penalty=args.frequency_penalty, seed=args.seed, stop=tuple(args.stop),
                          ignore_eos=args.ignore_eos)


def load_engine(args: argparse.Namespace):
    from edgeformer.api import load
    return load(args.model, backend=make_backend(args), n_ctx=args.n_ctx, chat_template=args.chat_template)


def read_prompt_file(path: str) -> str:
    """The file's text; InputError if it is missing or not valid UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read prompt file: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: prompt file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="generate a completion for one prompt",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help="the prompt text")
    src.add_argument("-f", "--file", help="read the prompt from a UTF-8 text file")
    p.add_argument("--raw", action="store_true", help="no chat template: complete the prompt text as is")
    p.add_argument("-s", "--system", default=None, help="system message (chat-template models only)")
    p.add_argument("--no-stats", action="store_true", help="do not print timings on stderr")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="image for a vision-language model (LLaVA directory); repeatable, one <image> "
                        "in the prompt marks where each goes")
    add_sampling_args(p)
    add_speculative_args(p)
    p.set_defaults(func=run)


def add_speculative_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative decoding (same output distribution, fewer target passes)")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--draft", metavar="MODEL", default=None,
                   help="draft model with the same vocabulary (GGUF, HF directory or shipped name)")
    m.add_argument("--lookup", type=int, metavar="N", default=None,
                   help="prompt-lookup drafting: propose N tokens per step from n-gram matches")
    g.add_argument("--draft-n", type=int, default=4, help="draft tokens per step with --draft (default: %(default)s)")


def speculative_config(args: argparse.Namespace, backend=None):
    """SpeculativeConfig from --draft / --lookup (None if neither; the draft model is
    loaded here, on `backend`: the target's). InputError for a count < 1; a draft with
    another vocabulary is refused when the config is attached to the engine."""
    from edgeformer.runtime.speculative import SpeculativeConfig
    for flag, v in (("--lookup", args.lookup), ("--draft-n", args.draft_n)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    if args.lookup is not None:
        return SpeculativeConfig.prompt_lookup(args.lookup)
    if args.draft is not None:
        from edgeformer.api import load
        return SpeculativeConfig.draft_model(load(args.draft, backend=backend, n_ctx=args.n_ctx).model,
                                             args.draft_n)
    return None


def vlm_inputs(args: argparse.Namespace) -> tuple[dict, bool]:
    """({"images": [...]} or {}, whether MODEL is a vision-language model), checked
    before the load: InputError for --image with a text-only model, a missing image file,
    or --image with speculative decoding."""
    from edgeformer.models.vlm import is_vlm_dir
    image = list(getattr(args, "image", None) or [])
    vlm = args.model is not None and is_vlm_dir(args.model)
    if image and not vlm:
        raise InputError(f"--image needs a vision-language model directory (LLaVA); {args.model!r} is not one")
    for f in image:
        if not Path(f).is_file():
            raise InputError(f"{f}: no such image file")
    if vlm and (getattr(args, "draft", None) is not None or getattr(args, "lookup", None) is not None):
        raise InputError("speculative decoding (--draft / --lookup) is not supported for vision-language models")
    return ({"images": image} if vlm else {}), vlm


def load_vlm_engine(args: argparse.Namespace):
    from edgeformer.runtime.vlm_engine import load_vlm
    return load_vlm(args.model, backend=make_backend(args), n_ctx=args.n_ctx, chat_template=args.chat_template)


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt if args.prompt is not None else read_prompt_file(args.file)
    if not prompt:
        raise InputError("empty prompt")
    params = sampling_params(args)          # validate flags before the (slow) load
    if args.draft_n < 1:                    # before the loads
        raise InputError(f"--draft-n must be >= 1, got {args.draft_n}")
    images, vlm = vlm_inputs(args)
    spec = speculative_config(args) if args.lookup is not None else None
    engine = load_vlm_engine(args) if vlm else load_engine(args)
    if args.draft is not None:
        spec = speculative_config(args, engine.backend)
    if spec is not None:
        engine.speculative = spec
    if engine.chat_template is not None and not args.raw:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": prompt}]
        events = engine.chat_stream(messages, params, **images)
    else:
        if args.system:
            raise InputError("--system needs a chat template (this model has none, or --raw was given)")
        if engine.chat_template is None and not args.raw:
            print(NO_TEMPLATE_NOTE, file=sys.stderr)
        events = engine.stream(prompt, params, **images)
    last = None
    for ev in events:
        if ev.text:
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        last = ev
    sys.stdout.write("\n")
    sys.stdout.flush()
    if last is not None and last.stats is not None and not args.no_stats:
        print(f"\nfinish reason: {last.finish_reason}", file=sys.stderr)
        print(last.stats.summary(), file=sys.stderr)
        if spec is not None:
            st = spec.last_stats
            print(f"{'speculative':>12} = {st.accepted} / {st.drafted} drafts accepted "
                  f"({st.acceptance_rate:.0%}), {st.tokens_per_round:.2f} tokens per target pass", file=sys.stderr)
    return 0
