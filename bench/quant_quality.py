"""How much does each GGUF quant type cost SmolLM2-135M-Instruct in next-token quality?

The figures llama.cpp's `perplexity --kl-divergence` reports, measured the same way:
logits at every position of a fixed English text (~256 tokens, `TEXT`) from a reference
model and from each quantized model; per position KL(p_ref || p_q), then its mean and
99th percentile, the fraction of positions with the same argmax ("same top p"), the RMSE
of the raw logits, and the perplexity ratio PPL(q) / PPL(ref) on the text itself.

Reference: the shipped Q4_1 file dequantized to an all-F32 GGUF by `formats.convert`;
each variant is that F32 file requantized by `formats.convert` (llama.cpp's per-tensor
rule: a K-quant falls back when a row is not a multiple of 256; SmolLM2's dim is 576, so
only ffn_down, with 1536-wide rows, takes the K type, the rest its fallback; the table
lists the tensor-type counts). Caveat: the "F32" reference is itself the shipped model's
rounding (210 tensors Q4_1, the tied token_embd/output Q8_0), so every figure is relative
to that model, not to the original bf16 weights; re-rounding to a grid aligned with
Q4_1's (Q4_1 itself, Q4_K's asymmetric blocks) costs less than the bits alone suggest,
and the Q4_1 row's error is mostly the Q8_0 -> Q4_1 token_embd/output.

    python bench/quant_quality.py [--qtypes Q8_0,Q6_K,...] [--backend numpy] [--llamacpp] [--out PATH]
`--llamacpp` also quantizes the F32 file with llama.cpp's own quantizer
(`llama_model_quantize`, one type for all tensors, token_embd/output the same type as ours)
and measures it the same way: rows "<type> (llama.cpp)". Writes bench/results/quant_quality.json and prints a Markdown table. Variant files are
kept under $EDGEFORMER_CACHE/quant-quality/ (keyed by the source file's size and mtime).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeformer.quant.metrics import kl_divergence_per_position, log_softmax, rmse, top1_agreement

QTYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K")

# Two plain English paragraphs (written for this benchmark), ~256 SmolLM2 tokens.
TEXT = (
    "The village sat at the bend of a slow brown river, where the water widened into a "
    "shallow pool before it turned south toward the sea. In summer the children swam there "
    "every afternoon, and the old men sat on the stone wall above the bank, arguing about "
    "the weather, the price of grain, and whose grandfather had built the mill that still "
    "stood, roofless, on the far side. Nobody remembered when the mill had stopped turning. "
    "Some said a flood had broken the wheel; others said the miller had simply grown tired "
    "and walked away one morning, leaving the doors open behind him.\n\n"
    "When the first engineers arrived to survey the valley for the new railway, they asked "
    "the villagers the same questions again and again: how high did the river rise in spring, "
    "how often did the road wash out, and where was the ground firm enough to carry a bridge? "
    "The answers were never the same twice. One woman pointed to a line of dark stains on "
    "the church wall and said that was where the water had stopped in the year her daughter "
    "was born. A farmer swore it had once reached the top of the hill. In the end the "
    "engineers trusted their instruments, drew their maps, and built the bridge a little "
    "higher than anyone thought necessary. It has never flooded since."
)


@dataclass
class Row:
    """One variant's figures against the reference (see the module docstring)."""

    qtype: str
    file_mib: float
    tensor_types: dict
    mean_kld: float
    p99_kld: float
    max_kld: float
    same_top1: float
    rmse_logits: float
    ppl: float
    ppl_ratio: float


def source_path() -> Path:
    """The shipped SmolLM2-135M-Instruct Q4_1 GGUF."""
    from edgeformer.models.shipped import resolve_model
    return resolve_model("smollm2-135m-instruct")


def variants_dir(src: Path) -> Path:
    """Where converted variants of `src` are kept (one folder per source size/mtime)."""
    from edgeformer.models.shipped import cache_dir
    st = src.stat()
    return cache_dir() / "quant-quality" / f"{src.stem}-{st.st_size}-{st.st_mtime_ns}"


def convert_cached(src: Path, out: Path, qtype: str) -> Path:
    """`formats.convert(src, out, qtype)` unless `out` already exists; written under a
    temporary name and renamed, so an interrupted run leaves no half file."""
    from edgeformer.formats.convert import convert
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        convert(src, tmp, qtype)
        tmp.replace(out)
    return out


def build_variants(src: Path, qtypes: tuple[str, ...], folder: Path | None = None) -> dict[str, Path]:
    """{"F32": reference, qtype: variant} GGUF paths: `src` dequantized to F32, then the
    F32 file requantized to each of `qtypes` (all by `formats.convert`)."""
    folder = folder or variants_dir(src)
    f32 = convert_cached(src, folder / "F32.gguf", "F32")
    out = {"F32": f32}
    for q in qtypes:
        out[q] = convert_cached(f32, folder / f"{q}.gguf", q)
    return out


# our target -> (llama.cpp ftype, ggml type of token_embd/output = our type or its fallback
# for 576-wide rows); llama.cpp falls Q3_K/Q2_K back to IQ4_NL, which we cannot match
LLAMACPP_FTYPES = {"Q8_0": (7, 8), "Q6_K": (18, 8), "Q5_K": (16, 7), "Q5_0": (8, 6),
                   "Q4_K": (14, 6), "Q4_1": (3, 3), "Q4_0": (2, 2)}


