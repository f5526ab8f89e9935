"""`edgeformer plan [MODEL] --latency-ms X --memory-gb Y --power-w Z [--qtypes ...]`:
rank catalog devices for a model under budgets, print a table, write PNGs."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="rank catalog devices for a model under latency/memory/power budgets")
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF/HF path or shipped model name (default: the default shipped model)")
    p.add_argument("--latency-ms", type=float, default=None, help="decode latency budget per token")
    p.add_argument("--memory-gb", type=float, default=None, help="peak memory budget (GB = 1e9 bytes)")
    p.add_argument("--power-w", type=float, default=None, help="device rated power budget")
    p.add_argument("--qtypes", nargs="+", default=None, help="re-price the model in these weight qtypes")
    p.add_argument("--devices", nargs="+", default=None, help="catalog devices (default: all)")
    p.add_argument("--catalog", type=Path, default=None, help="device catalog TOML file or directory")
    p.add_argument("--prompt", type=int, default=128, help="prompt length for TTFT")
    p.add_argument("--context", type=int, default=1024, help="context length for decode")
    p.add_argument("--top", type=int, default=20, help="rows to print")
    p.add_argument("--out", type=Path, default=Path("plan_out"), help="directory for PNGs")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeformer.models.shipped import DEFAULT_MODEL
    from edgeformer.perf.plan import Budgets, plan, write_plots
    budgets = Budgets(args.latency_ms, args.memory_gb, args.power_w)
    res = plan(args.model or DEFAULT_MODEL, budgets, args.qtypes, args.devices, args.prompt, args.context,
               catalog=args.catalog)
    t = Table(title=f"{res.model}: prompt {res.prompt_len}, decode at context {res.context_len}")
    for col in ("#", "device", "qtype", "TTFT ms", "decode ms/tok", "tok/s", "peak GB", "J/token",
                "binds", "meets"):
        t.add_column(col, justify="left" if col in ("device", "qtype", "binds", "meets") else "right")
    for i, p in enumerate(res.plans[:args.top], 1):
        ok = "yes" if p.meets else "no: " + ", ".join(p.failures)
        t.add_row(str(i), p.device.name, p.qtype, f"{p.ttft_s * 1e3:.1f}", f"{p.decode_s * 1e3:.2f}",
                  f"{p.tok_s:.1f}", f"{p.memory.total / 1e9:.3f}",
                  "-" if p.energy_j is None else f"{p.energy_j:.3g}", p.binding, ok)
    con = Console(width=max(Console().width, 130))
    con.print(t)
    con.print(res.verdict())
    if not args.no_plots:
        for path in write_plots(res, args.out):
            con.print(f"wrote {path}")
    return 0 if res.feasible else 3
