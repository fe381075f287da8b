import pytest
import torch

from hyperattn import HyperAttentionConfig
from hyperattn.executors import exact_attention_reference, hyper_attention_reference
from hyperattn.plan import AttentionPlan, plan_hyper_attention
from tests.conftest import random_qkv


def dense_pattern_attention(q, k, v, plan, scale):
    """The plan's sparse pattern as a dense weight matrix, by direct loops (float64)."""
    z_count, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    b = plan.block_size
    blocks = plan.query_blocks()
    out = torch.empty(z_count, hq, nq, v.shape[-1], dtype=torch.float64)
    lse = torch.empty(z_count, hq, nq, dtype=torch.float64)
    for z in range(z_count):
        for h in range(hq):
            g = h // (hq // hkv)
            heavy = set(plan.sample_idx[z, g, :plan.heavy].tolist())
            weights = torch.zeros(nq, nk, dtype=torch.float64)
            own = {}  # query -> the keys its block part attends to (heavy keys aside)
            if plan.selected is not None:
                s = plan.selected_block_size
                for i in range(nq):
                    own[i] = {j for c in plan.selected[z, h, i].tolist() for j in range(c * s, min(nk, (c + 1) * s))}
            else:
                for rank, i in enumerate(plan.q_perm[z, h].tolist()):
                    block = int(blocks[rank] if blocks.dim() == 1 else blocks[z, h, rank])
                    own[i] = set(plan.k_perm[z, g, block * b:(block + 1) * b].tolist())
            for i, keys in own.items():
                for j in keys - heavy:
                    weights[i, j] += 1
            for t, (j, logw) in enumerate(zip(plan.sample_idx[z, g].tolist(), plan.sample_log_weight[z, g].tolist())):
                for i in range(nq):
                    if t < plan.heavy or j not in own[i]:
                        weights[i, j] += torch.tensor(logw, dtype=torch.float64).exp()
            a = weights * torch.exp(scale * q[z, h].double() @ k[z, g].double().T)
            out[z, h] = (a @ v[z, g].double()) / a.sum(1, keepdim=True)
            lse[z, h] = a.sum(1).log()
    return out, lse


def make_test_plan(q, k, v, seed=0, **cfg):
    return plan_hyper_attention(q, k, v, False, HyperAttentionConfig(**cfg), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "shape,cfg",
    [
        (dict(batch=2, hq=2, hkv=2, nq=48, d=8), dict(block_size=8, sample_size=6)),
        (dict(batch=1, hq=4, hkv=2, nq=50, d=8, dv=5), dict(block_size=7, sample_size=9)),
        (dict(batch=1, hq=3, hkv=1, nq=30, nk=71, d=4), dict(block_size=8, sample_size=5, lsh_num_projs=3)),
        (dict(batch=1, hq=2, hkv=1, nq=71, nk=30, d=4), dict(block_size=8, sample_size=5, sampling="value_norm")),
        (dict(batch=1, hq=1, hkv=1, nq=1, nk=9, d=4), dict(block_size=2, sample_size=3)),
        (dict(batch=1, hq=2, hkv=1, nq=40, d=8), dict(block_size=16, sample_size=0)),
        (dict(batch=2, hq=4, hkv=2, nq=45, nk=52, d=8), dict(block_size=8, sample_size=7, heavy_keys=6,
                                                           sampling="mass", probe_queries=5)),
        (dict(batch=1, hq=2, hkv=1, nq=40, d=8), dict(block_size=8, sample_size=0, heavy_keys=40)),
        # the bucket rule: few buckets, so some key blocks get many queries (several tiles) and others none
        (dict(batch=2, hq=4, hkv=2, nq=64, nk=57, d=8), dict(block_size=8, sample_size=5, lsh_num_projs=2,
                                                           query_blocks="bucket")),
        (dict(batch=1, hq=3, hkv=1, nq=33, nk=80, d=4), dict(block_size=8, sample_size=4, heavy_keys=5,
                                                           sampling="mass", probe_queries=4, lsh_num_projs=2,
                                                           query_blocks="bucket")),
        # selected blocks: a short last block, samples inside and outside them, heavy keys in them, GQA
        (dict(batch=2, hq=4, hkv=2, nq=30, nk=53, d=8), dict(selected_blocks=3, selected_block_size=4,
                                                           sample_size=9, exact_sinks=0)),
        (dict(batch=1, hq=3, hkv=1, nq=33, nk=80, d=4), dict(selected_blocks=4, selected_block_size=5, heavy_keys=6,
                                                           sample_size=7, sampling="mass", probe_queries=4)),
        (dict(batch=1, hq=2, hkv=1, nq=20, nk=11, d=4), dict(selected_blocks=9, selected_block_size=2,
                                                           sample_size=0)),  # more blocks asked than there are
    ],
)
def test_reference_matches_dense_pattern(shape, cfg):
    q, k, v = random_qkv(**shape, seed=7)
    plan = make_test_plan(q, k, v, **cfg)
    out, lse = hyper_attention_reference(q, k, v, plan, 0.4)
    want_out, want_lse = dense_pattern_attention(q, k, v, plan, 0.4)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-12)


