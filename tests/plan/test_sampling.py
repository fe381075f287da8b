import math

import pytest
import torch

from hyperattn.plan import sample_keys, value_sq_norms


def test_uniform_shapes_and_weights():
    v = torch.randn(3, 2, 50, 4)
    idx, logw = sample_keys((3, 2), 50, 16, torch.Generator().manual_seed(0))
    assert idx.shape == logw.shape == (3, 2, 16) and idx.dtype == torch.int64
    assert idx.min() >= 0 and idx.max() < 50
    assert torch.allclose(logw, torch.full_like(logw, math.log(50 / 16)))


def test_zero_samples():
    idx, logw = sample_keys((1, 1), 5, 0, torch.Generator(), value_sq_norms(torch.randn(1, 1, 5, 2)))
    assert idx.shape == logw.shape == (1, 1, 0)


def test_value_norm_never_samples_zero_values_and_weights_match():
    v = torch.randn(1, 1, 40, 3, dtype=torch.float64)
    v[0, 0, ::3] = 0
    idx, logw = sample_keys((1, 1), 40, 500, torch.Generator().manual_seed(1), value_sq_norms(v), dtype=torch.float64)
    assert torch.all(idx % 3 != 0)
    probs = v.pow(2).sum(-1) / v.pow(2).sum()
    assert torch.allclose(logw, -torch.log(500 * probs.gather(-1, idx)))


def test_value_norm_all_zero_values_falls_back_to_uniform():
    v = torch.zeros(1, 1, 10, 3)
    idx, logw = sample_keys((1, 1), 10, 4, torch.Generator().manual_seed(0), value_sq_norms(v))
    assert torch.allclose(logw, torch.full_like(logw, math.log(10 / 4)))


@pytest.mark.parametrize("method", ["uniform", "value_norm"])
def test_sampled_term_is_unbiased(method):
    """E[sum_s w_s a_{j_s} v_{j_s}] = sum_j a_j v_j over a fixed set of 4000 seeds."""
    gen = torch.Generator().manual_seed(123)
    n, m = 60, 8
    v = torch.randn(1, 1, n, 3, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, n).view(1, 1, n, 1)
    a = torch.rand(n, generator=gen, dtype=torch.float64).exp()  # positive attention weights
    target = torch.cat([(a[:, None] * v[0, 0]).sum(0), a.sum().view(1)])
    estimates = []
    for seed in range(4000):
        norms = value_sq_norms(v) if method == "value_norm" else None
        idx, logw = sample_keys((1, 1), n, m, torch.Generator().manual_seed(seed), norms, dtype=torch.float64)
        w = logw.exp()[0, 0] * a[idx[0, 0]]
        estimates.append(torch.cat([(w[:, None] * v[0, 0, idx[0, 0]]).sum(0), w.sum().view(1)]))
    estimates = torch.stack(estimates)
    stderr = estimates.std(0) / math.sqrt(len(estimates))
    assert torch.all((estimates.mean(0) - target).abs() < 4 * stderr), (estimates.mean(0), target, stderr)
