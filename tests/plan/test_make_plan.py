import pytest
import torch

from hyperattn import HyperAttentionConfig
from hyperattn.plan import (inverse_permutation, lsh_buckets, lsh_directions, make_plan, plan_hyper_attention,
                            sort_lsh_permutation)
from tests.conftest import random_qkv


def assert_sinks_sort_last(plan, buckets, sinks, problems_with_sinks):
    """Problems in ``problems_with_sinks`` have key rows [0, sinks) at the end of their order and
    log-weight -inf on their samples; every order is otherwise the stable sort of the buckets,
    and each sample's block is that of its rank in its problem's order."""
    ranks = inverse_permutation(plan.k_perm).gather(-1, plan.sample_idx)
    assert torch.equal(plan.sample_block, ranks // plan.block_size)
    for z in range(plan.k_perm.shape[0]):
        n = sinks if z in problems_with_sinks else 0
        for h in range(plan.k_perm.shape[1]):
            perm = plan.k_perm[z, h]
            assert sorted(perm[perm.numel() - n:].tolist()) == list(range(n))
            rest = sort_lsh_permutation(buckets[z, h, n:]) + n
            assert torch.equal(perm[:perm.numel() - n], rest)
            sampled_sinks = plan.sample_idx[z, h] < n
            assert torch.isneginf(plan.sample_log_weight[z, h][sampled_sinks]).all()
            assert torch.isfinite(plan.sample_log_weight[z, h][~sampled_sinks]).all()


def buckets_of(x, config, seed):
    directions = lsh_directions(x.shape[1], x.shape[-1], config.lsh_num_projs, torch.Generator().manual_seed(seed))
    return lsh_buckets(x, directions)


def test_noncausal_sinks_sort_last_and_samples_of_them_weigh_nothing():
    q, k, v = random_qkv(batch=2, hq=2, hkv=1, nq=64, nk=40, d=8, seed=3)
    config = HyperAttentionConfig(block_size=8, sample_size=30, exact_sinks=5, exact_up_to=0)
    plan = plan_hyper_attention(q, k, v, False, config, torch.Generator().manual_seed(1))
    assert plan.sinks == 5
    assert_sinks_sort_last(plan, buckets_of(k, config, 1), 5, {0, 1})
    assert (plan.sample_idx < 5).any(), "no sampled sink: the test would not check the weights"


def test_causal_sinks_sort_last_in_the_first_rectangle_of_each_level_and_in_the_prefix():
    q, k, v = random_qkv(batch=2, hq=2, hkv=1, nq=64, nk=100, d=8, seed=4)  # prefix of 36 keys
    config = HyperAttentionConfig(block_size=8, sample_size=24, exact_sinks=40, min_seq_len=8, exact_up_to=0)
    plan = plan_hyper_attention(q, k, v, True, config, torch.Generator().manual_seed(2))
    s = plan.schedule
    prefix = s.prefix_len + s.head_len
    assert plan.sinks == 40 and prefix == 36
    k_buckets = buckets_of(k, config, 2)
    for level, level_plan in enumerate(plan.level_plans, start=1):
        rects = s.level(level)
        level_buckets = rects.keys.take(k_buckets, rects.count)
        assert_sinks_sort_last(level_plan, level_buckets, 4, set(range(0, 2 * rects.count, rects.count)))
    assert_sinks_sort_last(plan.prefix_plan, k_buckets[:, :, :prefix], 36, {0, 1})


def test_heavy_keys_are_the_keys_of_most_mass_and_lead_the_samples_at_weight_one():
    """Heavy keys: the keys of largest mass (sinks aside), sorted between the other keys and the
    sinks, first among the samples at log-weight 0 in block -1; draws of them or of sinks weigh
    nothing, and mass sampling draws neither."""
    gen = torch.Generator().manual_seed(5)
    z, hkv, nk, heavy, sinks = 4, 2, 48, 6, 3
    q_buckets = torch.randint(8, (z, 2 * hkv, 40), generator=gen, dtype=torch.uint8)
    k_buckets = torch.randint(8, (z, hkv, nk), generator=gen, dtype=torch.uint8)
    key_mass = torch.rand(z, hkv, nk, generator=gen)
    key_mass[..., :sinks] = 10.0  # sinks of largest mass: never heavy
    for sampling in ("uniform", "mass"):
        config = HyperAttentionConfig(block_size=8, sample_size=64, heavy_keys=heavy, sampling=sampling,
                                      exact_up_to=0)
        plan = make_plan(q_buckets, k_buckets, config, torch.Generator().manual_seed(1), sinks=sinks, sink_stride=2,
                         key_mass=key_mass)
        assert plan.heavy == heavy and plan.sample_idx.shape[-1] == heavy + 64
        for p in range(z):
            n_sinks = sinks if p % 2 == 0 else 0
            for h in range(hkv):
                mass = key_mass[p, h].clone()
                mass[:n_sinks] = -1
                expected = mass.topk(heavy).indices.sort().values
                assert torch.equal(plan.sample_idx[p, h, :heavy], expected)
                assert (plan.sample_log_weight[p, h, :heavy] == 0).all() and (plan.sample_block[p, h, :heavy] == -1).all()
                perm = plan.k_perm[p, h]
                assert sorted(perm[nk - n_sinks - heavy:nk - n_sinks].tolist()) == expected.tolist()
                assert sorted(perm[nk - n_sinks:].tolist()) == list(range(n_sinks))
                draws, weights = plan.sample_idx[p, h, heavy:], plan.sample_log_weight[p, h, heavy:]
                excluded = torch.isin(draws, expected) | (draws < n_sinks)
                assert torch.isneginf(weights[excluded]).all() and torch.isfinite(weights[~excluded]).all()
                if sampling == "mass":
                    assert not excluded.any()
        if sampling == "uniform":
            assert torch.isneginf(plan.sample_log_weight[..., heavy:]).any(), "no excluded draw: weights unchecked"


@pytest.mark.parametrize("causal,nq,nk", [(False, 64, 64), (True, 96, 96), (True, 80, 112)])
def test_probes_come_before_the_rectangles_they_choose_keys_for(causal, nq, nk):
    """Changing the queries of a causal rectangle, or any row after its first query, leaves its
    heavy keys as they were: probes are the queries just before it."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=nq, nk=nk, d=8, seed=6)
    config = HyperAttentionConfig(block_size=4, sample_size=8, heavy_keys=5, probe_queries=4, min_seq_len=8,
                                  sampling="mass", exact_sinks=2, exact_up_to=0)
    plan = plan_hyper_attention(q, k, v, causal, config, torch.Generator().manual_seed(3))
    if not causal:
        assert plan.heavy == 5
        return
    s = plan.schedule
    changed = 0
    for level, level_plan in enumerate(plan.level_plans, start=1):
        rects = s.level(level)
        first_query = rects.queries.start + (rects.count - 1) * rects.queries.stride  # the last rectangle's
        q2 = q.clone()
        q2[:, :, first_query:] += 1
        k2 = k.clone()
        k2[:, :, first_query + s.prefix_len:] += 1
        plan2 = plan_hyper_attention(q2, k2, v, True, config, torch.Generator().manual_seed(3))
        heavy = level_plan.sample_idx[..., :5]
        assert torch.equal(plan2.level_plans[level - 1].sample_idx[-1, :, :5], heavy[-1])
        q3 = q.clone()  # the probes themselves: the choice follows them
        q3[:, :, first_query - 4:first_query] = torch.randn(q3[:, :, first_query - 4:first_query].shape,
                                                            generator=torch.Generator().manual_seed(level),
                                                            dtype=q.dtype) * 20
        plan3 = plan_hyper_attention(q3, k, v, True, config, torch.Generator().manual_seed(3))
        changed += not torch.equal(plan3.level_plans[level - 1].sample_idx[-1, :, :5], heavy[-1])
    assert changed > 0, "the heavy keys follow no probe: the test would not see a leak"


def test_without_samples_the_sampling_rule_changes_nothing():
    """Heavy keys with no samples: uniform and mass sampling give the same plan (no mass is drawn from)."""
    gen = torch.Generator().manual_seed(8)
    q_buckets = torch.randint(8, (2, 2, 40), generator=gen, dtype=torch.uint8)
    k_buckets = torch.randint(8, (2, 1, 48), generator=gen, dtype=torch.uint8)
    key_mass = torch.rand(2, 1, 48, generator=gen)
    plans = [make_plan(q_buckets, k_buckets, HyperAttentionConfig(block_size=8, sample_size=0, heavy_keys=6,
                                                                  sampling=sampling, exact_up_to=0),
                       torch.Generator().manual_seed(1), sinks=2, key_mass=key_mass)
             for sampling in ("uniform", "mass")]
    for name in ("q_perm", "k_perm", "sample_idx", "sample_block", "sample_log_weight"):
        assert torch.equal(getattr(plans[0], name), getattr(plans[1], name)), name
    assert plans[0].sample_idx.shape[-1] == 6


@pytest.mark.parametrize("causal", [False, True])
def test_centroid_rule_keeps_the_keys_in_order_and_hashes_nothing(causal):
    """Under query_blocks='centroid' the live keys keep their order (heavy keys, then sinks after
    them), no row is hashed, and each query's block is its choice among the blocks of live keys."""
    from hyperattn.plan.blocks import centroid_query_blocks

    q, k, v = random_qkv(batch=1, hq=2, hkv=1, nq=64, nk=64, d=8, seed=6)
    config = HyperAttentionConfig(block_size=8, sample_size=0, exact_sinks=3, heavy_keys=5, probe_queries=4,
                                  min_seq_len=16, exact_up_to=0, query_blocks="centroid")

    def no_hashing(x, directions):
        raise AssertionError("the centroid rule hashed rows")

    plan = plan_hyper_attention(q, k, v, causal, config, torch.Generator().manual_seed(1), hash_rows=no_hashing)
    plans = [p for p in (plan.level_plans + [plan.prefix_plan] if causal else [plan]) if p is not None]
    for p in plans:
        for perm, heavy in zip(p.k_perm[:, 0].tolist(), p.sample_idx[:, 0, :p.heavy].tolist()):
            num_live = min(perm.index(j) for j in heavy)  # heavy keys follow the live ones, sinks come last
            assert perm[:num_live] == sorted(perm[:num_live])
            assert set(perm[num_live:num_live + p.heavy]) == set(heavy)
            assert all(j < 3 for j in perm[num_live + p.heavy:])
        assert torch.all(p.q_block[..., 1:] >= p.q_block[..., :-1])
    if not causal:
        num_live = torch.full((1, 1, 1), 64 - 3 - plan.heavy)
        k_sorted = k.gather(2, plan.k_perm[..., None].expand(-1, -1, -1, 8))
        q_perm, q_block = centroid_query_blocks(q, k_sorted, num_live, 8)
        assert torch.equal(plan.q_perm, q_perm) and torch.equal(plan.q_block, q_block)
