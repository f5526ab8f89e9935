"""The cuda (Triton) backend on a GPU: batch-1 decode and pp512 tok/s on random-weight
models at Qwen2.5-0.5B and Llama-3.2-1B dims (BF16, Q8_0, Q4_0), the device-to-device
copy bandwidth and torch's bf16 matmul peak measured in the same run, decode and pp512
as fractions of them, and, where
transformers imports, HF eager and torch.compile on the same weights (dequantized into
an HF model of the same config, bf16) side by side.

    python bench/gpu_bench.py                   # everything; bench/results/gpu_bench.json
    python bench/gpu_bench.py --dry-run         # tiny dims on the CPU in Triton's interpreter
    python bench/gpu_bench.py --models qwen2.5-0.5b --qtypes Q4_0 --no-compile

Rows, per model and qtype: "edgeformer" (the fused decode step; prefill op by op),
"edgeformer-ops" (decode op by op: every op a host round trip), "hf-eager",
"hf-compile" (torch.compile, static cache, mode reduce-overhead). HF runs once per model
on the weights of the first qtype (its speed does not depend on the values). Decode is
timed after a 16-token prompt; "bw fraction" is (weight bytes read per token x tok/s) /
measured copy bandwidth. The JSON is rewritten after every row, so a run cut short by a
time limit keeps what it measured. The markdown table goes to stdout.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# HF config.json values of the two models (rope in both transformers-5 and older keys;
# edgeformer's DecoderConfig.from_hf reads either)
MODELS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
                         use_sliding_window=False),
    "llama3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=5e5,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                        rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                                         "rope_theta": 5e5},
                        tie_word_embeddings=True),
}
# --dry-run: both families at toy size (K a multiple of 32 for every qtype)
TINY: dict[str, dict[str, Any]] = {
    "qwen2-tiny": dict(MODELS["qwen2.5-0.5b"], vocab_size=256, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "llama-tiny": dict(MODELS["llama3.2-1b"], vocab_size=256, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=16384),         # llama3 rope: past its original 8192
}
DECODE_PROMPT = 16


Clock = Callable[[], float]     # wall time with the device drained first (`ceilings.device_clock`)


def weight_bytes(model: Any) -> int:
    """Bytes a decode step reads from weights: every projection and the output matrix."""
    return sum(p.weight.nbytes for B in model.stack.blocks for p in B.projections()) + model.output.nbytes


def matmul_flops_per_token(model: Any) -> int:
    """Multiply-add FLOPs of one token's projections and output matrix (2 x N x K each);
    attention's own FLOPs are left out (small next to them at 512 tokens)."""
    shapes = [p.weight.shape for B in model.stack.blocks for p in B.projections()] + [model.output.shape]
    return sum(2 * n * k for n, k in shapes)


def bench_edgeformer(model: Any, prompt: int, steps: int, reps: int, clock: Clock) -> dict[str, dict[str, float]]:
    """pp tok/s (best of reps) and decode tok/s, fused and op by op, on `model`."""
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, prompt + steps)
    be = model.backend
    pp = []
    for _ in range(reps + 1):                   # the first also compiles the prefill kernels
        c = model.make_cache(prompt + 8)
        t0 = clock()
        model.forward(ids[:prompt], c, last_only=True)
        pp.append(clock() - t0)
    out = {}
    for name, fused in (("edgeformer", True), ("edgeformer-ops", False)):
        be.fused_decode = fused                  # an instance may narrow its class's ability
        c = model.make_cache(DECODE_PROMPT + steps + 8)
        model.forward(ids[:DECODE_PROMPT], c, last_only=True)
        for t in ids[DECODE_PROMPT:DECODE_PROMPT + 2]:          # compile the decode kernels
            model.forward(np.array([t]), c, last_only=True)
        t0 = clock()
        for t in ids[:steps]:
            model.forward(np.array([t]), c, last_only=True)
        out[name] = {"decode_tok_s": steps / (clock() - t0)}
    be.fused_decode = type(be).fused_decode
    out["edgeformer"]["pp_tok_s"] = prompt / min(pp[1:])
    return out


