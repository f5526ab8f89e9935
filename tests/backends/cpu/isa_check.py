"""The cpu backend on the SIMD path this process compiles for, against the numpy reference.
Run as a script (tests/backends/cpu/test_isa_paths.py runs it with EDGEFORMER_CPU_ISA=avx2,
the way a user forces it); prints one JSON object and exits 0 when every check passed.

Checks:
- `isa.compiled_isa()` is `--expect` (the features Numba compiles for);
- every native qtype's linear (the per-qtype row-dot kernels at T=1, the 4-token row dots
  at T=5, the prefill path at T=70), under each activation setting, vs `linear_ref` on the
  dequantized weight, within `LINEAR.max_nmse` (the conformance bound);
- the fused one-token decode step (`CpuBackend.decode_step`) on small random llama and
  qwen2 models (Q8_0, Q4_0, Q4_1) vs the numpy backend on the same file: the bound the
  real-model test uses (10x the linear op's);
- the machine code: uncached recompiles of every kernel these calls compiled (their
  assembly; cached code has none to show) contain no zmm register with --expect avx2, and
  do contain them with --expect avx512 (so the check can fail), and use AVX2 vectors (ymm).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np


def linear_checks(report: dict, quick: bool = False) -> None:
    from edgeformer.backends.cpu import CpuBackend
    from edgeformer.backends.conformance import nmse
    from edgeformer.backends.cpu.repack import NATIVE
    from edgeformer.kernels.inputs import random_qtensor
    from edgeformer.kernels.linear import LINEAR, linear_ref
    from edgeformer.quant import dequantize
    from edgeformer.quant.qtypes import QType
    for acts in ("auto",) if quick else ("auto", "int8", "f32"):
        try:
            be = CpuBackend(activations=acts)
        except TypeError:             # a backend without the activations setting: its default only
            if acts != "auto":
                continue
            be = CpuBackend()
        for q in (QType.Q8_0,) if quick else NATIVE:
            rng = np.random.default_rng(100 + int(q))
            k = 512 if q.block_size == 256 else (96 if q.block_size == 32 else 65)
            qt = random_qtensor(q, (37, k), rng, 0.1)
            w = be.prepare_weight(qt, f"w_{q.name}")
            wf = dequantize(qt).astype(np.float32).reshape(37, k)
            bound = LINEAR.max_nmse.get(q.name, LINEAR.max_nmse["default"])
            for t in (1, 5, 70):
                x = rng.standard_normal((t, k)).astype(np.float32)
                got = be.kernels["linear"](x, w.handle)
                err = nmse(got, linear_ref(x, _f32_qtensor(wf)))
                ok = bool(np.isfinite(got).all() and err <= bound)
                report["linear"].append({"acts": acts, "qtype": q.name, "t": t, "nmse": err, "bound": bound, "ok": ok})


def _f32_qtensor(a: np.ndarray):
    from edgeformer.quant.qtypes import QTensor
    return QTensor.from_array(np.ascontiguousarray(a, dtype=np.float32))


# small decoders (dims multiples of 32, so the fused step covers every block; GQA)
MODELS = {
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=211,
                  max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  hidden_act="silu"),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, vocab_size=211,
                  max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                  hidden_act="silu"),
}


def _hf_dir(name: str, root: Path) -> Path:
    """An HF model directory (config.json + safetensors) of random weights, written with
    numpy only (no torch)."""
    from safetensors.numpy import save_file
    cfg = MODELS[name]
    d, f, v, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    rng = np.random.default_rng(7)

    def r(*s):
        return (rng.standard_normal(s) * 0.15).astype(np.float32)
    t = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": 1 + r(d)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = r(v, d)
    for i in range(L):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
              p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.k_proj.weight": r(kv, d),
              p + "self_attn.v_proj.weight": r(kv, d), p + "self_attn.o_proj.weight": r(d, d),
              p + "mlp.gate_proj.weight": r(f, d), p + "mlp.up_proj.weight": r(f, d), p + "mlp.down_proj.weight": r(d, f)}
        if name == "qwen2":
            t |= {p + "self_attn.q_proj.bias": r(d), p + "self_attn.k_proj.bias": r(kv), p + "self_attn.v_proj.bias": r(kv)}
    out = root / name
    out.mkdir()
    save_file(t, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def decode_checks(report: dict, root: Path) -> None:
    from edgeformer.backends import get_backend
    from edgeformer.backends.cpu import CpuBackend
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.convert import convert
    from edgeformer.kernels.linear import LINEAR
    from edgeformer.models.decoder import Decoder
    bound = 10 * LINEAR.max_nmse["default"]
    for name, qtype in (("llama", "Q8_0"), ("qwen2", "Q4_0"), ("llama", "Q4_1")):
        hf = root / name if (root / name).is_dir() else _hf_dir(name, root)
        gguf = root / f"{name}-{qtype}.gguf"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(hf, gguf, qtype)
        be = CpuBackend()
        calls = []
        step = be.decode_step

        def counted(*a, step=step, calls=calls):
            y = step(*a)
            calls.append(y is not None)
            return y
        be.decode_step = counted
        m, ref = Decoder(load_checkpoint(gguf), be), Decoder(load_checkpoint(gguf), get_backend("numpy"))
        toks = np.random.default_rng(5).integers(0, 211, 24)
        c, rc = m.make_cache(64), ref.make_cache(64)
        m.forward(toks[:16], c)
        ref.forward(toks[:16], rc)
        errs = []
        for i in range(16, 24):
            a = m.forward(toks[i:i + 1], c, last_only=True)[0].astype(np.float64)
            b = ref.forward(toks[i:i + 1], rc, last_only=True)[0].astype(np.float64)
            errs.append(float(((a - b) ** 2).mean() / (b ** 2).mean()))
        fused = len(calls) == 8 and all(calls)
        report["decode"].append({"model": name, "qtype": qtype, "why_not_fused": be.why_not_fused(m.stack, be.activations), "fused_steps": sum(calls),
                                 "max_nmse": max(errs), "bound": bound, "ok": fused and max(errs) < bound})


# the entry points whose machine code is checked (module.kernel name; the per-qtype
# kernels are generated, `kinds.py`); callees (the simd row dots, quantize_x, the panel
# tiles, _gemv's chain of per-kind row loops) are linked into their callers' code, so it covers them
ASM_KERNELS = r"linear\.linear_\w+|panel_gemm\.linear_\w+|qgemm\.linear_dequant_\w+|block\.(_gemv|_attn_in|_attn_out)"


def _kernels() -> dict[str, object]:
    """module.name -> every compiled Numba kernel of the cpu backend this process holds: module
    attributes and the values of module-level tables (the generated per-qtype kernels)."""
    from numba.core.dispatcher import Dispatcher
    out = {}
    for modname, mod in sorted(sys.modules.items()):
        if not modname.startswith("edgeformer.backends.cpu.") or mod is None:
            continue
        for obj in vars(mod).values():
            for d in (obj.values() if isinstance(obj, dict) else (obj,)):
                if isinstance(d, Dispatcher) and d.signatures:
                    out[f"{d.py_func.__module__.rsplit('.', 1)[1]}.{d.py_func.__name__}"] = d
    return dict(sorted(out.items()))


def asm_checks(report: dict, expect: str, pattern: str = ASM_KERNELS) -> None:
    """Recompile (uncached) every edgeformer cpu kernel this process compiled, for the same
    signatures, and count zmm / ymm registers in its assembly."""
    zmm = ymm = 0
    names, vnni = [], 0
    for name, obj in _kernels().items():
        if not re.fullmatch(pattern, name):
            continue
        clone = type(obj)(obj.py_func, locals=dict(obj.locals), targetoptions=dict(obj.targetoptions))
        for sig in obj.signatures[:2]:
            clone.compile(sig)
            asm = clone.inspect_asm(sig)
            zmm += len(re.findall(r"%zmm\d+", asm))
            ymm += len(re.findall(r"%ymm\d+", asm))
            vnni += len(re.findall(r"\bvpdpbusd|\bvdpbf16ps", asm))
        names.append(name)
    ok = (zmm == 0 and vnni == 0 and ymm > 0) if expect == "avx2" else (zmm > 0) if expect == "avx512" else True
    report["asm"] = {"kernels": names, "zmm": zmm, "ymm": ymm, "vnni_bf16": vnni, "ok": ok and len(names) > 0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", default="avx2", choices=["avx2", "avx512", "generic"])
    ap.add_argument("--no-asm", action="store_true")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--quick", action="store_true", help="linear: Q8_0 with the default activations only")
    ap.add_argument("--asm-kernels", default=ASM_KERNELS, help="regex of module.kernel names to disassemble")
    args = ap.parse_args()
    from edgeformer.backends.cpu import isa
    report: dict = {"linear": [], "decode": []}
    linear_checks(report, args.quick)
    if not args.no_decode:
        with tempfile.TemporaryDirectory() as d:
            decode_checks(report, Path(d))
    report["isa"], report["describe"] = isa.compiled_isa(), isa.describe()
    if not args.no_asm:
        asm_checks(report, args.expect, args.asm_kernels)
    ok = (report["isa"] == args.expect and all(r["ok"] for r in report["linear"] + report["decode"])
          and report.get("asm", {}).get("ok", True))
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
