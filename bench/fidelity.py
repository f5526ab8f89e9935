"""What does each cpu-backend activation setting cost in next-token quality, and how fast
does it decode? Measured the way llama.cpp's `perplexity --kl-divergence` does.

For each real shipped model (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M) and each
activation setting of the cpu backend ("int16" = the default "auto", "int8" = llama.cpp's
scheme, "f32" = float32 activations against dequantized weights), plus llama.cpp itself
(llama-cpp-python) on the same file, against the SAME file's float reference (the numpy
backend: float32 activations, exactly dequantized weights):

- text: `bench/data/fidelity_corpus.txt` (varied text written for this benchmark: prose,
  dialogue, code, numbers and tables, a little French/German/Spanish/Italian/Japanese/
  Chinese), tokenized by edgeformer's tokenizer for the model (BOS as the file asks). The
  same ids are fed to every engine, llama.cpp included (the JSON records whether
  llama.cpp's own tokenization of the text gives the same ids).
- chunks as llama.cpp's perplexity tool makes them: consecutive n_ctx-token chunks (the
  tail that does not fill one is dropped), each chunk's first token replaced by BOS when the
  model adds one, each chunk one forward pass from an empty cache; scored positions are
  those after the first half of the chunk: logits at j = n_ctx/2 .. n_ctx-2 (each predicts
  a token inside the chunk), n_ctx/2 - 1 positions per chunk.
- per scored position KL(p_ref || p_test) over the full vocabulary (`quant.metrics`,
  float64 log-softmax); reported: mean KLD with its standard error and 95% interval
  (mean +- 1.96 SE, SE = std / sqrt(n - 1) as llama.cpp prints it), the 99th percentile and
  max, and top-1 agreement (% of scored positions whose argmax matches the reference's,
  with its binomial SE).
- decode tok/s: bench/compare.py's tg protocol (tg`n` = `n` single-token forwards of a fixed
  token from an empty cache, repeated until a window lasts >= 1 s, after one warm-up tg`n`),
  `-t` threads, each window in a fresh subprocess; `-r` rounds in which every engine runs
  one window in turn (so they share the machine's load drift), median per engine;
  llama.cpp built as for the KLD
  (flash attention on, as its perplexity tool's "auto" picks on CPU; its default f16 KV
  cache). `--llamacpp-f32` adds llama.cpp with float32 attention (flash attention off, f32
  KV cache; ggml's CPU flash attention gives the same logits whatever the KV type), so
  what remains of its error is its weight x activation dot products.

    python bench/fidelity.py [--models smollm2-135m-instruct,gemma3-270m] [--n-ctx 512]
                             [--max-chunks N] [-t 2] [-r 3] [-n 128] [--skip-decode]
                             [--skip-llamacpp] [--llamacpp-f32] [--write-md]
    python bench/fidelity.py --from-json bench/results/fidelity.json [--write-md]   # re-render
    python bench/fidelity.py --decode-only bench/results/fidelity.json [-r 3] [--write-md]
Writes bench/results/fidelity.json and prints a Markdown table; `--write-md` puts it in
BENCHMARKS.md's "Activation fidelity" section. Nothing is cached on disk: the reference
logits of one chunk are compared with every engine's and dropped (Gemma's 262k vocabulary x
3,000 positions would be ~3 GB of log-probs).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeformer.quant.metrics import kl_divergence_per_position

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "fidelity_corpus.txt"
SETTINGS = ("int16", "int8", "f32")
LLAMACPP = "llama.cpp"
# llama.cpp with float32 attention (--llamacpp-f32): flash attention off and an f32 KV cache
# (ggml's CPU flash attention gives the same logits for an f16 or an f32 KV cache)
LLAMACPP_F32 = "llama.cpp-f32attn"
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
TARGET_MEAN_KLD, TARGET_TOP1 = 1e-4, 0.995
ROWS_PER_SLICE = 32          # positions per float64 KLD slice (262k vocab: 64 MiB per array)
LLAMA_KW = dict(flash_attn=True)   # llama.cpp context options used for KLD and decode alike


# ---------------------------------------------------------------------------- chunks

def chunks(ids: Sequence[int], n_ctx: int, bos: int | None = None,
           max_chunks: int | None = None) -> list[np.ndarray]:
    """llama.cpp perplexity's chunks: consecutive `n_ctx`-token slices of `ids` (a partial
    tail is dropped), the first token of each replaced by `bos` when given."""
    if n_ctx < 4:
        raise ValueError(f"n_ctx must be >= 4, got {n_ctx}")
    n = len(ids) // n_ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one {n_ctx}-token chunk")
    out = []
    for i in range(n):
        c = np.asarray(ids[i * n_ctx:(i + 1) * n_ctx], dtype=np.int64).copy()
        if bos is not None:
            c[0] = bos
        out.append(c)
    return out


def scored(n_ctx: int) -> slice:
    """Rows of a chunk's logits that llama.cpp scores: n_ctx/2 .. n_ctx-2."""
    return slice(n_ctx // 2, n_ctx - 1)


# ---------------------------------------------------------------------------- engines

def ours(path: str | Path, backend: str = "cpu", activations: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """chunk -> (len(chunk), vocab) float32 logits, one edgeformer forward pass from an empty cache."""
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    model = Decoder(load_checkpoint(path), get_backend(backend, activations))

    def run(chunk: np.ndarray) -> np.ndarray:
        return np.asarray(model.forward(chunk, model.make_cache(len(chunk)), last_only=False), dtype=np.float32)
    return run


def _llama_kw(engine: str) -> dict:
    """llama.cpp context options for `engine` (LLAMACPP or LLAMACPP_F32)."""
    if engine == LLAMACPP_F32:
        return dict(LLAMA_KW, flash_attn=False, type_k=0, type_v=0)     # 0 = GGML_TYPE_F32
    return dict(LLAMA_KW)


def llamacpp(path: str | Path, n_ctx: int, threads: int = 2,
             engine: str = LLAMACPP) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """(chunk -> (len(chunk), vocab) float32 logits from llama.cpp with logits_all, the Llama);
    the KV cache is cleared before every chunk, the whole chunk is one batch."""
    import llama_cpp
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          n_threads=threads, n_threads_batch=threads, verbose=False, **_llama_kw(engine))

    def run(chunk: np.ndarray) -> np.ndarray:
        llm.reset()
        llm.eval([int(t) for t in chunk])
        return np.array(llm.scores[:len(chunk)], dtype=np.float32)
    return run, llm


# ---------------------------------------------------------------------------- statistics

def kld_stats(kld: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """The reported figures from per-position KLD and top-1 matches (bool)."""
    n = len(kld)
    se = float(np.std(kld) / np.sqrt(n - 1)) if n > 1 else float("nan")
    mean = float(np.mean(kld))
    p = float(np.mean(same))
    return dict(n=n, mean_kld=mean, mean_kld_se=se, mean_kld_ci95=[mean - 1.96 * se, mean + 1.96 * se],
                median_kld=float(np.median(kld)), p99_kld=float(np.percentile(kld, 99)),
                max_kld=float(np.max(kld)), top1=p, top1_se=float(np.sqrt(p * (1 - p) / n)),
                top1_mismatches=int(n - np.count_nonzero(same)))


def compare_chunk(ref: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-position KLD, per-position argmax match) of test vs ref logits (rows, vocab),
    in slices of ROWS_PER_SLICE rows to bound the float64 temporaries."""
    klds, same = [], []
    for i in range(0, len(ref), ROWS_PER_SLICE):
        r, t = ref[i:i + ROWS_PER_SLICE], test[i:i + ROWS_PER_SLICE]
        klds.append(kl_divergence_per_position(r, t))
        same.append(np.argmax(r, axis=-1) == np.argmax(t, axis=-1))
    return np.concatenate(klds), np.concatenate(same)


def measure(path: str | Path, ids: Sequence[int], engines: Sequence[str] = SETTINGS + (LLAMACPP,),
            n_ctx: int = 512, bos: int | None = None, max_chunks: int | None = None, threads: int = 2,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """KLD / top-1 of each engine ("int16", "int8", "f32": the cpu backend with that
    activation setting; "llama.cpp"; "llama.cpp-f32attn") against the numpy backend on `path`,
    over `ids` cut into llama.cpp perplexity chunks (see `chunks`, `scored`).
    Returns {"n_chunks", "n_scored", "ref_seconds", "engines": {name: kld_stats + "seconds"}}."""
    cs = chunks(ids, n_ctx, bos, max_chunks)
    ref_fn = ours(path, "numpy")
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    keep = []
    for e in engines:
        if e in (LLAMACPP, LLAMACPP_F32):
            fn, llm = llamacpp(path, n_ctx, threads, e)
            fns[e] = fn
            keep.append(llm)
        else:
            fns[e] = ours(path, "cpu", e)
    kl: dict[str, list] = {e: [] for e in fns}
    sm: dict[str, list] = {e: [] for e in fns}
    secs = {e: 0.0 for e in fns}
    ref_s = 0.0
    sl = scored(n_ctx)
    for ci, c in enumerate(cs):
        t0 = time.perf_counter()
        ref = ref_fn(c)[sl]
        ref_s += time.perf_counter() - t0
        for e, fn in fns.items():
            t0 = time.perf_counter()
            test = fn(c)[sl]
            secs[e] += time.perf_counter() - t0
            k, s = compare_chunk(ref, test)
            kl[e].append(k)
            sm[e].append(s)
            del test
        if log:
            log(f"  chunk {ci + 1}/{len(cs)}: " + ", ".join(
                f"{e} {np.mean(kl[e][-1]):.2e}" for e in fns))
    for llm in keep:
        llm.close()
    out = {e: dict(kld_stats(np.concatenate(kl[e]), np.concatenate(sm[e])), seconds=secs[e]) for e in fns}
    return dict(n_chunks=len(cs), n_scored=sum(len(x) for x in kl[next(iter(fns))]) if fns else 0,
                ref_seconds=ref_s, engines=out)


# ---------------------------------------------------------------------------- decode speed

def _child_decode(engine: str, path: str, n: int, reps: int, threads: int) -> dict:
    """tg`n` windows (bench/compare.py's protocol) of one engine, in this process."""
    from edgeformer.perf.clock import timed_windows
    if engine in (LLAMACPP, LLAMACPP_F32):
        import llama_cpp
        llm = llama_cpp.Llama(path, n_ctx=n + 16, n_threads=threads, n_threads_batch=threads, verbose=False,
                              **_llama_kw(engine))

        def tg() -> None:
            llm.reset()
            for _ in range(n):
                llm.eval([1])
    else:
        from edgeformer.backends.cpu import CpuBackend
        CpuBackend(engine)      # sets the OpenMP wait policy before Numba's pool starts
        import numba
        numba.set_num_threads(threads)
        from edgeformer.backends import get_backend
        from edgeformer.formats import load_checkpoint
        from edgeformer.models.decoder import Decoder
        m = Decoder(load_checkpoint(path), get_backend("cpu", engine))
        cache = m.make_cache(n + 2)
        tok = np.array([1])

        def tg() -> None:
            cache.truncate(0)
            for _ in range(n):
                m.forward(tok, cache, last_only=True)
    w = timed_windows(tg, reps, 1.0)
    return dict(tg=[k * n / wall for wall, _, k in w], window_s=[wall for wall, _, _ in w],
                omp_wait=os.environ.get("OMP_WAIT_POLICY") or f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")


def decode_speed(engine: str, path: str | Path, n: int = 128, reps: int = 3, threads: int = 2) -> dict:
    """tg`n` tok/s of `engine` on `path` in a fresh subprocess with `threads` threads:
    {"tg": [per window], "tg_median", ...} or {"error": ...}."""
    cmd = [sys.executable, __file__, "--child-decode", engine, str(path), "-n", str(n), "-r", str(reps),
           "-t", str(threads)]
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr[-800:]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["tg_median"] = statistics.median(r["tg"])
    return r


def decode_rounds(engines: Sequence[str], path: str | Path, n: int = 128, reps: int = 3, threads: int = 2,
                  log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """`reps` rounds, each running every engine once (`decode_speed` with one window), so
    the engines share the shared machine's load drift: {engine: {"tg": [per round],
    "tg_median", "omp_wait": [...]}} (or {"error"} for an engine that failed)."""
    out: dict[str, dict] = {e: {"tg": [], "window_s": [], "omp_wait": []} for e in engines}
    for i in range(reps):
        for e in engines:
            if "error" in out[e]:
                continue
            d = decode_speed(e, path, n, 1, threads)
            if "error" in d:
                out[e] = d
            else:
                for k in ("tg", "window_s"):
                    out[e][k] += d[k]
                out[e]["omp_wait"].append(d["omp_wait"])
            if log:
                log(f"  decode round {i + 1}/{reps} {e}: " + (f"{d['tg_median']:.1f} tok/s" if "tg_median" in d
                                                              else d["error"]))
    for d in out.values():
        if d.get("tg"):
            d["tg_median"] = statistics.median(d["tg"])
    return out


# ---------------------------------------------------------------------------- host, output

def host_facts() -> dict[str, Any]:
    """CPU model, logical CPUs and the ISA extensions that matter to the kernels."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        flags = set()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        name = "?"
    return dict(cpu=name, cpus=os.cpu_count(), avx2="avx2" in flags, avx512f="avx512f" in flags,
                avx512_vnni="avx512_vnni" in flags, avx512_bf16="avx512_bf16" in flags,
                amx="amx_tile" in flags)


def model_info(name: str) -> tuple[Path, list[int], int | None, dict]:
    """(path, corpus ids by edgeformer's tokenizer, BOS to put at each chunk start or None,
    facts incl. whether llama.cpp tokenizes the corpus to the same ids)."""
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    from edgeformer.models.shipped import resolve_model
    path = resolve_model(name)
    tok = tokenizer_from_checkpoint(load_checkpoint(path))
    text = CORPUS.read_text(encoding="utf-8")
    ids = list(tok.encode(text, add_bos=True))
    bos = tok.bos_id if tok.add_bos else None
    facts: dict[str, Any] = dict(path=str(path), file_mib=path.stat().st_size / 2**20, corpus_tokens=len(ids),
                                 bos=bos)
    try:
        import llama_cpp
        v = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        theirs = v.tokenize(text.encode("utf-8"), add_bos=tok.add_bos, special=False)
        v.close()
        facts["llamacpp_same_ids"] = list(theirs) == ids
        if not facts["llamacpp_same_ids"]:
            first = next((i for i, (a, b) in enumerate(zip(theirs, ids)) if a != b), min(len(theirs), len(ids)))
            facts["llamacpp_ids"] = dict(n=len(theirs), first_difference=first)
    except ImportError:
        pass
    from edgeformer.formats.gguf import GGUFFile
    counts: dict[str, int] = {}
    for t in GGUFFile(path).tensors.values():
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    facts["tensor_types"] = dict(sorted(counts.items()))
    return path, ids, bos, facts


def table(res: dict) -> str:
    """Markdown rows: one per model x engine."""
    out = [f"| model | setting | mean KLD (95% CI) | p99 KLD | max KLD | top-1 agreement | "
           f"decode tok/s (tg{res['args']['n_gen']}, median (range)) |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for name, m in res["models"].items():
        for e, s in m["engines"].items():
            d = m.get("decode", {}).get(e, {})
            tg = f"{d['tg_median']:.1f}" if "tg_median" in d else ("error" if "error" in d else "—")
            if len(d.get("tg", [])) > 1:
                tg += f" ({min(d['tg']):.1f}–{max(d['tg']):.1f})"
            label = {"int16": "int16 (default)", "int8": "int8", "f32": "f32", LLAMACPP: "llama.cpp",
                     LLAMACPP_F32: "llama.cpp, f32 KV, no flash attn"}[e]
            lo, hi = s["mean_kld_ci95"]
            out.append(f"| {m['short']} | {label} | {s['mean_kld']:.2e} ({max(lo, 0):.1e}–{hi:.1e}) | "
                       f"{s['p99_kld']:.2e} | {s['max_kld']:.2e} | {100 * s['top1']:.2f}% "
                       f"({s['top1_mismatches']}/{s['n']} differ) | {tg} |")
    return "\n".join(out)


def verdicts(res: dict) -> list[str]:
    """One line per model: the default setting against the targets."""
    lines = []
    for m in res["models"].values():
        s = m["engines"].get("int16")
        if s:
            ok_k, ok_t = s["mean_kld"] <= TARGET_MEAN_KLD, s["top1"] >= TARGET_TOP1
            lines.append(f"{m['short']}: default (int16) mean KLD {s['mean_kld']:.2e} "
                         f"{'<=' if ok_k else '>'} {TARGET_MEAN_KLD:.0e} ({'met' if ok_k else 'MISSED'}), "
                         f"top-1 {100 * s['top1']:.2f}% {'>=' if ok_t else '<'} {100 * TARGET_TOP1:.1f}% "
                         f"({'met' if ok_t else 'MISSED'})")
    return lines


def reading(res: dict) -> list[str]:
    """Observations computed from the figures (ratios between rows), for the Markdown."""
    out = []
    ms = list(res["models"].values())

    def e(m: dict, k: str) -> dict:
        return m["engines"].get(k, {})

    def kl(m: dict, k: str) -> float:
        return e(m, k).get("mean_kld", float("nan"))
    if all("int16" in m["engines"] and "int8" in m["engines"] for m in ms):
        out.append("int8 activations (llama.cpp's scheme) cost " + ", ".join(
            f"~{round(kl(m, 'int8') / kl(m, 'int16'), -3):,.0f}x the mean KLD of int16 on {m['short']}" for m in ms)
            + "; int16 rounds each 32-block to 1/32767 of its max instead of 1/127 (258x finer; KLD "
            "grows with the square of a small logit error, and 258^2 = 66,564). Every int16 mismatch of top-1 is a near-tie: the "
            "largest int16 KLD at any position is " + ", ".join(f"{e(m, 'int16')['max_kld']:.1e} ({m['short']})"
                                                              for m in ms) + ".")
    if all("f32" in m["engines"] for m in ms):
        out.append("f32 (float32 activations, dequantized weights) is the numpy reference up to summation order "
                   "(mean KLD " + ", ".join(f"{kl(m, 'f32'):.0e}" for m in ms) + "): the harness itself adds "
                   "nothing.")
    if all(LLAMACPP in m["engines"] and "int8" in m["engines"] for m in ms):
        s = ("llama.cpp / our int8 mean KLD: " + ", ".join(f"{kl(m, LLAMACPP) / kl(m, 'int8'):.2f}x ({m['short']})"
                                                           for m in ms))
        if all(LLAMACPP_F32 in m["engines"] for m in ms):
            s += ("; with float32 attention (f32 KV cache, flash attention off) llama.cpp gives " + ", ".join(
                f"{kl(m, LLAMACPP_F32):.2e}" for m in ms) + ", so its KV cache and attention add little: "
                "its error is its int8 activations. Where they differ from ours: for K-quant weights llama.cpp "
                "quantizes activations to Q8_K, one scale per 256 values, where our int8 keeps one per 32 for "
                "every qtype (for Q4_0/Q4_1/Q5_x/Q8_0 both use 32). In Gemma's Q4_K_M file the K-quants are "
                "attn_output (Q4_K) and ffn_down (Q4_K or Q6_K), the projections back into the residual stream, whose "
                "inputs (attention output, the GLU product) carry the largest outliers; that is the likely "
                "source of llama.cpp's Gemma gap (not isolated here)")
        out.append(s + ".")
    sm = next((m for m in ms if m["short"].startswith("smollm2") and "int16" in m["engines"]), None)
    if sm:
        out.append("Scale: the \"Quantization quality\" section puts requantizing SmolLM2's weights from F32 to "
                   "Q8_0 at a mean KLD of 1.2e-3 (on another text): "
                   + (f"int8 activations alone cost {kl(sm, 'int8') / 1.2e-3:.1f}x that, " if "int8" in sm["engines"]
                      else "") + f"int16 activations ~1/{round(1.2e-3 / kl(sm, 'int16'), -3):,.0f} of it.")
    dec = [m for m in ms if all("tg_median" in m.get("decode", {}).get(k, {}) for k in ("int16", "int8"))]
    if dec:
        spans = [max(d["tg"]) / min(d["tg"]) for m in dec for d in m["decode"].values() if len(d.get("tg", [])) > 1]
        s = ("Decode: medians, with the range of the windows, from a 2-core machine shared with other jobs; ratios "
             "of medians: int16 / int8 = " + ", ".join(
                 f"{m['decode']['int16']['tg_median'] / m['decode']['int8']['tg_median']:.2f}x ({m['short']})"
                 for m in dec))
        if all("tg_median" in m["decode"].get(LLAMACPP, {}) for m in dec):
            s += "; int16 / llama.cpp = " + ", ".join(
                f"{m['decode']['int16']['tg_median'] / m['decode'][LLAMACPP]['tg_median']:.2f}x ({m['short']})"
                for m in dec)
        if spans and max(spans) > 2:
            s += (f". One engine's windows span up to {max(spans):.0f}x (max / min) here, so these medians do not "
                  "rank int16, int8 and llama.cpp against each other; the \"CPU decode and prefill\" section "
                  "(`bench/compare.py --activations ...`, quieter runs) is the place for speed")
        if all("tg_median" in m["decode"].get("f32", {}) for m in dec):
            s += ("; f32 is the one clear outlier, " + ", ".join(
                f"{m['decode']['f32']['tg_median'] / m['decode']['int16']['tg_median']:.2f}x int16's median "
                f"({m['short']})" for m in dec) + ": it dequantizes every weight block for each token (a reference "
                "setting, not a fast path)")
        out.append(s + ".")
    out.append("The KLD comes from whole-chunk forward passes (prefill). The cpu backend's quantized linears "
               "quantize each token's activations the same way for any row count (`act_quant.quant_row` on "
               "every path), so a decoded token sees the same linear arithmetic; attention differs in "
               "summation order only (float32 both ways).")
    return out


def _write_md(res: dict, tbl: str) -> None:
    """Replace (or append) BENCHMARKS.md's '## Activation fidelity' section."""
    md = HERE.parent / "BENCHMARKS.md"
    text = md.read_text() if md.is_file() else "# Benchmarks\n"
    h = dict(res["host"])
    h["kernel_isa"] = h.get("kernel_isa", "?").split(", cpu ")[0]
    yes = lambda b: "yes" if b else "no"   # noqa: E731
    models = "; ".join(f"{m['short']}: `{Path(m['path']).name}` ({m['file_mib']:.0f} MiB; "
                       + ", ".join(f"{k}:{v}" for k, v in m["tensor_types"].items())
                       + f"), {m['corpus_tokens']} corpus tokens, {m['n_chunks']} chunks, {m['n_scored']} scored positions"
                       + ("" if m.get("llamacpp_same_ids", True) else " (llama.cpp tokenizes the text differently; it was fed our ids)")
                       for m in res["models"].values())
    cmd = res["command"] if "--write-md" in res["command"] else res["command"] + " --write-md"
    dec = ""
    for d in res.get("decode_runs", []):
        which = "" if not d.get("engines") else " (" + ", ".join(d["engines"]) + ")"
        dec += (f" Decode tok/s{which} re-measured {d['when']} with `{d['command']}`, {d['repetitions']} rounds "
                f"(load average {d['load_start'][0]:.1f} at start, {d['load_end'][0]:.1f} at end).")
    body = f"""## Activation fidelity

What the cpu backend's activation setting (`--activations`, `get_backend("cpu", activations=...)`)
costs in next-token quality, measured the way llama.cpp's `perplexity --kl-divergence` does,
each setting against the same file's float reference (numpy backend: float32 activations,
exactly dequantized weights), beside llama.cpp on the same file, ids and chunks.

    {cmd}

Measured {res['when']} ({res['seconds'] / 60:.0f} min). Host: {h['cpu']}, {h['cpus']} logical CPUs,
AVX2 {yes(h['avx2'])}, AVX-512 {yes(h['avx512f'])}, AVX-512 VNNI {yes(h['avx512_vnni'])}, AVX-512 BF16
{yes(h['avx512_bf16'])}; cpu kernels compiled for {h.get('kernel_isa', '?')}; load average {res['load_start'][0]:.1f} at start, {res['load_end'][0]:.1f} at end
(shared machine: tok/s are medians of windows of >= 1 s and swing several-fold run to run;
the KLD figures are deterministic).{dec} JSON: `bench/results/fidelity.json`.

Text: `bench/data/fidelity_corpus.txt` (prose, dialogue, letters, Python/C/shell/INI/JSON, tables,
numbers and lists, a little French, German, Spanish, Italian, Japanese and Chinese; written for
this benchmark), tokenized by edgeformer with BOS; the same ids go to every engine. Chunks of
{res['args']['n_ctx']} tokens, BOS first, one forward pass each from an empty cache; the positions after
the first half of each chunk are scored ({res['args']['n_ctx'] // 2 - 1} per chunk), as llama.cpp does. Models: {models}.

{tbl}

KLD = KL(p_ref ‖ p_test) in nats over the full vocabulary per scored position (float64
log-softmax, `edgeformer/quant/metrics.py`); CI = mean ± 1.96 standard errors; top-1 agreement =
share of scored positions whose argmax equals the reference's. Decode: {res['args']['threads']} threads,
tg{res['args']['n_gen']} from an empty cache (bench/compare.py's protocol), each window in a fresh process,
the engines taking turns window by window so they share the machine's load drift.
llama.cpp: llama-cpp-python {res.get('llama_cpp_version', '?')}, flash attention on, default f16 KV cache,
logits of every position (`logits_all`); its quantized dot products take int8 activations
(Q8_1 blocks of 32 for Q4_0/Q4_1/Q5_x, Q8_0 for Q8_0, Q8_K blocks of 256 for K-quants).

Targets for the default (int16) setting: mean KLD <= 1e-4 and top-1 >= 99.5%.
{chr(10).join('- ' + v for v in res['verdicts'])}

Reading it:
{chr(10).join('- ' + v for v in reading(res))}
"""
    head = "## Activation fidelity"
    if head in text:
        pre, rest = text.split(head, 1)
        nxt = rest.find("\n## ")
        text = pre + body + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    md.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child-decode", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--max-chunks", type=int, default=None, help="at most this many chunks per model")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="decode windows (default: %(default)s)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="tokens per decode unit (default: %(default)s)")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--llamacpp-f32", action="store_true",
                    help="also llama.cpp with float32 attention (flash attention off, f32 KV cache)")
    ap.add_argument("--write-md", action="store_true", help="write the table into BENCHMARKS.md")
    ap.add_argument("--out", default=str(HERE / "results" / "fidelity.json"))
    ap.add_argument("--from-json", metavar="PATH", help="no measuring: print (and --write-md) a saved run")
    ap.add_argument("--decode-only", metavar="PATH",
                    help="keep a saved run's KLD figures, re-measure its decode tok/s, write --out")
    a = ap.parse_args()
    if a.decode_only:
        res = json.loads(Path(a.decode_only).read_text())
        t0 = time.perf_counter()
        only = [x.strip() for x in a.settings.split(",")] if "--settings" in sys.argv else None
        run = dict(command="python bench/fidelity.py " + " ".join(sys.argv[1:]),
                   when=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   load_start=list(os.getloadavg()), repetitions=a.repetitions)
        res["args"].update(n_gen=a.n_gen, threads=a.threads)
        for name, m in res["models"].items():
            print(name, file=sys.stderr, flush=True)
            engines = [x for x in m["engines"] if only is None or x in only]
            run["engines"] = engines
            m.setdefault("decode", {}).update(decode_rounds(engines, m["path"], a.n_gen, a.repetitions, a.threads,
                                                            lambda x: print(x, file=sys.stderr, flush=True)))
        run.update(load_end=list(os.getloadavg()), seconds=time.perf_counter() - t0)
        runs = res.get("decode_runs") or ([res.pop("decode_run")] if "decode_run" in res else [])
        # a run that re-measured every engine a later one re-measures is superseded
        runs = [r for r in runs if not set(r.get("engines") or ["?"]) <= set(engines)] + [run]
        res["decode_runs"] = runs
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(table(res))
        if a.write_md:
            _write_md(res, table(res))
        return 0
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
        tbl = table(res)
        print(tbl + "\n\n" + "\n".join(res["verdicts"]))
        if a.write_md:
            _write_md(res, tbl)
        return 0
    if a.child_decode:
        print(json.dumps(_child_decode(a.child_decode[0], a.child_decode[1], a.n_gen, a.repetitions, a.threads)))
        return 0
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))   # before Numba starts its pool
    t0 = time.perf_counter()
    engines = tuple(s.strip() for s in a.settings.split(",") if s.strip())
    if not a.skip_llamacpp:
        engines += (LLAMACPP,) + ((LLAMACPP_F32,) if a.llamacpp_f32 else ())
    res: dict[str, Any] = dict(
        when=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command="python bench/fidelity.py " + " ".join(sys.argv[1:]), args=vars(a), host=host_facts(),
        load_start=list(os.getloadavg()), models={})
    try:
        import llama_cpp
        res["llama_cpp_version"] = llama_cpp.__version__
    except ImportError:
        pass
    log = lambda s: print(s, file=sys.stderr, flush=True)   # noqa: E731
    for name in (m.strip() for m in a.models.split(",") if m.strip()):
        path, ids, bos, facts = model_info(name)
        log(f"{name}: {len(ids)} tokens, llama.cpp same ids: {facts.get('llamacpp_same_ids')}")
        t1 = time.perf_counter()
        m = measure(path, ids, engines, a.n_ctx, bos, a.max_chunks, a.threads, log)
        m.update(facts, short=name.split("-instruct")[0], kld_seconds=time.perf_counter() - t1)
        if not a.skip_decode:
            m["decode"] = decode_rounds(engines, path, a.n_gen, a.repetitions, a.threads, log)
        res["models"][name] = m
        if "kernel_isa" not in res["host"]:
            from edgeformer.backends.cpu import isa
            res["host"]["kernel_isa"] = isa.describe().split(", cpu ")[0]
    res["load_end"] = list(os.getloadavg())
    res["seconds"] = time.perf_counter() - t0
    res["verdicts"] = verdicts(res)
    tbl = table(res)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(tbl)
    print("\n" + "\n".join(res["verdicts"]))
    print(f"\n{res['seconds']:.0f} s; wrote {out}")
    if a.write_md:
        _write_md(res, tbl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