def llamacpp_variant(f32: Path, qtype: str) -> Path:
    """`f32` quantized to `qtype` by llama.cpp (llama-cpp-python's `llama_model_quantize`,
    `pure`: no per-tensor mixing), next to it as llamacpp-<qtype>.gguf (kept)."""
    import ctypes

    import llama_cpp
    out = f32.with_name(f"llamacpp-{qtype}.gguf")
    if not out.is_file():
        ftype, gtype = LLAMACPP_FTYPES[qtype]
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.nthread, p.pure = ftype, 2, True
        p.output_tensor_type = p.token_embedding_type = gtype
        tmp = out.with_name(f".{out.name}.tmp")
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), ctypes.byref(p)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {f32} to {qtype}")
        tmp.replace(out)
    return out


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each qtype `path` stores."""
    from edgeformer.formats.gguf import GGUFFile
    counts: dict[str, int] = {}
    for t in GGUFFile(path).tensors.values():
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    return dict(sorted(counts.items()))


def text_ids(path: Path, text: str = TEXT) -> list[int]:
    """`text` tokenized by edgeformer's tokenizer for the model at `path` (BOS if the file
    asks for one)."""
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    return list(tokenizer_from_checkpoint(load_checkpoint(path)).encode(text, add_bos=True))


def all_logits(path: Path, ids: list[int], backend: str = "numpy") -> np.ndarray:
    """float32 logits (len(ids), vocab) of the model at `path`, one forward pass."""
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    model = Decoder(load_checkpoint(path), get_backend(backend))
    return np.asarray(model.forward(np.asarray(ids, dtype=np.int64), model.make_cache(len(ids))),
                      dtype=np.float32)


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean negative log-likelihood of ids[1:] given the logits before each)."""
    lp = log_softmax(logits[:-1])
    nll = -lp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float(np.exp(nll.mean()))


def compare(ref: np.ndarray, test: np.ndarray, ids: list[int], ppl_ref: float) -> dict:
    """The table's figures for `test` logits against `ref` logits over `ids`."""
    kld = kl_divergence_per_position(ref, test)
    ppl = perplexity(test, ids)
    return dict(mean_kld=float(kld.mean()), p99_kld=float(np.percentile(kld, 99)),
                max_kld=float(kld.max()), same_top1=top1_agreement(ref, test),
                rmse_logits=rmse(ref, test), ppl=ppl, ppl_ratio=ppl / ppl_ref)


def measure(qtypes: tuple[str, ...] = QTYPES, backend: str = "numpy", text: str = TEXT,
            folder: Path | None = None, llamacpp: bool = False) -> tuple[dict, list[Row]]:
    """Build the variants (cached) and measure each against the F32 reference (with
    `llamacpp`, also llama.cpp's quantization of each type it shares with us).
    Returns (reference facts, rows in the order of `qtypes`)."""
    src = source_path()
    paths = build_variants(src, qtypes, folder)
    ids = text_ids(paths["F32"], text)
    ref = all_logits(paths["F32"], ids, backend)
    ppl_ref = perplexity(ref, ids)
    ref_info = dict(source=str(src), n_tokens=len(ids), ppl_f32=ppl_ref,
                    f32_mib=paths["F32"].stat().st_size / 2**20,
                    source_mib=src.stat().st_size / 2**20,
                    source_vs_f32=compare(ref, all_logits(src, ids, backend), ids, ppl_ref))
    rows = []
    for q in qtypes:
        p = paths[q]
        rows.append(Row(qtype=q, file_mib=p.stat().st_size / 2**20, tensor_types=tensor_types(p),
                        **compare(ref, all_logits(p, ids, backend), ids, ppl_ref)))
        if llamacpp and q in LLAMACPP_FTYPES:
            lp = llamacpp_variant(paths["F32"], q)
            rows.append(Row(qtype=f"{q} (llama.cpp)", file_mib=lp.stat().st_size / 2**20,
                            tensor_types=tensor_types(lp), **compare(ref, all_logits(lp, ids, backend), ids, ppl_ref)))
    return ref_info, rows


def table(ref_info: dict, rows: list[Row]) -> str:
    """The rows as a Markdown table (KLD in nats)."""
    out = ["| type | file MiB | tensors stored as | mean KLD | p99 KLD | same top-1 | RMSE logits | PPL | PPL ratio |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|",
           f"| F32 (ref) | {ref_info['f32_mib']:.1f} | all F32 | 0 | 0 | 100% | 0 | {ref_info['ppl_f32']:.3f} | 1 |"]
    s = ref_info["source_vs_f32"]
    out.append(f"| Q4_1 (shipped source) | {ref_info['source_mib']:.1f} | as shipped | {s['mean_kld']:.2e} | "
               f"{s['p99_kld']:.2e} | {100 * s['same_top1']:.1f}% | {s['rmse_logits']:.4f} | {s['ppl']:.3f} | "
               f"{s['ppl_ratio']:.4f} |")
    for r in rows:
        types = ", ".join(f"{k}:{v}" for k, v in r.tensor_types.items())
        out.append(f"| {r.qtype} | {r.file_mib:.1f} | {types} | {r.mean_kld:.4f} | {r.p99_kld:.4f} | "
                   f"{100 * r.same_top1:.1f}% | {r.rmse_logits:.3f} | {r.ppl:.3f} | {r.ppl_ratio:.4f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qtypes", default=",".join(QTYPES))
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--llamacpp", action="store_true", help="also measure llama.cpp's own quantization")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_quality.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    ref_info, rows = measure(tuple(q.strip().upper() for q in a.qtypes.split(",")), a.backend,
                             llamacpp=a.llamacpp)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(backend=a.backend, reference=ref_info, rows=[asdict(r) for r in rows],
                                   seconds=time.perf_counter() - t0), indent=2))
    print(table(ref_info, rows))
    print(f"\n{ref_info['n_tokens']} tokens, backend {a.backend}; wrote {out}")


if __name__ == "__main__":
    main()
