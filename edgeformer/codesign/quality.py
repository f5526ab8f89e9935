"""Quality proxy for a candidate: a predicted pre-training loss in nats per token.

    L = E + A / N^alpha + B / D^beta            (Chinchilla parametric fit)
      + depth penalty                           (heuristic, after MobileLLM)
      + weight-quantization penalty             (from llama.cpp's measured perplexity deltas)
      + KV-cache precision penalty              (heuristic)

- Chinchilla: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models",
  arXiv:2203.15556, eq. (10) / Approach 3: E = 1.69, A = 406.4, B = 410.7,
  alpha = 0.34, beta = 0.28. N = parameters, D = training tokens.
- Depth: Liu et al. 2024, "MobileLLM: Optimizing Sub-billion Parameter Language Models for
  On-Device Use Cases" (ICML 2024, arXiv:2402.14905) found deep-and-thin better than
  wide-and-shallow below 1B parameters (their 125M/350M models use 30/32 layers). We
  state that as a HEURISTIC: DEPTH_KAPPA x ln(DEPTH_REF / n_layers) nats when a model is
  shallower than DEPTH_REF = 30 layers, nothing otherwise. The 0.03 magnitude is not
  fitted; it only orders otherwise-equal shapes the way the paper's ablation does.
- Weight quantization: ln(1 + dppl / ppl) with the perplexity increases llama.cpp lists
  for Llama-3-8B in `tools/quantize/quantize.cpp` (QUANT_OPTIONS: Q8_0 +0.0026, Q6_K
  +0.0217, Q5_K_M +0.0569, Q4_K_M +0.1754, Q4_0 +0.4685; Q4_K uses the Q4_K_M figure)
  on an assumed F16 wikitext perplexity of 6.23. Small models lose more to quantization
  than an 8B one: read these as lower bounds.
- KV precision: f32/f16 cost nothing; int8 costs 0.005 nats (HEURISTIC, of the order of
  the near-lossless 8-bit KV results in the KV-quantization literature).
"""
from __future__ import annotations

import math

from edgeformer.codesign.space import Candidate

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
DEPTH_REF = 30
DEPTH_KAPPA = 0.03
PPL_BASE = 6.23
QUANT_DPPL = {"F32": 0.0, "F16": 0.0020, "BF16": 0.0, "Q8_0": 0.0026, "Q6_K": 0.0217,
              "Q5_K": 0.0569, "Q4_K": 0.1754, "Q4_0": 0.4685}
KV_PENALTY = {"f32": 0.0, "f16": 0.0, "int8": 0.005}
DEFAULT_TRAIN_TOKENS = 2e12   # SmolLM2-135M's pre-training budget (its model card: 2T tokens)


def chinchilla_loss(n_params: float, n_tokens: float) -> float:
    """E + A / N^alpha + B / D^beta with Hoffmann et al. 2022's fitted constants."""
    c = CHINCHILLA
    return c["E"] + c["A"] / n_params ** c["alpha"] + c["B"] / n_tokens ** c["beta"]


def depth_penalty(n_layers: int) -> float:
    """Heuristic (MobileLLM): DEPTH_KAPPA x ln(DEPTH_REF / n_layers) below DEPTH_REF layers."""
    return DEPTH_KAPPA * math.log(DEPTH_REF / n_layers) if n_layers < DEPTH_REF else 0.0


def quant_penalty(qtype: str) -> float:
    """ln(1 + dppl / PPL_BASE) from llama.cpp's Llama-3-8B table; KeyError-free: unknown
    qtypes get the Q4_0 figure (the worst listed)."""
    return math.log1p(QUANT_DPPL.get(qtype.upper(), QUANT_DPPL["Q4_0"]) / PPL_BASE)


def predicted_loss(c: Candidate, train_tokens: float = DEFAULT_TRAIN_TOKENS) -> float:
    """The quality proxy of a candidate in nats/token (lower is better)."""
    return (chinchilla_loss(c.params, train_tokens) + depth_penalty(c.n_layers)
            + quant_penalty(c.qtype) + KV_PENALTY[c.kv_dtype])