def hf_model(hf_cfg: dict[str, Any], ckpt: Any, device: str, dtype: Any) -> Any:
    """A transformers model of `hf_cfg` holding the checkpoint's weights, dequantized
    (llama's q/k rows un-permuted back to HF's rotate-half layout)."""
    import numpy as np
    import torch
    import transformers

    from edgeformer.formats.tensor_map import hf_to_gguf_name
    from edgeformer.quant import dequantize
    cfg = transformers.AutoConfig.for_model(**hf_cfg)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    c = ckpt.config
    state = {}
    for name, p in model.state_dict().items():
        g = hf_to_gguf_name(hf_cfg["model_type"], name)
        if g is None or g not in ckpt.tensors:
            continue                             # rotary buffers; lm_head of a tied model
        a = dequantize(ckpt.tensors[g]).reshape(tuple(p.shape))
        heads = c.n_heads if ".attn_q." in g else c.n_kv_heads if ".attn_k." in g else 0
        if heads and not c.rope_neox:            # inverse of tensor_map.permute_rows
            a = a.reshape(heads, a.shape[0] // heads // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        state[name] = torch.from_numpy(np.ascontiguousarray(a))
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.eval()


def bench_hf(model: Any, prompt: int, steps: int, reps: int, clock: Clock, compiled: bool) -> dict[str, float]:
    """pp tok/s and decode tok/s of a transformers model: decode from two greedy
    `generate` lengths (their difference is `steps` decode steps)."""
    import torch
    dev = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), device=dev)
    kw: dict[str, Any] = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if compiled:
        kw["cache_implementation"] = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead")
    with torch.inference_mode():
        pp = []
        for _ in range(reps + 1):
            t0 = clock()
            model(ids)
            pp.append(clock() - t0)

        def gen(n: int) -> float:
            t0 = clock()
            model.generate(ids[:, :DECODE_PROMPT], max_new_tokens=n, min_new_tokens=n, **kw)
            return clock() - t0
        gen(4), gen(4 + steps)                   # warm-up and compile (a static cache's size is per length)
        short, long = min(gen(4) for _ in range(3)), min(gen(4 + steps) for _ in range(3))
    # None where noise swamps the difference (tiny models on a busy CPU)
    return {"pp_tok_s": prompt / min(pp[1:]), "decode_tok_s": steps / (long - short) if long > short else None}


def logits_nmse(ours: Any, hf: Any, n: int) -> float:
    """nmse of the HF model's prompt logits against edgeformer's (same weights): a check
    that the weights map across (float32 HF: ~1e-12; bf16 HF: ~1e-4)."""
    import numpy as np
    import torch
    ids = np.random.default_rng(1).integers(0, ours.config.vocab_size, n)
    a = ours.forward(ids, ours.make_cache(n + 1))
    with torch.inference_mode():
        b = hf(torch.from_numpy(ids)[None].to(next(hf.parameters()).device)).logits[0].float().cpu().numpy()
    return float(np.sum((a - b) ** 2) / np.sum(b.astype(np.float64) ** 2))


