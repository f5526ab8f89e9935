"""`edgeformer codesign --device D --latency-ms X --memory-gb Y [--params 100M..1B]
[--build N] [--verify]`: search decoder shapes x weight qtype x KV precision under a
device's budgets, print and plot the Pareto front, build and measure candidates."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeformer.codesign.space import Candidate
from edgeformer.codesign.verify import MIN_TAU_CANDIDATES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codesign", help="search model shapes and quantization for a device's budgets")
    p.add_argument("--device", required=True, help="catalog device, or 'host' (this machine, calibrated)")
    p.add_argument("--latency-ms", type=float, default=None, help="decode latency budget per token")
    p.add_argument("--memory-gb", type=float, default=None, help="peak memory budget (GB = 1e9 bytes)")
    p.add_argument("--params", default="100M..1B", help="parameter range, e.g. 100M..1B")
    p.add_argument("--qtypes", nargs="+", default=["Q8_0", "Q4_0", "Q4_K"])
    p.add_argument("--kv", nargs="+", default=["f16", "int8"], help="KV precisions: f32 f16 int8")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="override the n_layers axis")
    p.add_argument("--dims", type=int, nargs="+", default=None, help="override the dim axis")
    p.add_argument("--vocabs", type=int, nargs="+", default=None, help="override the vocab_size axis")
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads for --device host / --verify (default: 1, the calibrated setup "
                        "`perf validate` uses)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="timing clock for --device host / --verify (default: cpu; see `perf validate --clock`)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--train-tokens", default="2T", help="training tokens D of the loss model (e.g. 2T, 300B)")
    p.add_argument("--max-candidates", type=int, default=1000, help="evenly spaced subset of the grid")
    p.add_argument("--top", type=int, default=15, help="front rows to print")
    p.add_argument("--build", type=int, default=None, metavar="N", help="write a random-weight GGUF of front row N")
    p.add_argument("--verify", action="store_true",
                   help="build + measure small candidates on this host (as `perf validate`): latency error, Kendall tau")
    p.add_argument("--verify-n", type=int, default=MIN_TAU_CANDIDATES,
                   help=f"candidates to measure (>= {MIN_TAU_CANDIDATES}: fewer ranks agree by chance)")
    p.add_argument("--verify-max-params", default="40M")
    p.add_argument("--out", type=Path, default=Path("codesign_out"))
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeformer.codesign.search import infeasible_reason, search
    from edgeformer.codesign.space import SearchSpace, parse_count, parse_range
    con = Console(width=max(Console().width, 140))
    tokens = parse_count(args.train_tokens.replace("T", "000B").replace("t", "000b"))
    axes: dict[str, Any] = {axis: tuple(val) for axis, val in
                            (("layers", args.layers), ("dims", args.dims), ("vocabs", args.vocabs)) if val}
    space = SearchSpace(qtypes=tuple(q.upper() for q in args.qtypes), kv_dtypes=tuple(args.kv),
                        params=parse_range(args.params), **axes)
    if args.verify:
        from edgeformer.codesign.verify import check_n
        check_n(args.verify_n)                 # refuse before the search, not after it
    clock = "wall"
    if args.device.strip().lower() == "host" or args.verify or args.threads is not None or args.clock is not None:
        # price and measure in the setup `perf validate` calibrates and measures in
        from edgeformer.perf.clock import use_setup
        _, clock = use_setup(args.threads, args.clock)
    res = search(args.device, space, args.latency_ms, args.memory_gb, args.prompt, args.context,
                 tokens, args.max_candidates, clock=clock)
    con.print(f"{res.n_evaluated} candidates priced on {res.device}; {len(res.feasible)} within budgets; "
              f"Pareto front (loss, latency, memory): {len(res.front)}")
    if not res.front:
        con.print(infeasible_reason(res, args.latency_ms, args.memory_gb))
        return 3
    con.print(front_table(res.front[:args.top]))
    if not args.no_plots:
        from edgeformer.perf.plots import pareto_png
        pts = [(s.decode_s * 1e3, s.loss) for s in res.feasible]
        front2 = [(s.decode_s * 1e3, s.loss) for s in res.front]
        con.print(f"wrote {pareto_png(args.out / 'pareto.png', pts, front2, title=f'co-design on {res.device}')}")
    if args.build is not None:
        if not 1 <= args.build <= len(res.front):
            from edgeformer.errors import InputError
            raise InputError(f"--build {args.build}: the front has rows 1..{len(res.front)}")
        path = build_and_check(res.front[args.build - 1].cand, args.out)
        con.print(f"built {path} (loads and runs a forward with edgeformer)")
    if args.verify:
        from edgeformer.codesign.verify import summary_lines, verify
        r = verify(res, parse_count(args.verify_max_params), args.verify_n, args.context, args.out,
                   echo=con.print, clock=clock)
        for line in summary_lines(r):
            con.print(line)
    return 0


def front_table(front: list) -> object:
    """A rich Table of Pareto-front rows (shape, qtype, KV, loss, latency, memory, energy)."""
    from rich.table import Table
    t = Table(title="Pareto front")
    for col in ("#", "layers", "dim", "heads/kv", "ffn", "vocab", "tied", "qtype", "kv", "params M",
                "loss", "decode ms", "TTFT ms", "peak GB", "J/token", "binds"):
        t.add_column(col, justify="right")
    for i, s in enumerate(front, 1):
        c = s.cand
        t.add_row(str(i), str(c.n_layers), str(c.dim), f"{c.n_heads}/{c.n_kv_heads}", str(c.ffn_dim),
                  str(c.vocab_size), "y" if c.tied else "n", c.qtype, c.kv_dtype, f"{c.params / 1e6:.0f}",
                  f"{s.loss:.3f}", f"{s.decode_s * 1e3:.2f}", f"{s.ttft_s * 1e3:.1f}",
                  f"{s.memory / 1e9:.3f}", "-" if s.energy_j is None else f"{s.energy_j:.3g}", s.bound)
    return t


def build_and_check(cand: Candidate, out: Path) -> Path:
    """Write the candidate's random-weight GGUF, load it and run a 4-token forward."""
    from edgeformer.codesign.build import build_candidate
    return build_candidate(cand, out)
