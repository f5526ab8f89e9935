"""Quant metrics against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeformer.errors import InputError
from edgeformer.quant.metrics import (kl_divergence, kl_divergence_per_position, log_softmax,
                                      relative_rmse, rmse, top1_agreement)


def logits_pair(shape: tuple[int, ...], noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = (rng.standard_normal(shape) * 4).astype(np.float32)
    return ref, (ref + noise * rng.standard_normal(shape)).astype(np.float32)


def test_rmse_vs_torch():
    a, b = logits_pair((37, 65), 0.3, 0)
    want = torch.sqrt(F.mse_loss(torch.from_numpy(a).double(), torch.from_numpy(b).double()))
    assert rmse(a, b) == pytest.approx(want.item(), rel=1e-12)
    assert relative_rmse(a, b) == pytest.approx(
        want.item() / torch.from_numpy(a).double().pow(2).mean().sqrt().item(), rel=1e-12)
    assert rmse(a, a) == 0 and relative_rmse(np.zeros(3), np.zeros(3)) == 0


def test_log_softmax_vs_torch():
    x, _ = logits_pair((5, 1000), 0, 1)
    x[0, :10] = -np.inf
    x[1] += 1e4  # large logits: must subtract the max
    want = torch.log_softmax(torch.from_numpy(x).double(), dim=-1).numpy()
    np.testing.assert_allclose(log_softmax(x), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(1, 50), (33, 301), (2, 3, 128)])
def test_kl_divergence_vs_torch(shape):
    ref, test = logits_pair(shape, 0.5, sum(shape))
    r = torch.from_numpy(ref).double().reshape(-1, shape[-1])
    t = torch.from_numpy(test).double().reshape(-1, shape[-1])
    # KL(p_ref || p_test) = sum p_ref (log p_ref - log p_test), batchmean = mean over rows
    want_rows = F.kl_div(torch.log_softmax(t, -1), torch.log_softmax(r, -1), log_target=True,
                         reduction="none").sum(-1)
    np.testing.assert_allclose(kl_divergence_per_position(ref, test), want_rows.numpy(),
                               rtol=1e-10, atol=1e-15)
    want = F.kl_div(torch.log_softmax(t, -1), torch.log_softmax(r, -1), log_target=True,
                    reduction="batchmean")
    assert kl_divergence(ref, test) == pytest.approx(want.item(), rel=1e-10)
    assert kl_divergence(ref, ref) == pytest.approx(0.0, abs=1e-15)


def test_kl_masked_vocab():
    ref, test = logits_pair((4, 64), 0.2, 3)
    ref[:, :8] = -np.inf  # p_ref = 0 there: contributes 0, not NaN
    kl = kl_divergence_per_position(ref, test)
    assert np.isfinite(kl).all() and (kl > 0).all()
    test[0, 20] = -np.inf  # p_test = 0 where p_ref > 0: infinite divergence
    assert kl_divergence_per_position(ref, test)[0] == np.inf


def test_top1_agreement_vs_torch():
    ref, test = logits_pair((500, 40), 1.0, 4)
    want = (torch.from_numpy(ref).argmax(-1) == torch.from_numpy(test).argmax(-1)).double().mean()
    got = top1_agreement(ref, test)
    assert got == pytest.approx(want.item()) and 0.2 < got < 0.95
    assert top1_agreement(ref, ref) == 1.0


def test_bad_inputs():
    with pytest.raises(InputError, match="shapes differ"):
        kl_divergence(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(InputError, match="NaN"):
        top1_agreement(np.full((1, 4), np.nan), np.zeros((1, 4)))
    with pytest.raises(InputError, match="empty"):
        rmse(np.zeros(0), np.zeros(0))
