"""`edgeformer perf`: the performance model on this machine.

    edgeformer perf calibrate [--backend cpu] [--refresh]   microbenchmarks -> fitted roofline
    edgeformer perf validate [--quick] [--json out.json]    predicted vs measured grid
    edgeformer perf trace [MODEL] [--prompt N] [--context N] [--device D]
                                                            op list cost summary + prediction

Every action measures (and finds its cached calibration) with the setup the shipped
calibration and validation numbers were made with: one kernel thread timed by process
CPU time (`--threads 1 --clock cpu`, `perf.clock.CALIBRATED_*`); `--threads N` /
`--clock wall` select another setup, calibrated separately. `validate` also watches the
other processes' CPU use while it measures and prints "machine busy: results not
judged" rather than a miss made from their noise (`perf.busy`).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="calibrate, validate and inspect the performance model")
    s = p.add_subparsers(dest="perf_command", metavar="ACTION")
    c = s.add_parser("calibrate", help="fit the roofline to this machine + backend (cached)")
    c.add_argument("--backend", default=None, help="backend to calibrate (default: fastest available)")
    c.add_argument("--refresh", action="store_true", help="measure again even if cached")
    _setup_args(c)
    c.set_defaults(func=run_calibrate)
    v = s.add_parser("validate", help="predicted vs measured TTFT, prefill, decode, peak memory")
    v.add_argument("--quick", action="store_true", help="5 points on the smallest models (< 3 min)")
    v.add_argument("--backend", default=None)
    v.add_argument("--prefill-budget-s", type=float, default=90.0,
                   help="skip measuring prefills predicted to take longer (decode/memory still compared)")
    _setup_args(v)
    v.add_argument("--from-json", type=Path, default=None,
                   help="re-predict the measurements saved in a --json file (no new measurements)")
    v.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    v.add_argument("--markdown", type=Path, default=None, help="also write the tables as Markdown")
    v.set_defaults(func=run_validate)
    t = s.add_parser("trace", help="price a model's prefill and decode op lists")
    t.add_argument("model", nargs="?", default=None, help="GGUF/HF path or shipped name (default: shipped)")
    t.add_argument("--prompt", type=int, default=128)
    t.add_argument("--context", type=int, default=None)
    t.add_argument("--device", default="host", help="catalog device, or 'host' (calibrated)")
    t.add_argument("--by", choices=("op", "name", "layer"), default="op")
    _setup_args(t)
    t.set_defaults(func=run_trace)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads (default: 1, the calibrated setup; with --clock wall: all cores)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time by process CPU time (cpu, needs 1 thread; the default, steady on a shared "
                        "host) or wall clock (default with --threads > 1)")


def _device_clock(args: argparse.Namespace) -> None:
    """A backend whose kernels run on a device is timed by the wall clock: the process's
    CPU time does not see the device working (`--clock cpu` is refused for it)."""
    from edgeformer.backends.base import backend_class, default_backend_name, get_backend
    from edgeformer.errors import InputError
    name = args.backend or default_backend_name()
    cls = backend_class(name)       # abilities are class attributes: no backend is built here
    if cls is None:
        get_backend(name)           # an unknown name: UnsupportedError naming the known ones
    elif cls.device_memory:
        if args.clock == "cpu":
            raise InputError(f"--clock cpu times this process's CPU, not {name}'s device: use --clock wall")
        args.clock = "wall"


def run_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeformer.perf.calibrate import calibrate, describe
    from edgeformer.perf.clock import use_setup
    from edgeformer.perf.memory import calibrate_memory, fmt_bytes
    _device_clock(args)
    _, clock = use_setup(args.threads, args.clock)
    host = calibrate(args.backend, refresh=args.refresh, verbose=True, clock=clock)
    mem = calibrate_memory(host.backend, refresh=args.refresh, clock=clock)
    t = Table(title=f"calibration: {host.device.display_name} / {host.backend}")
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in describe(host) + [("RSS baseline", fmt_bytes(mem.baseline)),
                                  ("weight residency (x stored bytes)",
                                   ", ".join(f"{q} {r:.3f}" for q, r in mem.residency.items()))]:
        t.add_row(k, v)
    Console().print(t)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from edgeformer.backends.base import default_backend_name
    from edgeformer.perf.calibrate import calibrate
    from edgeformer.perf.clock import setup_name, use_setup
    from edgeformer.perf.validate import markdown, run_grid, verdict_lines
    _device_clock(args)             # an unknown backend name -> UnsupportedError
    _, clock = use_setup(args.threads, args.clock)
    if args.from_json is not None:
        from edgeformer.perf.validate import repredict
        rows = repredict(args.from_json, args.backend, clock=clock)
    else:
        rows = run_grid(args.quick, args.backend, args.prefill_budget_s, out_json=args.json, clock=clock)
    host = calibrate(args.backend or default_backend_name(), clock=clock)     # cached: the one just used
    measured = sorted({r.setup or "an unrecorded setup" for r in rows})
    print(f"\nmeasured with {', '.join(measured)}; predicted with the {setup_name(clock)} calibration "
          f"(backend {host.backend})")
    if measured != [setup_name(clock)]:
        print("warning: pass the --threads / --clock the rows were measured with, to compare them with "
              "the calibration made in that setup")
    for line in verdict_lines(rows, getattr(host.measurements, "others_cores", None)):
        print(line)
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")
    return 0


def run_trace(args: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeformer.backends.trace import summarize, summary_table
    from edgeformer.models.shipped import DEFAULT_MODEL
    from edgeformer.perf.trace_model import trace_decoder
    tr = trace_decoder(args.model or DEFAULT_MODEL, prompt_len=args.prompt, context_len=args.context)
    con = Console()
    con.print(summary_table(summarize(tr.decode), args.by))
    if args.device == "host":
        from edgeformer.perf.calibrate import calibrate
        from edgeformer.perf.clock import use_setup
        _, clock = use_setup(args.threads, args.clock)
        host = calibrate(verbose=True, clock=clock)
        pre, dec = host.predict(tr.prefill), host.predict_decode(tr)
    else:
        from edgeformer.perf.device_spec import get_device
        from edgeformer.perf.roofline import predict
        dev = get_device(args.device)
        pre, dec = predict(tr.prefill, dev), predict(tr.decode, dev)
    con.print(f"prefill {tr.prompt_len} tokens: {pre.total_s * 1e3:.1f} ms ({pre.bound}-bound); "
              f"decode at {tr.context_len}: {1 / dec.total_s:.1f} tok/s ({dec.bound}-bound"
              f"{', fused step' if tr.fused_decode and args.device == 'host' else ''}); "
              f"weights {tr.weight_bytes / 2**20:.1f} MiB, KV {tr.kv_bytes / 2**20:.1f} MiB; "
              f"a decode step moves {tr.decode_dram_bytes / 2**20:.1f} MiB of weights + KV "
              f"({sum(r.cost.bytes for r in tr.decode) / 2**20:.1f} MiB with activations)")
    return 0