def test_own_block_samples_are_excluded():
    """Samples drawn only from one block change nothing for the queries of that block."""
    q, k, v = random_qkv(hq=1, nq=32, d=4, seed=3)
    plan = make_test_plan(q, k, v, block_size=8, sample_size=4)
    own = plan.k_perm[..., :4]  # keys of block 0
    only_own = AttentionPlan(plan.q_perm, plan.k_perm, own, torch.zeros_like(own),
                             torch.zeros(1, 1, 4, dtype=torch.float64), 8)
    no_samples = AttentionPlan(plan.q_perm, plan.k_perm, own[..., :0], own[..., :0],
                               torch.zeros(1, 1, 0, dtype=torch.float64), 8)
    out, _ = hyper_attention_reference(q, k, v, only_own, 0.5)
    ref, _ = hyper_attention_reference(q, k, v, no_samples, 0.5)
    block0 = plan.q_perm[0, 0, :8]
    torch.testing.assert_close(out[0, 0, block0], ref[0, 0, block0], rtol=0, atol=0)
    assert not torch.allclose(out, ref)


def test_gqa_equals_repeated_kv_for_the_same_plan():
    q, k, v = random_qkv(batch=2, hq=6, hkv=2, nq=40, d=8, seed=2)
    plan = make_test_plan(q, k, v, block_size=8, sample_size=6)
    groups = 3
    rep = lambda x: x.repeat_interleave(groups, 1)  # noqa: E731
    repeated = AttentionPlan(plan.q_perm, rep(plan.k_perm), rep(plan.sample_idx), rep(plan.sample_block),
                             rep(plan.sample_log_weight), plan.block_size, q_block=plan.q_block)
    got = hyper_attention_reference(q, k, v, plan, 0.3)
    want = hyper_attention_reference(q, rep(k), rep(v), repeated, 0.3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_exact_reference_matches_sdpa(causal, monkeypatch):
    q, k, v = random_qkv(batch=2, hq=4, hkv=2, nq=33, nk=50, d=8, seed=4)
    monkeypatch.setattr("hyperattn.executors.reference.EXACT_CHUNK_ELEMENTS", 700)  # several chunks
    out, lse = exact_attention_reference(q, k, v, 0.3, causal)
    mask = None
    if causal:  # bottom-right: query i sees keys <= Nk - Nq + i
        mask = torch.ones(33, 50, dtype=torch.bool).tril(50 - 33)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.3
    if causal:
        scores = scores.masked_fill(~mask, -torch.inf)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", [dict(sampling="value_norm"), dict(sampling="mass", heavy_keys=3, probe_queries=4)])
def test_data_dependent_sampling_gradcheck_with_a_fixed_plan(cfg):
    """The sampling probabilities follow the data, the gradients hold the plan fixed."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=20, d=3, seed=9, requires_grad=True)
    plan = make_test_plan(q, k, v, block_size=4, sample_size=5, **cfg)
    assert torch.autograd.gradcheck(lambda *x: hyper_attention_reference(*x, plan, 0.7), (q, k, v))
