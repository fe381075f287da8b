"""Split-key exact attention against the reference, in float64 and through the kernels."""

import functools

import pytest
import torch

from hyperattn.ops import exact_attention_reference, reference_attention
from hyperattn.ops.split_keys import exact_attention_split_keys
from tests.conftest import random_qkv


def _reference(q, k, v, plan, scale, causal, calls):
    calls.append((q.shape, k.shape, causal))
    return reference_attention(q, k, v, plan, scale, causal)


@pytest.mark.parametrize("causal,batch,nq,nk,chunk", [
    (True, 2, 5, 70, 16),  # 65 keys before the corner: 4 chunks and a causal rest of 6 keys
    (True, 1, 7, 7 + 48, 16),  # the rest is the causal corner alone
    (False, 2, 3, 64, 16),  # the chunks take every key: no rest
    (False, 1, 4, 50, 16),
])
def test_split_keys_equals_exact_attention(causal, batch, nq, nk, chunk):
    q, k, v = random_qkv(batch=batch, hq=4, hkv=2, nq=nq, nk=nk, d=8, dv=6, seed=1)
    calls = []
    out, lse = exact_attention_split_keys(q, k, v, 0.3, causal, functools.partial(_reference, calls=calls), chunk)
    want, want_lse = exact_attention_reference(q, k, v, 0.3, causal)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)
    num_chunks = (nk - nq if causal else nk) // chunk
    assert calls[0] == ((batch * num_chunks, 4, nq, 8), (batch * num_chunks, 2, chunk, 8), False)
    assert len(calls) == (1 if num_chunks * chunk == nk else 2)


def test_split_keys_with_few_keys_is_one_call():
    q, k, v = random_qkv(hq=2, hkv=1, nq=4, nk=20, d=8)
    calls = []
    exact_attention_split_keys(q, k, v, 0.3, True, functools.partial(_reference, calls=calls), 16)
    assert calls == [((1, 2, 4, 8), (1, 1, 20, 8), True)]


def test_split_keys_gradcheck():
    q, k, v = random_qkv(batch=2, hq=2, hkv=1, nq=3, nk=29, d=4, requires_grad=True, seed=3)

    def fn(q, k, v):
        return exact_attention_split_keys(q, k, v, 0.5, True, reference_attention, 8)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_split_keys_through_the_kernels_matches_the_reference():
    pytest.importorskip("triton")
    from hyperattn.ops.triton.interface import triton_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (x.to(device, torch.float16).requires_grad_() for x in random_qkv(hq=4, hkv=2, nq=5, nk=70, d=16, seed=4))
    out, lse = exact_attention_split_keys(q, k, v, 0.25, True, triton_attention, 16)
    want, want_lse = exact_attention_reference(*(x.detach().double() for x in (q, k, v)), 0.25, True)
    assert ((out.double() - want).norm() / want.norm()) < 2e-3 and (lse.double() - want_lse).abs().max() < 1e-3
    grad = torch.randn_like(out)
    out.backward(grad)
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    exact_attention_reference(qd, kd, vd, 0.25, True)[0].backward(grad.double())
    for got, ref in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert ((got.double() - ref).norm() / ref.norm()) < 5e-3
