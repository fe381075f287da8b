import math

import pytest
import torch

from hyperattn.plan import probe_key_mass, sample_keys, value_sq_norms


def test_uniform_shapes_and_weights():
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


def test_probe_key_mass_sums_each_probes_softmax_over_the_keys_it_sees():
    gen = torch.Generator().manual_seed(2)
    probes = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64)  # 2 query heads per kv head
    keys = torch.randn(2, 2, 7, 5, generator=gen, dtype=torch.float64)
    visible = torch.rand(2, 1, 3, 7, generator=gen) > 0.3
    visible[1, 0, 2] = False  # a probe that sees nothing adds nothing
    mass = probe_key_mass(probes, keys, 0.7, visible)
    expected = torch.zeros(2, 2, 7, dtype=torch.float64)
    for z in range(2):
        for h in range(4):
            for p in range(3):
                seen = visible[z, 0, p]
                if seen.any():
                    scores = (keys[z, h // 2] @ probes[z, h, p]) * 0.7
                    expected[z, h // 2, seen] += torch.softmax(scores[seen], 0)
    torch.testing.assert_close(mass, expected)


def test_masses_of_zero_are_never_drawn_and_weights_match():
    masses = torch.rand(1, 1, 30, dtype=torch.float64)
    masses[0, 0, :10] = 0
    idx, logw = sample_keys((1, 1), 30, 400, torch.Generator().manual_seed(3), masses=masses, dtype=torch.float64)
    assert idx.min() >= 10
    assert torch.allclose(logw, -torch.log(400 * (masses / masses.sum()).gather(-1, idx)))


def test_probe_key_mass_in_chunks_equals_one_pass(monkeypatch):
    import hyperattn.plan.sampling as sampling

    gen = torch.Generator().manual_seed(4)
    probes = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64)
    keys = torch.randn(2, 1, 23, 4, generator=gen, dtype=torch.float64)
    visible = torch.rand(2, 1, 5, 23, generator=gen) > 0.5
    whole = probe_key_mass(probes, keys, 0.5, visible)
    monkeypatch.setattr(sampling, "PROBE_CHUNK_ELEMENTS", 2 * 2 * 5 * 4)  # chunks of 4 keys
    torch.testing.assert_close(sampling.probe_key_mass(probes, keys, 0.5, visible), whole)
