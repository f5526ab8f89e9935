"""`edgeformer chat [MODEL]`: an interactive chat that keeps its history.

Commands: /reset (forget the history), /exit (or Ctrl-D, or Ctrl-C at the prompt).
Ctrl-C while the model answers stops that answer and returns to the prompt; the partial
answer stays in the history. Each turn reuses the KV cache of the previous ones, so only
the new message is prefilled.

A model file without a chat template (a base model), or `--raw`, chats as plain
continuation: the session is one running text; what you type is appended to it as typed
and the model continues it (`--chat-template NAME` applies a built-in template instead).
"""
from __future__ import annotations

import argparse
import sys

from edgeformer.cli import run as run_cmd
from edgeformer.cli.run import NO_TEMPLATE_NOTE, add_model_args, add_sampling_args, sampling_params
from edgeformer.errors import InputError

HELP = "commands: /reset  forget the conversation   /exit  quit   (Ctrl-C stops an answer)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat with an instruct model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("-s", "--system", default=None, help="system message")
    p.add_argument("--raw", action="store_true",
                   help="no chat template: plain continuation of one running text (what a model file "
                        "without a template, a base model, gets anyway)")
    p.add_argument("--stats", action="store_true", help="print timings after each answer (stderr)")
    add_sampling_args(p)
    p.set_defaults(func=run)


def _answer(engine, messages: list[dict] | str, params, stats: bool) -> str:
    """Stream one answer to stdout (a chat turn for a message list, a continuation for a
    text); returns its text (partial if interrupted)."""
    parts: list[str] = []
    events = None
    try:
        events = engine.stream(messages, params) if isinstance(messages, str) else \
            engine.chat_stream(messages, params)
        for ev in events:
            if ev.text:
                parts.append(ev.text)
                sys.stdout.write(ev.text)
                sys.stdout.flush()
            if ev.stats is not None and stats:
                print(f"\n[{ev.finish_reason}] {ev.stats.decode_tok_s:.1f} tok/s, "
                      f"ttft {ev.stats.ttft_s * 1e3:.0f} ms", file=sys.stderr, end="")
    except KeyboardInterrupt:
        if events is not None:
            events.close()
        sys.stdout.write(" [interrupted]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def run(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    engine = run_cmd.load_engine(args)
    plain = args.raw or engine.chat_template is None
    if plain and args.system:
        raise InputError("--system needs a chat template (this model has none, or --raw was given)")
    if engine.chat_template is None and not args.raw:
        print(NO_TEMPLATE_NOTE, file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict] = list(system)
    text = ""           # plain continuation: the running text
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            messages, text = list(system), ""
            engine.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        if cmd in ("/help", "/?"):
            print(HELP, file=sys.stderr)
            continue
        if plain:
            try:
                text += line + _answer(engine, text + line, params, args.stats)
            except InputError as e:
                print(f"error: {e} (try /reset)", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = _answer(engine, messages, params, args.stats)
        except InputError as e:
            # e.g. the history no longer fits the context: say so and keep the session
            messages.pop()
            print(f"error: {e} (try /reset)", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": reply})
