"""Does speculative decoding speed up greedy decoding of the real SmolLM2-135M-Instruct?

Task: rewrite a given paragraph with two small edits (chat prompt, greedy, stops at EOS
or --max-tokens): output that mostly copies the prompt, the case prompt lookup is for.
Each configuration is timed against plain decoding of the same target on the same
backend, interleaved run by run (plain, speculative, plain, ...) so that load on the
machine hits both alike; medians of --runs timed runs after one warm-up run each (Numba
compilation, prompt prefill). A run is one `chat()` call with the prompt already in the
KV cache, so its wall time is decoding only; a timed window repeats the call until it
lasts >= 1 s; tokens/s = emitted tokens (a final EOS included) / window time. Greedy
outputs must be identical to plain decoding's. Numba runs --threads threads (default 1:
on a machine whose cores are busy with other work, 2 threads measured ~30x slower per
token than 1, from oversubscribed thread synchronization).

Configurations:
- lookup-k: prompt lookup (n-gram, max_ngram 3), k tokens per round, shipped Q4_1 target;
- draft-k: a draft model. There is no smaller shipped model with SmolLM2's vocabulary,
  so the draft is SmolLM2 itself requantized to Q4_0 and the target is SmolLM2
  requantized to Q8_0 (both converted from the shipped Q4_1 GGUF by
  `edgeformer.formats.convert`, cached under ~/.cache/edgeformer/speculative/);
- early-N-k (with --early-exit N): the target's own first N layers as the draft
  (self-speculation; shares the weights, needs no extra memory). Off by default: with
  20 of 30 layers only 9% of drafts were accepted (SmolLM2 was not trained for early
  exit, unlike LayerSkip models), a slowdown.

    python bench/speculative.py [--backend cpu] [--threads 1] [--runs 5] [--max-tokens 128]
                                [--lookup 2,4,8] [--draft 2,4] [--early-exit N]
Writes bench/results/speculative.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from edgeformer.api import load
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams
from edgeformer.runtime.speculative import SpeculativeConfig

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in the salty wind. "
    "Every night for forty years, the keeper climbed the spiral stairs to light the lamp, and every "
    "morning he wrote a short note in the logbook about the weather and the ships that passed. "
    "When the storms came in autumn, he stayed awake until dawn, watching the beam sweep across the "
    "dark water.")
TASK = ("Rewrite the following paragraph, changing 'lighthouse' to 'tower' and 'forty' to 'fifty'. "
        "Keep everything else exactly the same.\n\n" + PARAGRAPH)
MESSAGES = [{"role": "user", "content": TASK}]
MIN_WINDOW_S = 1.0


def _run(eng: Engine, params: SamplingParams) -> dict:
    """One timed window: chat() repeated (same prompt, already cached) until >= MIN_WINDOW_S."""
    n = reps = 0
    t = time.perf_counter()
    while True:
        res = eng.chat(MESSAGES, params)
        n += len(res.token_ids) + (res.finish_reason == "stop")   # the EOS the model emitted counts
        reps += 1
        wall = time.perf_counter() - t
        if wall >= MIN_WINDOW_S:
            break
    return dict(ids=res.token_ids, tokens=n // reps, reps=reps, wall_s=wall, tok_s=n / wall)


def compare(name: str, target: Engine, cfg: SpeculativeConfig, runs: int, params: SamplingParams) -> dict:
    """Plain vs speculative on `target`'s model, interleaved; medians of `runs`."""
    spec = Engine(target.model, target.tokenizer, target.chat_template, target.backend, n_ctx=target.n_ctx,
                  speculative=cfg)
    plain_runs, spec_runs, stats = [], [], []
    for i in range(runs + 1):                    # run 0 warms up (JIT, prefill) and is not timed
        p, s = _run(target, params), _run(spec, params)
        st = cfg.last_stats
        if i:
            plain_runs.append(p)
            spec_runs.append(s)
            stats.append((st.drafted, st.accepted, st.rounds, st.emitted))
        print(f"  {name} run {i}{' (warm-up)' if not i else ''}: plain {p['tok_s']:.2f} tok/s "
              f"({p['reps']}x in {p['wall_s']:.1f} s), speculative {s['tok_s']:.2f} tok/s "
              f"({s['reps']}x in {s['wall_s']:.1f} s), "
              f"accepted {st.accepted}/{st.drafted}", flush=True)
    identical = all(r["ids"] == plain_runs[0]["ids"] for r in plain_runs + spec_runs)
    d, a, r, e = stats[-1]
    pm = statistics.median(x["tok_s"] for x in plain_runs)
    sm = statistics.median(x["tok_s"] for x in spec_runs)
    return dict(config=name, num_draft=cfg.num_draft, tokens=plain_runs[0]["tokens"], identical_output=identical,
                plain_tok_s=round(pm, 3), spec_tok_s=round(sm, 3),
                # median of the per-run ratios: each pair ran back to back under the same load
                speedup=round(statistics.median(s["tok_s"] / p["tok_s"] for p, s in zip(plain_runs, spec_runs)), 3),
                acceptance_rate=round(a / d, 3) if d else 0.0, tokens_per_target_pass=round(e / r, 3),
                plain_runs_tok_s=[round(x["tok_s"], 3) for x in plain_runs],
                spec_runs_tok_s=[round(x["tok_s"], 3) for x in spec_runs],
                min_window_s=round(min(x["wall_s"] for x in plain_runs + spec_runs), 2))


