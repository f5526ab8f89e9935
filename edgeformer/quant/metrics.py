"""Quantization quality metrics: tensor error and next-token distribution divergence.

`kl_divergence` and `top1_agreement` are the figures llama.cpp's
`perplexity --kl-divergence` reports ("Mean KLD", "Same top p"), computed here in float64
from full logits rather than from its compressed log-prob file.
"""
from __future__ import annotations

import numpy as np

from edgeformer.errors import InputError


def _pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"{what}: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        raise InputError(f"{what}: empty input")
    return a, b


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean squared difference of two same-shaped arrays, in float64."""
    a, b = _pair(a, b, "rmse")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def relative_rmse(ref: np.ndarray, test: np.ndarray) -> float:
    """rmse(ref, test) / rms(ref): scale-free quantization error (0 when equal; inf when
    ref is all zero and test is not)."""
    ref, test = _pair(ref, test, "relative_rmse")
    num = np.sqrt(np.mean((ref - test) ** 2))
    den = np.sqrt(np.mean(ref ** 2))
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def _positions(logits_ref: np.ndarray, logits_test: np.ndarray,
               what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten logits (..., vocab) -> (n_positions, vocab) float64."""
    ref, test = _pair(logits_ref, logits_test, what)
    if ref.ndim == 0:
        raise InputError(f"{what}: logits need a vocab axis, got a scalar")
    if np.isnan(ref).any() or np.isnan(test).any():
        raise InputError(f"{what}: logits contain NaN")
    v = ref.shape[-1]
    return ref.reshape(-1, v), test.reshape(-1, v)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis (max-subtracted; -inf logits stay -inf)."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    shifted = x - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def kl_divergence_per_position(logits_ref: np.ndarray, logits_test: np.ndarray) -> np.ndarray:
    """KL(p_ref || p_test) for each position: logits (..., vocab) -> (n_positions,) float64,
    with p = softmax(logits) in float64 and 0 * log 0 = 0. inf where p_test is 0 and
    p_ref is not. Raises InputError on shape mismatch, empty input or NaN logits."""
    ref, test = _positions(logits_ref, logits_test, "kl_divergence")
    lp, lq = log_softmax(ref), log_softmax(test)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):  # -inf - -inf where p == 0; masked out below
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return np.sum(terms, axis=-1)


def kl_divergence(logits_ref: np.ndarray, logits_test: np.ndarray) -> float:
    """Mean over positions of KL(p_ref || p_test) (llama.cpp's "Mean KLD"); see
    `kl_divergence_per_position` for the contract."""
    return float(np.mean(kl_divergence_per_position(logits_ref, logits_test)))


def top1_agreement(logits_ref: np.ndarray, logits_test: np.ndarray) -> float:
    """Fraction of positions whose argmax token is the same (ties -> the first index, as
    numpy and torch both break them); llama.cpp's "Same top p"."""
    ref, test = _positions(logits_ref, logits_test, "top1_agreement")
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(test, axis=-1)))
