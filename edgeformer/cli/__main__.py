"""`edgeformer <subcommand>`: parses the subcommand and delegates to its module.

Each subcommand module defines `register(subparsers)` (adds its parser and sets
`func=run`) and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from edgeformer.errors import EdgeformerError

# subcommand -> module; a module not present yet is simply not offered.
SUBCOMMANDS = {
    "run": "edgeformer.cli.run",
    "chat": "edgeformer.cli.chat",
    "info": "edgeformer.cli.info",
    "convert": "edgeformer.cli.convert",
    "bench": "edgeformer.cli.bench",
    "profile": "edgeformer.cli.profile",
    "check-backend": "edgeformer.cli.check_backend",
    "serve": "edgeformer.cli.serve",
    "perf": "edgeformer.cli.perf",
    "plan": "edgeformer.cli.plan",
    "codesign": "edgeformer.cli.codesign",
    "transcribe": "edgeformer.cli.transcribe",
    "speak": "edgeformer.cli.speak",
    "embed": "edgeformer.cli.embed",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeformer", description="On-device transformer inference")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in SUBCOMMANDS.items():
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgeformerError as e:
        print(f"edgeformer: error: {_capped(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`edgeformer info --json | head`): stop quietly, as a
        # SIGPIPE-killed Unix tool would; stdout goes to /dev/null so the interpreter's
        # final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - anything else is our bug: one line, not a traceback
        if os.environ.get("EDGEFORMER_DEBUG"):
            raise
        print(f"edgeformer: internal error ({type(e).__name__}: {_capped(str(e), 300)}); this is a bug: please "
              f"report it with the command line (EDGEFORMER_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70      # EX_SOFTWARE


def _capped(text: str, limit: int = 2000) -> str:
    """An error text cut to `limit` characters (a hostile file can make a huge one)."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


if __name__ == "__main__":
    sys.exit(main())