def pass_cost_ms(model, sizes=(1, 3, 5, 9), context: int = 150) -> dict[int, float]:
    """Milliseconds of one target forward of T tokens after `context` cached positions
    (what a verify pass with T - 1 drafts costs), each from a >= 1 s loop."""
    import numpy as np
    cache = model.make_cache(context + max(sizes))
    model.forward(np.arange(context) % 1000, cache)
    out = {}
    for t in sizes:
        toks = np.arange(t) + 500
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < MIN_WINDOW_S:
            model.forward(toks, cache)
            cache.truncate(context)
            n += 1
        out[t] = round((time.perf_counter() - t0) / n * 1e3, 2)
    return out


def requantized(qtype: str) -> Path:
    """SmolLM2-135M-Instruct converted to `qtype` (cached)."""
    from edgeformer.formats.convert import convert
    from edgeformer.models.shipped import cache_dir, resolve_model
    out = cache_dir() / "speculative" / f"SmolLM2-135M-Instruct.{qtype}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        convert(resolve_model("smollm2-135m-instruct"), tmp, qtype)
        tmp.replace(out)
    return out


def early_exit(model, n_layers: int):
    """The target's first `n_layers` blocks + its final norm and output head, as a draft
    model (a shallow copy: weights are shared)."""
    import copy
    import dataclasses
    d = copy.copy(model)
    d.layers = model.layers[:n_layers]
    d.config = dataclasses.replace(model.config, n_layers=n_layers)
    return d


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lookup", default="2,4,8", help="draft lengths for prompt lookup ('' = skip)")
    ap.add_argument("--draft", default="2,4", help="draft lengths for the Q4_0 draft model ('' = skip)")
    ap.add_argument("--early-exit", type=int, default=0, help="also try the first N layers as the draft")
    ap.add_argument("--threads", type=int, default=1, help="Numba threads (default: %(default)s)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speculative.json"))
    args = ap.parse_args()
    import numba
    numba.set_num_threads(args.threads)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    rows = []
    load_before = os.getloadavg()
    shipped = load("smollm2-135m-instruct", backend=args.backend, n_ctx=1024)
    costs = {"Q4_1 target": pass_cost_ms(shipped.model)}
    print(f"target forward ms by tokens per pass: {costs}", flush=True)
    for k in _ints(args.lookup):
        rows.append(compare(f"lookup-{k} (Q4_1 target)", shipped, SpeculativeConfig.prompt_lookup(k), args.runs,
                            params))
    if args.early_exit:
        for k in _ints(args.draft) or [4]:
            cfg = SpeculativeConfig.draft_model(early_exit(shipped.model, args.early_exit), k)
            rows.append(compare(f"early-exit {args.early_exit} layers, k={k} (Q4_1 target)", shipped, cfg,
                                args.runs, params))
    if _ints(args.draft):
        target = load(requantized("Q8_0"), backend=args.backend, n_ctx=1024)
        draft = load(requantized("Q4_0"), backend=args.backend, n_ctx=1024).model
        costs["Q8_0 target"] = pass_cost_ms(target.model)
        costs["Q4_0 draft"] = pass_cost_ms(draft, sizes=(1,))
        print(f"forward ms by tokens per pass: {costs}", flush=True)
        for k in _ints(args.draft):
            rows.append(compare(f"draft Q4_0 k={k} (Q8_0 target)", target, SpeculativeConfig.draft_model(draft, k),
                                args.runs, params))
    out = dict(task="rewrite a paragraph with 2 word edits (chat, greedy)", backend=args.backend,
               threads=args.threads, runs=args.runs, max_tokens=args.max_tokens,
               machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), loadavg_before=load_before, loadavg_after=os.getloadavg(),
               forward_ms_by_tokens=costs, results=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n| config | tokens | plain tok/s | spec tok/s | speedup (paired) | acceptance | tokens/target pass "
          "| identical |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['tokens']} | {r['plain_tok_s']:.2f} | {r['spec_tok_s']:.2f} | "
              f"{r['speedup']:.2f}x | {r['acceptance_rate']:.0%} | {r['tokens_per_target_pass']:.2f} | "
              f"{'yes' if r['identical_output'] else 'NO'} |")
    short = [r["config"] for r in rows if r["min_window_s"] < MIN_WINDOW_S]
    if short:
        print(f"warning: timed windows under {MIN_WINDOW_S} s in {short}")


if __name__ == "__main__":
    main()
