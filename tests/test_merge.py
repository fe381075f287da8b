import torch

from hyperattn.merge import masked_softmax_lse, merge_attention


def test_merge_equals_attention_over_the_union():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    v = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    p, lse = masked_softmax_lse(scores)
    pa, lse_a = masked_softmax_lse(scores[:, :7])
    pb, lse_b = masked_softmax_lse(scores[:, 7:])
    out, merged_lse = merge_attention(pa @ v[:7], lse_a, pb @ v[7:], lse_b)
    torch.testing.assert_close(out, p @ v)
    torch.testing.assert_close(merged_lse, torch.logsumexp(scores, -1))


def test_empty_sides_have_no_nan_in_values_or_gradients():
    scores = torch.tensor([[-torch.inf, -torch.inf], [0.5, -torch.inf]], dtype=torch.float64, requires_grad=True)
    probs, lse = masked_softmax_lse(scores)
    assert torch.equal(probs[0], torch.zeros(2, dtype=torch.float64)) and lse[0] == -torch.inf
    o_a = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    lse_a = torch.tensor([0.3, -torch.inf], dtype=torch.float64, requires_grad=True)
    out, merged = merge_attention(o_a, lse_a, probs @ torch.ones(2, 3, dtype=torch.float64), lse)
    torch.testing.assert_close(out[0], o_a[0])
    assert merged[1] == 0.5
    (out.sum() + merged.sum()).backward()
    for grad in (scores.grad, o_a.grad, lse_a.grad):
        assert torch.isfinite(grad).all()


def test_merge_gradcheck_through_lse():
    gen = torch.Generator().manual_seed(1)
    args = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
            for s in [(4, 3), (4,), (4, 3), (4,)]]
    assert torch.autograd.gradcheck(merge_attention, args)


def test_merge_stack_equals_attention_over_the_union_and_skips_empty_parts():
    from hyperattn.merge import merge_attention_stack

    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 5, 12, generator=gen, dtype=torch.float64)
    v = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    p, lse = masked_softmax_lse(scores)
    bounds = [(0, 4), (4, 4), (4, 9), (9, 12)]  # the second part has no keys: lse -inf
    parts = [masked_softmax_lse(scores[..., a:b]) for a, b in bounds]
    outs = torch.stack([pp @ v[a:b] for (pp, _), (a, b) in zip(parts, bounds)], 1)
    lses = torch.stack([part_lse for _, part_lse in parts], 1)
    out, merged_lse = merge_attention_stack(outs, lses, dim=1)
    torch.testing.assert_close(out, p @ v)
    torch.testing.assert_close(merged_lse, lse)
    empty_out, empty_lse = merge_attention_stack(outs, torch.full_like(lses, -torch.inf), dim=1)
    assert torch.equal(empty_out, torch.zeros_like(empty_out)) and (empty_lse == -torch.inf).all()
