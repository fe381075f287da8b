import dataclasses

import pytest
import torch

from hyperattn import HyperAttention, HyperAttentionConfig, exact_attention, hyper_attention
from hyperattn.bench.inputs import clustered_qkv
from hyperattn.config import PAPER_OVERRIDES
from hyperattn.plan import causal_schedule
from tests.conftest import random_qkv

# The paper's algorithm at toy sizes (the default exact tail of 64 queries would cover them)
PAPER = PAPER_OVERRIDES  # short name for the parametrizations below
SMALL = HyperAttentionConfig(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8, **PAPER)


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


# --- exactness limits -------------------------------------------------------------------

@pytest.mark.parametrize("causal,nq,nk", [(c, nq, nk) for c in (False, True)
                                           for nq, nk in [(40, 40), (40, 57), (1, 1), (5, 3)] if not c or nq <= nk])
def test_exact_at_or_below_min_seq_len(causal, nq, nk):
    q, k, v = random_qkv(hq=4, hkv=2, nq=nq, nk=nk, d=8)
    cfg = HyperAttentionConfig(block_size=2, sample_size=3, exact_up_to=0, min_seq_len=nq)
    out, lse = hyper_attention(q, k, v, causal=causal, config=cfg, seed=0, return_lse=True)
    ref, ref_lse = exact_attention(q, k, v, causal=causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-13, atol=1e-13)
    for out_only in (hyper_attention(q, k, v, causal=causal, config=cfg, seed=0),
                     exact_attention(q, k, v, causal=causal)):
        torch.testing.assert_close(out_only, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("causal,nq,nk", [(c, nq, nk) for c in (False, True)
                                           for nq, nk in [(100, 100), (77, 77), (64, 150), (150, 64)]
                                           if not c or nq <= nk])
def test_exact_with_one_block_and_no_samples(causal, nq, nk):
    """block_size >= Nk, sample_size = 0: the whole causal schedule (head, leaves, levels,
    prefix and merges) must reproduce exact attention."""
    q, k, v = random_qkv(batch=2, hq=4, hkv=2, nq=nq, nk=nk, d=8, dv=6)
    cfg = HyperAttentionConfig(block_size=nk, sample_size=0, exact_up_to=0, min_seq_len=8)
    out, lse = hyper_attention(q, k, v, causal=causal, config=cfg, seed=1, return_lse=True)
    ref, ref_lse = exact_attention(q, k, v, causal=causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_inputs_within_exact_up_to_are_exact(causal):
    """40 queries are above min_seq_len but cheaper than causal attention over exact_up_to=64
    tokens (1600 <= 2080 pairs), so they run exactly; exact_up_to=8 approximates them."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=40, nk=40, d=8)
    small = dict(block_size=4, sample_size=4, lsh_num_projs=3, min_seq_len=8, **PAPER)
    ref = exact_attention(q, k, v, causal=causal)
    exact = hyper_attention(q, k, v, causal=causal, seed=0, config=HyperAttentionConfig(exact_up_to=64, **small))
    torch.testing.assert_close(exact, ref, rtol=1e-13, atol=1e-13)
    approx = hyper_attention(q, k, v, causal=causal, seed=0, config=HyperAttentionConfig(exact_up_to=8, **small))
    assert rel_error(approx, ref) > 1e-3


def test_approximation_is_active_above_min_seq_len():
    q, k, v = random_qkv(nq=64)
    assert rel_error(hyper_attention(q, k, v, causal=True, config=SMALL, seed=0),
                     exact_attention(q, k, v, causal=True)) > 1e-3


# --- exact sinks and window ---------------------------------------------------------------

@pytest.mark.parametrize("causal,nq,nk", [(True, 100, 100), (True, 77, 77), (True, 64, 64), (True, 64, 150),
                                           (False, 64, 150), (False, 90, 33)])  # 64 causal: no head, no prefix
def test_a_window_or_non_causal_sinks_covering_every_key_is_exact(causal, nq, nk):
    q, k, v = random_qkv(batch=2, hq=4, hkv=2, nq=nq, nk=nk, d=8)
    extra = dict(exact_window=10**6, exact_sinks=0) if causal else dict(exact_sinks=10**6)
    cfg = HyperAttentionConfig(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8, exact_tail=0,
                               **extra)
    out, lse = hyper_attention(q, k, v, causal=causal, config=cfg, seed=1, return_lse=True)
    ref, ref_lse = exact_attention(q, k, v, causal=causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nq,nk", [(100, 100), (64, 150)])
def test_causal_sinks_stop_before_the_second_leaf(nq, nk):
    """Sinks are capped at the keys before the second diagonal leaf: any larger value gives the cap's result."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, d=8)
    base = dict(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8, exact_tail=0)
    schedule = causal_schedule(nq, nk, 8)
    cap = schedule.prefix_len + schedule.head_len + schedule.leaf_len
    outs = [hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(**base, exact_sinks=sinks), seed=1)
            for sinks in (cap, cap + 1, 10**6)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def causal_errors(q, k, v, base: dict, **extra) -> tuple[float, float]:
    """Relative errors against exact causal attention: with ``base`` alone, and with ``extra`` over it."""
    ref = exact_attention(q, k, v, causal=True)
    return tuple(rel_error(hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(**{**base, **more}),
                                           seed=2), ref) for more in ({}, extra))


@pytest.mark.parametrize("nq,nk", [(96, 96), (70, 101)])
def test_dominant_sinks_are_computed_exactly(nq, nk):
    """When every query attends mostly to the first keys, sampling them is the large error;
    computing them exactly removes most of it."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, d=8, seed=4)
    q, k = q.clone(), k.clone()
    q[..., 0], k[..., 0] = 3.0, 0.0
    k[:, :, :4, 0] = 3.0  # scores of the 4 sink keys: about 9 / sqrt(8) above the rest
    plain, sinks = causal_errors(q, k, v, dict(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0,
                                               min_seq_len=8, **PAPER), exact_sinks=4)
    assert sinks < 0.5 * plain


def test_window_keeps_the_keys_before_a_leaf_exact():
    """Scores that fall with distance: the window makes the recent keys before each diagonal
    leaf exact, and the error drops."""
    nq = nk = 128
    positions = torch.arange(nq, dtype=torch.float64)
    freqs = torch.tensor([0.02, 0.05, 0.11, 0.23], dtype=torch.float64)
    angles = positions[:, None] * freqs
    features = torch.cat((angles.cos(), angles.sin()), -1) * 2.5  # q_i . k_j = 6.25 sum cos(f (i - j))
    q = features.expand(1, 2, nq, 8).contiguous()
    k = features.expand(1, 1, nk, 8).contiguous()
    v = torch.randn(1, 1, nk, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain, window = causal_errors(q, k, v, dict(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0,
                                                min_seq_len=16, **PAPER), exact_window=8)
    assert window < 0.5 * plain


def test_the_window_is_causal_only():
    q, k, v = random_qkv(nq=40, d=4)
    with pytest.raises(ValueError, match="applies to causal attention"):
        hyper_attention(q, k, v, causal=False,
                        config=HyperAttentionConfig(exact_up_to=0, min_seq_len=8, exact_window=2))


# --- causality --------------------------------------------------------------------------

@pytest.mark.parametrize("sampling,extra", [("uniform", {}), ("value_norm", {}),
                                            ("uniform", dict(exact_sinks=3, exact_window=5)),
                                            ("mass", dict(heavy_keys=3, probe_queries=4, exact_sinks=2))])
@pytest.mark.parametrize("nq,nk", [(96, 96), (83, 83), (70, 101)])
def test_future_keys_and_values_do_not_leak(sampling, extra, nq, nk):
    cfg = HyperAttentionConfig(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8,
                               sampling=sampling, **extra)
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk)
    out = hyper_attention(q, k, v, causal=True, config=cfg, seed=3)
    for t in (0, 9, nq // 2, nq - 2):
        last_key = nk - nq + t  # keys after the position of query t
        k2, v2 = k.clone(), v.clone()
        k2[:, :, last_key + 1:] = torch.randn_like(k2[:, :, last_key + 1:]) * 5
        v2[:, :, last_key + 1:] = torch.randn_like(v2[:, :, last_key + 1:]) * 5
        out2 = hyper_attention(q, k2, v2, causal=True, config=cfg, seed=3)
        torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], rtol=0, atol=1e-14)
        assert not torch.allclose(out2[:, :, t + 1:], out[:, :, t + 1:])


def perturbed_after(x, position, seed):
    """x with every row after ``position`` (dim 2) replaced by fresh values."""
    y = x.clone()
    y[:, :, position + 1:] = torch.randn(y[:, :, position + 1:].shape, generator=torch.Generator().manual_seed(seed),
                                         dtype=y.dtype) * 3
    return y


@pytest.mark.parametrize("extra", [dict(**PAPER), dict(exact_sinks=3, exact_tail=5), dict(sampling="value_norm"),
                                   dict(sampling="mass", heavy_keys=3, probe_queries=4, exact_window=4)])
@pytest.mark.parametrize("nq,nk", [(96, 96), (83, 83), (70, 101)])
def test_bucket_blocks_are_strictly_causal(extra, nq, nk):
    """With query_blocks='bucket' or 'centroid', output i depends on no input after i, queries included: changing
    every q, k and v row after a position leaves the outputs up to it as they were, up to the last
    bit of float64 products (the reference batches them in a padded layout whose shape follows the
    data); the paper's rank rule does not (a query's block depends on the later queries of its
    rectangle)."""
    base = dict(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8, **extra)
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, seed=5)
    changed = {}
    for rule in ("bucket", "centroid", "rank"):
        cfg = HyperAttentionConfig(**{**base, "query_blocks": rule})
        out = hyper_attention(q, k, v, causal=True, config=cfg, seed=3)
        changed[rule] = 0
        for t in range(9, nq - 6, 8):
            key_pos = nk - nq + t
            q2 = perturbed_after(q, t, seed=t)
            k2, v2 = perturbed_after(k, key_pos, seed=t + 1), perturbed_after(v, key_pos, seed=t + 2)
            out2 = hyper_attention(q2, k2, v2, causal=True, config=cfg, seed=3)
            changed[rule] += int(((out2[:, :, :t + 1] - out[:, :, :t + 1]).abs() > 1e-14).any(-1).sum())
            assert not torch.allclose(out2[:, :, t + 1:], out[:, :, t + 1:])
    assert changed["bucket"] == 0 and changed["centroid"] == 0
    if extra == PAPER:
        assert changed["rank"] > 0, "the test would not see a leak"


@pytest.mark.parametrize("extra", [dict(sample_size=0, heavy_keys=3, probe_queries=4, exact_sinks=0, exact_tail=0),
                                   dict(sample_size=0, heavy_keys=3, probe_queries=4, exact_sinks=0, exact_tail=0,
                                        selection_coarse_size=6),
                                   dict(sample_size=0, heavy_keys=3, probe_queries=4, exact_sinks=0, exact_tail=0,
                                        selection_tile=16),
                                   dict(sample_size=4, sampling="mass", heavy_keys=3, probe_queries=4, exact_sinks=2,
                                        exact_window=4, exact_tail=5)])
@pytest.mark.parametrize("nq,nk", [(96, 96), (70, 101)])
def test_selected_blocks_are_strictly_causal(extra, nq, nk):
    """A query's selected blocks depend on its own vector and the keys of its rectangles: changing
    every q, k and v row after a position leaves the outputs up to it as they were."""
    cfg = HyperAttentionConfig(block_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8, selected_blocks=2,
                               selected_block_size=3, **extra)
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, seed=5)
    out = hyper_attention(q, k, v, causal=True, config=cfg, seed=3)
    assert rel_error(out, exact_attention(q, k, v, causal=True)) > 1e-3
    for t in range(9, nq - 6, 8):
        key_pos = nk - nq + t
        q2 = perturbed_after(q, t, seed=t)
        k2, v2 = perturbed_after(k, key_pos, seed=t + 1), perturbed_after(v, key_pos, seed=t + 2)
        out2 = hyper_attention(q2, k2, v2, causal=True, config=cfg, seed=3)
        assert ((out2[:, :, :t + 1] - out[:, :, :t + 1]).abs() <= 1e-14).all()
        assert not torch.allclose(out2[:, :, t + 1:], out[:, :, t + 1:])


def test_the_default_config_is_strictly_causal():
    """The library's default (sinks, tail and all) forced to approximate small inputs: changing
    every q, k and v row after a position leaves the outputs up to it as they were."""
    cfg = HyperAttentionConfig(block_size=4, sample_size=4, lsh_num_projs=3, min_seq_len=8, exact_up_to=0,
                               exact_sinks=2, exact_tail=3)
    q, k, v = random_qkv(hq=4, hkv=2, nq=80, seed=7)
    out = hyper_attention(q, k, v, causal=True, config=cfg, seed=1)
    for t in (12, 40, 65):
        q2, k2, v2 = (perturbed_after(x, t, seed=t + i) for i, x in enumerate((q, k, v)))
        out2 = hyper_attention(q2, k2, v2, causal=True, config=cfg, seed=1)
        assert ((out2[:, :, :t + 1] - out[:, :, :t + 1]).abs() <= 1e-14).all()
        assert not torch.allclose(out2[:, :, t + 1:], out[:, :, t + 1:])


def test_chunked_prefill_rows_match_full_causal_when_exact():
    q, k, v = random_qkv(hq=2, hkv=2, nq=90)
    cfg = HyperAttentionConfig(block_size=90, sample_size=0, exact_up_to=0, min_seq_len=8)
    full = hyper_attention(q, k, v, causal=True, config=cfg, seed=0)
    chunk = hyper_attention(q[:, :, 60:], k, v, causal=True, config=cfg, seed=0)
    torch.testing.assert_close(chunk, full[:, :, 60:], rtol=1e-12, atol=1e-12)


# --- GQA, seeds, dtypes -----------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_gqa_matches_repeated_kv_where_exact(causal):
    q, k, v = random_qkv(batch=2, hq=6, hkv=2, nq=50, d=8)
    cfg = HyperAttentionConfig(block_size=50, sample_size=0, exact_up_to=0, min_seq_len=8)
    got = hyper_attention(q, k, v, causal=causal, config=cfg, seed=0)
    want = hyper_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), causal=causal, config=cfg, seed=0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_mqa_runs_with_the_approximation():
    q, k, v = random_qkv(batch=1, hq=4, hkv=1, nq=64)
    out = hyper_attention(q, k, v, causal=True, config=SMALL, seed=0)
    assert out.shape == (1, 4, 64, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sampling", ["uniform", "value_norm"])
def test_same_seed_same_bits_other_seed_other_result(causal, sampling):
    cfg = HyperAttentionConfig(block_size=4, sample_size=4, exact_up_to=0, min_seq_len=8, sampling=sampling,
                               exact_tail=8)
    q, k, v = random_qkv(hq=2, nq=64, dtype=torch.float32)
    a = hyper_attention(q, k, v, causal=causal, config=cfg, seed=11)
    b = hyper_attention(q, k, v, causal=causal, config=cfg, seed=11)
    c = hyper_attention(q, k, v, causal=causal, config=cfg, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("extra", [dict(sampling="uniform"), dict(sampling="value_norm"),
                                   dict(sampling="mass", heavy_keys=4, probe_queries=4, exact_sinks=2),
                                   dict(selected_blocks=2, selected_block_size=4, sample_size=3, heavy_keys=2,
                                        probe_queries=4, exact_sinks=0)])
def test_head_shards_return_the_whole_calls_heads(causal, extra):
    cfg = HyperAttentionConfig(**{**dict(block_size=4, sample_size=4, exact_up_to=0, min_seq_len=8, exact_tail=4),
                                  **extra})
    q, k, v = random_qkv(batch=2, hq=8, hkv=4, nq=64)
    whole, whole_lse = hyper_attention(q, k, v, causal=causal, config=cfg, seed=5, return_lse=True)
    for first, width in [(0, 1), (1, 2), (3, 1), (0, 4)]:
        out, lse = hyper_attention(q[:, 2 * first:2 * (first + width)], k[:, first:first + width],
                                   v[:, first:first + width], causal=causal, config=cfg, seed=5,
                                   head_shard=(first, 4), return_lse=True)
        torch.testing.assert_close(out, whole[:, 2 * first:2 * (first + width)], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(lse, whole_lse[:, 2 * first:2 * (first + width)], rtol=1e-13, atol=1e-13)
    alone = hyper_attention(q[:, 2:4], k[:, 1:2], v[:, 1:2], causal=causal, config=cfg, seed=5)
    assert not torch.equal(alone, whole[:, 2:4])  # without the shard, a head draws as head 0 of 1


def test_seed_none_follows_torch_manual_seed():
    q, k, v = random_qkv(nq=64)
    torch.manual_seed(0)
    a = hyper_attention(q, k, v, config=SMALL)
    torch.manual_seed(0)
    b = hyper_attention(q, k, v, config=SMALL)
    c = hyper_attention(q, k, v, config=SMALL)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_inputs_follow_the_float64_result(dtype, causal):
    q, k, v = random_qkv(hq=2, nq=64)
    want, want_lse = hyper_attention(q, k, v, causal=causal, config=SMALL, seed=0, return_lse=True)
    got, lse = hyper_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal, config=SMALL, seed=0,
                               return_lse=True)
    assert got.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (1, 2, 64)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert rel_error(got.double(), want) < tol
    assert (lse.double() - want_lse).abs().max() < 10 * tol


# --- exact tail ---------------------------------------------------------------------------

@pytest.mark.parametrize("causal,nq,nk", [(True, 64, 64), (True, 77, 77), (True, 50, 90), (False, 70, 45)])
def test_exact_tail_rows_are_exact_and_the_rest_unchanged(causal, nq, nk):
    q, k, v = random_qkv(batch=2, hq=4, hkv=2, nq=nq, nk=nk, d=8)
    plain, plain_lse = hyper_attention(q, k, v, causal=causal, config=SMALL, seed=3, return_lse=True)
    cfg = dataclasses.replace(SMALL, exact_tail=10)
    out, lse = hyper_attention(q, k, v, causal=causal, config=cfg, seed=3, return_lse=True)
    ref, ref_lse = exact_attention(q, k, v, causal=causal, return_lse=True)
    torch.testing.assert_close(out[:, :, -10:], ref[:, :, -10:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse[:, :, -10:], ref_lse[:, :, -10:], rtol=1e-12, atol=1e-12)
    assert torch.equal(out[:, :, :-10], plain[:, :, :-10]) and torch.equal(lse[:, :, :-10], plain_lse[:, :, :-10])
    assert rel_error(plain[:, :, -10:], ref[:, :, -10:]) > 1e-3  # the approximation was active there


def test_exact_tail_longer_than_the_queries_is_exact():
    q, k, v = random_qkv(hq=2, hkv=1, nq=40, nk=40, d=8)
    cfg = HyperAttentionConfig(block_size=4, sample_size=4, lsh_num_projs=3, exact_up_to=0, min_seq_len=8,
                               exact_tail=100)
    torch.testing.assert_close(hyper_attention(q, k, v, causal=True, config=cfg, seed=0),
                               exact_attention(q, k, v, causal=True), rtol=1e-12, atol=1e-12)


# --- gradients --------------------------------------------------------------------------

@pytest.mark.parametrize("causal,extra", [(False, PAPER), (True, PAPER), (True, dict(exact_sinks=2, exact_window=3)),
                                          (True, dict(exact_sinks=0, exact_tail=7)), (False, dict(exact_tail=3)),
                                          (False, dict(exact_sinks=5, exact_tail=0)),
                                          (True, dict(heavy_keys=3, probe_queries=3)),
                                          (False, dict(heavy_keys=3, exact_sinks=2)),
                                          (True, dict(selected_blocks=2, selected_block_size=3, heavy_keys=2,
                                                      exact_sinks=2, exact_window=3)),
                                          (False, dict(selected_blocks=2, exact_sinks=2))])
@pytest.mark.parametrize("nq,nk", [(40, 40), (29, 45)])
def test_gradcheck_with_the_approximation_active(causal, extra, nq, nk):
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, d=4, requires_grad=True, seed=5)
    cfg = HyperAttentionConfig(block_size=4, sample_size=5, lsh_num_projs=3, exact_up_to=0, min_seq_len=6,
                               **{"exact_tail": 0, **extra})
    approx = hyper_attention(q, k, v, causal=causal, config=cfg, seed=2)
    assert rel_error(approx, exact_attention(q, k, v, causal=causal)) > 1e-3

    def fn(q, k, v):
        return hyper_attention(q, k, v, causal=causal, config=cfg, seed=2, return_lse=True)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_lse_gradient_is_not_detached():
    """A loss on out alone: its gradient must differ from one that ignores the lse paths."""
    q, k, v = random_qkv(nq=48, d=4, requires_grad=True, seed=6)
    out = hyper_attention(q, k, v, causal=True, config=SMALL, seed=0)
    (grad_q,) = torch.autograd.grad(out.square().sum(), q)
    step = 1e-6
    dq = torch.randn_like(q)
    plus = hyper_attention(q + step * dq, k, v, causal=True, config=SMALL, seed=0).square().sum()
    minus = hyper_attention(q - step * dq, k, v, causal=True, config=SMALL, seed=0).square().sum()
    torch.testing.assert_close((grad_q * dq).sum(), (plus - minus) / (2 * step), rtol=1e-6, atol=1e-8)


# --- structured inputs ------------------------------------------------------------------

def uniform_sampling_attention(q, k, v, num_keys, scale, seed):
    """Each query attends to num_keys keys drawn uniformly (with replacement), weighted Nk/num_keys."""
    gen = torch.Generator().manual_seed(seed)
    nq, nk = q.shape[2], k.shape[2]
    idx = torch.randint(nk, (nq, num_keys), generator=gen)
    scores = torch.einsum("qd,qsd->qs", q[0, 0], k[0, 0][idx]) * scale
    probs = torch.softmax(scores, -1)
    return torch.einsum("qs,qsd->qd", probs, v[0, 0][idx]).view(1, 1, nq, -1)


def test_clustered_inputs_beat_uniform_sampling_of_the_same_budget():
    """128 tight clusters of 8: each row of A puts its mass on the 8 keys of its cluster."""
    q, k, v = clustered_qkv(seq_len=1024, head_dim=16, num_clusters=128, spread=0.001, norm=8.0)
    scale = 16 ** -0.5
    cfg = HyperAttentionConfig(block_size=32, sample_size=32, lsh_num_projs=10, exact_up_to=0, min_seq_len=64)
    exact = exact_attention(q, k, v, scale=scale)
    hyper_errors = [rel_error(hyper_attention(q, k, v, scale=scale, config=cfg, seed=s), exact) for s in range(3)]
    uniform_errors = [rel_error(uniform_sampling_attention(q, k, v, 64, scale, s), exact) for s in range(3)]
    assert max(hyper_errors) < 0.5 * min(uniform_errors), (hyper_errors, uniform_errors)


@pytest.mark.parametrize("causal", [False, True])
def test_heavy_keys_covering_every_key_are_exact(causal):
    q, k, v = random_qkv(hq=2, hkv=1, nq=96, d=8, seed=7)
    cfg = HyperAttentionConfig(block_size=4, sample_size=0, heavy_keys=96, exact_up_to=0, min_seq_len=8,
                               exact_sinks=0, exact_tail=0)
    out = hyper_attention(q, k, v, causal=causal, config=cfg, seed=0)
    torch.testing.assert_close(out, exact_attention(q, k, v, causal=causal), rtol=0, atol=1e-12)


def vertical_qkv(seq_len, head_dim, columns, boost, seed):
    """Gaussian q, k, v whose keys at ``columns`` align with a direction every query shares, so
    every query puts much of its mass on them (the "vertical lines" of LM attention)."""
    q, k, v = random_qkv(hq=1, hkv=1, nq=seq_len, d=head_dim, seed=seed)
    shared = torch.randn(head_dim, generator=torch.Generator().manual_seed(seed + 1), dtype=q.dtype)
    q = q + shared
    k[:, :, columns] += boost * shared / shared.norm()
    return q, k, v


def test_heavy_keys_catch_the_columns_every_query_attends_to():
    """A few keys that every query attends to heavily: the probes find them and every query then
    attends to them exactly; uniform samples and LSH blocks of the same budget miss most."""
    n, columns = 1024, torch.tensor([40, 300, 301, 555, 700, 701, 702, 900])
    q, k, v = vertical_qkv(n, 16, columns, boost=6.0, seed=8)
    exact = exact_attention(q, k, v, causal=True)
    base = dict(block_size=16, min_seq_len=128, exact_up_to=0, exact_sinks=0, exact_tail=0)
    plain = HyperAttentionConfig(sample_size=32, **base)
    heavy = HyperAttentionConfig(sample_size=0, heavy_keys=32, **base)
    plain_errors = [rel_error(hyper_attention(q, k, v, causal=True, config=plain, seed=s), exact) for s in range(3)]
    heavy_errors = [rel_error(hyper_attention(q, k, v, causal=True, config=heavy, seed=s), exact) for s in range(3)]
    assert max(heavy_errors) < 0.5 * min(plain_errors), (heavy_errors, plain_errors)


# --- shapes and bad input ---------------------------------------------------------------

@pytest.mark.parametrize("shapes", [((0, 2, 5, 4), (0, 1, 5, 4)), ((1, 2, 0, 4), (1, 1, 5, 4)),
                                    ((1, 2, 0, 4), (1, 1, 0, 4)), ((1, 2, 5, 4), (1, 1, 0, 4))])
def test_zero_length_returns_empty(shapes):
    (qs, ks) = shapes
    q, k, v = torch.randn(qs), torch.randn(ks), torch.randn(*ks[:3], 3)
    out, lse = hyper_attention(q, k, v, config=SMALL, seed=0, return_lse=True)
    assert out.shape == (*qs[:3], 3) and lse.shape == qs[:3]
    assert torch.all(out == 0) and torch.all(lse == -torch.inf)
    if qs[2] == 0:
        assert hyper_attention(q, k, v, causal=True, seed=0).shape == (*qs[:3], 3)


def _qkv():
    return random_qkv(hq=4, hkv=2, nq=16, d=8, dtype=torch.float32)


@pytest.mark.parametrize(
    "mutate,kwargs,error,match",
    [
        (lambda q, k, v: (q[0], k, v), {}, ValueError, "q must have 4 dims"),
        (lambda q, k, v: (q, k.unsqueeze(0), v), {}, ValueError, "k must have 4 dims"),
        (lambda q, k, v: (q, k, v.numpy()), {}, TypeError, "v must be a torch.Tensor"),
        (lambda q, k, v: (q, k.repeat(2, 1, 1, 1), v), {}, ValueError, "batch size"),
        (lambda q, k, v: (q, k, v[:, :1]), {}, ValueError, "k and v must agree"),
        (lambda q, k, v: (q, k, v[:, :, :5]), {}, ValueError, "k and v must agree"),
        (lambda q, k, v: (q[..., :4], k, v), {}, ValueError, "head_dim"),
        (lambda q, k, v: (q[:, :3], k, v), {}, ValueError, "multiple of"),
        (lambda q, k, v: (q.long(), k, v), {}, TypeError, "q must have a floating dtype"),
        (lambda q, k, v: (q, k.double(), v), {}, TypeError, "one dtype"),
        (lambda q, k, v: (q, k, v.to("meta")), {}, ValueError, "one device"),
        (lambda q, k, v: (q, k[:, :, :10], v[:, :, :10]), dict(causal=True), ValueError, "causal"),
        (lambda q, k, v: (q, k, v), dict(causal=1), TypeError, "causal must be a bool"),
        (lambda q, k, v: (q, k, v), dict(scale=0.0), ValueError, "scale"),
        (lambda q, k, v: (q, k, v), dict(scale=float("nan")), ValueError, "scale"),
        (lambda q, k, v: (q, k, v), dict(config={"block_size": 4}), TypeError, "config"),
        (lambda q, k, v: (q, k, v), dict(seed=1.5), TypeError, "seed"),
        (lambda q, k, v: (q, k, v), dict(seed=2**70), ValueError, "seed"),
        (lambda q, k, v: (q, k, v), dict(head_shard=[0, 2]), TypeError, "head_shard"),
        (lambda q, k, v: (q, k, v), dict(head_shard=(1, 1)), ValueError, "head_shard"),
        (lambda q, k, v: (q, k, v), dict(head_shard=(-1, 4)), ValueError, "head_shard"),
    ],
)
def test_bad_input_is_named(mutate, kwargs, error, match):
    q, k, v = mutate(*_qkv())
    with pytest.raises(error, match=match):
        hyper_attention(q, k, v, **kwargs)
    if not {"config", "seed", "head_shard"} & kwargs.keys():
        with pytest.raises(error, match=match):
            exact_attention(q, k, v, **kwargs)


def test_a_transposed_layout_gets_a_hint():
    """(batch, seq_len, heads, head_dim) tensors, as a model's projections give them before the
    transpose: the error, or a warning where the call would run, names the fix."""
    q, k, v = (x.transpose(1, 2) for x in random_qkv(hq=4, hkv=4, nq=40, nk=30, d=8))
    with pytest.raises(ValueError, match=r"transpose\(1, 2\)"):
        hyper_attention(q, k, v, causal=True)
    q, k, v = (torch.zeros(1, 600, 2, 4) for _ in range(3))  # 600 "heads" of 2 positions
    with pytest.warns(UserWarning, match=r"600 heads.*transpose\(1, 2\)"):
        hyper_attention(q, k, v)


@pytest.mark.parametrize("causal,nq,nk,cfg,return_lse,path,executor", [
    (True, 40, 40, SMALL, False, "approximate", "reference"),
    (True, 8, 40, SMALL, False, "exact", "sdpa"),
    (True, 8, 40, SMALL, True, "exact", "reference"),
    (False, 40, 40, HyperAttentionConfig(min_seq_len=8), False, "exact", "sdpa"),  # within exact_up_to
    (False, 0, 40, SMALL, False, "empty", None),
    (True, 40, 40, dataclasses.replace(SMALL, selected_blocks=2), False, "approximate", "reference"),
])
def test_explain_names_the_path_a_call_takes(causal, nq, nk, cfg, return_lse, path, executor, caplog):
    import logging

    from hyperattn import explain

    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, d=8)
    route = explain(q, k, v, causal=causal, config=cfg, return_lse=return_lse)
    assert (route.path, route.executor) == (path, executor)
    assert (route.schedule is not None) == (path == "approximate" and causal)
    assert path in str(route)
    with caplog.at_level(logging.DEBUG, logger="hyperattn"):
        hyper_attention(q, k, v, causal=causal, config=cfg, seed=0, return_lse=return_lse)
    assert str(route) in caplog.text


def test_selected_blocks_with_samples_refuse_the_fused_kernels():
    q, k, v = random_qkv(hq=2, hkv=1, nq=40, d=8, dtype=torch.float16)
    with pytest.raises(ValueError, match="sample_size > 0 runs in the reference executor only"):
        hyper_attention(q, k, v, causal=True, config=dataclasses.replace(SMALL, selected_blocks=2, impl="triton"))


def test_module_wraps_the_function():
    q, k, v = random_qkv(nq=40)
    layer = HyperAttention(SMALL)
    assert "block_size=4" in repr(layer)
    torch.testing.assert_close(layer(q, k, v, causal=True, seed=4),
                               hyper_attention(q, k, v, causal=True, config=SMALL, seed=4), rtol=0, atol=0)
    with pytest.raises(TypeError, match="config"):
        HyperAttention(SMALL.__dict__)


@pytest.mark.parametrize("impl,dtype", [("reference", torch.float32), ("triton", torch.float16)])
def test_torch_compile_of_a_model_breaks_only_around_the_plan(impl, dtype):
    """torch.compile(model) gives the eager result and gradients; the graph breaks only where
    the plan (generator draws) and the reference executor run eagerly by design."""
    if impl == "triton":
        pytest.importorskip("triton")
    cfg = HyperAttentionConfig(block_size=8, sample_size=10, min_seq_len=16, exact_up_to=0, impl=impl)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 96)

        def forward(self, x):
            q, k, v = self.proj(x).view(1, 96, 3, 2, 16).permute(2, 0, 3, 1, 4)
            return hyper_attention(q, k, v, causal=True, config=cfg, seed=0).float().square().sum()

    torch.manual_seed(0)
    model = Model().to(dtype)
    x = torch.randn(1, 96, 32, dtype=dtype)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    got = compiled(x)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    want = model(x)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    breaks = torch._dynamo.utils.counters["graph_break"]
    assert breaks and all("torch.compiler.disable" in reason for reason in breaks), list(breaks)
