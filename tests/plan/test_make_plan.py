import torch

from hyperattn import HyperAttentionConfig
from hyperattn.plan import (inverse_permutation, lsh_buckets, lsh_directions, plan_hyper_attention,
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
