import math

import pytest
import torch

from hyperattn.plan import Rows, probe_key_mass, sample_keys, value_sq_norms


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


def _probe_case(seed, dtype=torch.float64):
    """Probes of 2 rectangles (count 2, batch 2, 2 query heads per kv head) over strided key rows."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 2, 40, 5, generator=gen, dtype=dtype)
    probes = torch.randn(4, 4, 3, 5, generator=gen, dtype=dtype)
    keys = Rows(start=4, stride=13, length=11)  # rectangle r reads key rows 4 + 13 r + [0, 11)
    probe_pos = torch.tensor([[9, 14, 2], [30, 20, 16]])  # probe 2 of rectangle 0 sees no key
    return probes, k, keys, probe_pos


@pytest.mark.parametrize("causal", [True, False])
def test_probe_key_mass_sums_each_probes_softmax_over_the_keys_it_sees(causal):
    probes, k, keys, probe_pos = _probe_case(2)
    sinks = 6
    mass = probe_key_mass(probes, k, keys, 2, 0.7, probe_pos if causal else None, sinks)
    expected = torch.zeros(4, 2, 11, dtype=torch.float64)
    for z in range(4):
        batch, r = divmod(z, 2)
        rows = torch.arange(11) + 4 + 13 * r
        for h in range(4):
            for p in range(3):
                seen = (rows >= sinks) & ((rows <= probe_pos[r, p]) if causal else True)
                if seen.any():
                    scores = (k[batch, h // 2, rows] @ probes[z, h, p]) * 0.7
                    expected[z, h // 2, seen] += torch.softmax(scores[seen], 0)
    torch.testing.assert_close(mass, expected)
    assert (mass[0::2, :, :2] == 0).all() and (mass[0::2, :, 2:] > 0).any()  # rectangle 0's sinks: rows 4, 5


def test_masses_of_zero_are_never_drawn_and_weights_match():
    masses = torch.rand(1, 1, 30, dtype=torch.float64)
    masses[0, 0, :10] = 0
    idx, logw = sample_keys((1, 1), 30, 400, torch.Generator().manual_seed(3), masses=masses, dtype=torch.float64)
    assert idx.min() >= 10
    assert torch.allclose(logw, -torch.log(400 * (masses / masses.sum()).gather(-1, idx)))


@pytest.mark.parametrize("norm_keys", [4, 7, 11, 30])
def test_probe_key_mass_normalizes_each_probe_over_the_last_norm_keys(norm_keys):
    """With norm_keys, each probe's weights are its scores' exp less the log-sum-exp over the keys it
    sees among its problem's last norm_keys (all of them from 11 on), capped at 2**64."""
    probes, k, keys, probe_pos = _probe_case(3)
    sinks = 2
    mass = probe_key_mass(probes, k, keys, 2, 0.7, probe_pos, sinks, norm_keys)
    expected = torch.zeros(4, 2, 11, dtype=torch.float64)
    for z in range(4):
        batch, r = divmod(z, 2)
        rows = torch.arange(11) + 4 + 13 * r
        near = torch.arange(11) >= 11 - norm_keys
        for h in range(4):
            for p in range(3):
                seen = (rows >= sinks) & (rows <= probe_pos[r, p])
                if (seen & near).any():
                    scores = (k[batch, h // 2, rows] @ probes[z, h, p]) * 0.7
                    lse = torch.logsumexp(scores[seen & near], 0)
                    expected[z, h // 2, seen] += torch.exp((scores[seen] - lse).clamp_max(64 * math.log(2)))
    torch.testing.assert_close(mass, expected)
    if norm_keys >= 11:
        torch.testing.assert_close(mass, probe_key_mass(probes, k, keys, 2, 0.7, probe_pos, sinks))


def test_probe_key_mass_caps_a_probes_weight_on_a_key():
    """A key scoring far above the keys that normalize a probe adds 2**64, not inf."""
    probes, k, keys, probe_pos = _probe_case(3)
    k = k.clone()
    k[:, :, 4 + 3] = probes[0, 0, 0] * 1e3  # rectangle 0's key 3: far above its last 4 keys for that probe
    mass = probe_key_mass(probes, k, keys, 2, 0.7, probe_pos, 0, 4)
    assert torch.isfinite(mass).all() and 0.99 * 2.0 ** 64 <= mass.max() <= 3 * 2.0 ** 64


def test_probe_key_mass_in_chunks_equals_one_pass(monkeypatch):
    import hyperattn.plan.sampling as sampling

    probes, k, keys, probe_pos = _probe_case(4)
    whole = probe_key_mass(probes, k, keys, 2, 0.5, probe_pos, 3)
    monkeypatch.setattr(sampling, "PROBE_CHUNK_ELEMENTS", 4 * 4 * 3 * 4)  # chunks of 4 keys
    torch.testing.assert_close(sampling.probe_key_mass(probes, k, keys, 2, 0.5, probe_pos, 3), whole)