class Results:
    """The run's rows and metadata, rewritten to `path` after every row."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta, self.rows = path, meta, []   # type: ignore[var-annotated]

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))

    def table(self) -> str:
        bw, peak = self.meta["copy_bandwidth_gb_s"], self.meta["matmul_peak_tflops"]
        head = (f"{self.meta['device']}, copy bandwidth {bw:.0f} GB/s, {self.meta['matmul_dtype']} matmul peak "
                f"{peak:.1f} TFLOP/s (both measured in this run)\n\n"
                "| model | qtype | engine | decode tok/s | pp tok/s | weight MB | decode bw fraction "
                "| pp peak fraction |\n|---|---|---|---:|---:|---:|---:|---:|")
        lines = [head]

        def fmt(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        for r in self.rows:
            lines.append(f"| {r['model']} | {r['qtype']} | {r['engine']} | {fmt(r['decode_tok_s'], '.1f')} | "
                         f"{fmt(r.get('pp_tok_s'), '.0f')} | {r.get('weight_bytes', 0) / 1e6:.0f} | "
                         f"{fmt(r.get('bw_fraction'), '.2f')} | {fmt(r.get('pp_peak_fraction'), '.2f')} |")
        return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU in Triton's interpreter")
    ap.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--qtypes", default="BF16,Q8_0,Q4_0")
    ap.add_argument("--prompt", type=int, default=None, help="prefill length (default 512; 24 with --dry-run)")
    ap.add_argument("--steps", type=int, default=None, help="decode steps timed (default 64; 3 with --dry-run)")
    ap.add_argument("--reps", type=int, default=None, help="prefill repetitions (default 3; 1 with --dry-run)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile", action="store_true", help="run torch.compile with --dry-run too (slow on a CPU)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/gpu_bench.json; "
                    "a temporary file with --dry-run)")
    a = ap.parse_args(argv)
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"     # before any Triton kernel is decorated
    import torch

    from edgeformer.backends.cuda import CudaBackend
    from edgeformer.backends.cuda.ceilings import copy_bandwidth, device_clock, matmul_peak
    from edgeformer.config import DecoderConfig
    from edgeformer.formats.synthetic import synthetic_checkpoint
    from edgeformer.models.decoder import Decoder

    models = TINY if a.dry_run else MODELS
    names = a.models.split(",") if a.models else list(models)
    qtypes = a.qtypes.split(",")
    prompt = a.prompt or (24 if a.dry_run else 512)
    steps = a.steps or (3 if a.dry_run else 64)
    reps = a.reps or (1 if a.dry_run else 3)
    device = "cpu" if a.dry_run else "cuda"
    if not a.dry_run and CudaBackend.available() is not None:
        print(f"gpu_bench: no usable GPU ({CudaBackend.available()}); --dry-run runs on the CPU", file=sys.stderr)
        return 2
    try:
        import transformers
        hf_version = None if a.no_hf else transformers.__version__
    except ImportError:
        hf_version = None
    big = 1 << (20 if a.dry_run else 30)
    dev = torch.device(device)
    clock = functools.partial(device_clock, dev)
    bw = copy_bandwidth(dev, big, 3 if a.dry_run else 20)
    # pp512's roof: torch's own dense matmul (bf16 on a GPU; fp32 in the dry run, where
    # a CPU's bf16 matmul can crawl)
    mm_dtype = torch.float32 if a.dry_run else torch.bfloat16
    peak = matmul_peak(dev, mm_dtype, 256 if a.dry_run else 8192, 3 if a.dry_run else 10)
    import triton
    meta = {"device": "cpu (Triton interpreter)" if a.dry_run else torch.cuda.get_device_name(0),
            "copy_bandwidth_gb_s": bw / 1e9, "copy_bytes": big, "matmul_peak_tflops": peak / 1e12,
            "matmul_dtype": str(mm_dtype).removeprefix("torch."), "torch": torch.__version__,
            "triton": triton.__version__, "transformers": hf_version, "prompt": prompt, "decode_steps": steps,
            "decode_prompt": DECODE_PROMPT, "dry_run": a.dry_run}
    out = a.out or (Path(tempfile.gettempdir()) / "gpu_bench_dry_run.json" if a.dry_run
                    else HERE / "results" / "gpu_bench.json")
    res = Results(out, meta)
    for name in names:
        hf_cfg = models[name]
        cfg = DecoderConfig.from_hf(hf_cfg)
        for i, q in enumerate(qtypes):
            ckpt = synthetic_checkpoint(cfg, q)
            t0 = time.perf_counter()
            model = Decoder(ckpt, CudaBackend(device=device))
            load_s = time.perf_counter() - t0
            wb, fl = weight_bytes(model), matmul_flops_per_token(model)
            for engine, r in bench_edgeformer(model, prompt, steps, reps, clock).items():
                pp = r.get("pp_tok_s")
                res.add({"model": name, "qtype": q, "engine": engine, **r, "weight_bytes": wb,
                         "bw_fraction": wb * r["decode_tok_s"] / bw, "load_s": load_s,
                         "pp_peak_fraction": None if pp is None else fl * pp / peak})
            if i == 0 and hf_version is not None:
                dtype = torch.float32 if a.dry_run else torch.bfloat16
                for compiled in (False,) if a.no_compile or (a.dry_run and not a.compile) else (False, True):
                    hf = hf_model(hf_cfg, ckpt, device, dtype)
                    check = logits_nmse(model, hf, 8)
                    if a.dry_run and not check < 1e-8:
                        raise AssertionError(f"HF model does not hold edgeformer's weights: logits nmse {check:.3g}")
                    r = bench_hf(hf, prompt, steps, reps, clock, compiled)
                    hb = sum(p.numel() * p.element_size() for p in hf.parameters())
                    pp = r.get("pp_tok_s")
                    res.add({"model": name, "qtype": str(dtype).removeprefix("torch."), "engine":
                             "hf-compile" if compiled else "hf-eager", **r, "weight_bytes": hb,
                             "bw_fraction": None if r["decode_tok_s"] is None else hb * r["decode_tok_s"] / bw,
                             "pp_peak_fraction": None if pp is None else fl * pp / peak,
                             "logits_nmse_vs_edgeformer": check})
                    del hf
            del model, ckpt
            if device == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{res.table()}\n\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
