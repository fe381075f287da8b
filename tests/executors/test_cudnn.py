"""The cuDNN path of the diagonal leaves, on the CPU: the cuDNN op is replaced by a float64
implementation of its contract, so the leaf views, the final merge and the gradient
additions are checked against the reference executor."""

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.executors import cudnn, reference_attention  # noqa: E402
from hyperattn.executors.triton import executor  # noqa: E402
from hyperattn.executors.triton.executor import attention_backward, attention_forward  # noqa: E402
from hyperattn.executors.triton.op import triton_attention  # noqa: E402
from hyperattn.plan import Rectangles, Rows  # noqa: E402
from hyperattn.plan.launch import Part, assign_owners, parts_of  # noqa: E402
from hyperattn.plan import plan_hyper_attention  # noqa: E402
from hyperattn import HyperAttentionConfig  # noqa: E402

from tests.executors.triton.test_executor import DEVICE, DTYPE, rel_error  # noqa: E402


def _scores(q, k, scale):
    s = q.double() @ k.double().transpose(-1, -2) * scale
    side = q.shape[2]
    return s.masked_fill(torch.ones(side, side, dtype=torch.bool, device=q.device).triu(1), float("-inf"))


def _grouped(x, q):
    """kv heads repeated for each query head of their group."""
    return x.repeat_interleave(q.shape[1] // x.shape[1], 1)


def fake_forward(q, k, v, scale):
    """cuDNN's forward contract: out in q's dtype, lse (N, H, S, 1) float32; grouped kv heads."""
    calls["fwd"] += 1
    s = _scores(q, _grouped(k, q), scale)
    lse = torch.logsumexp(s, -1, keepdim=True)
    return (torch.exp(s - lse) @ _grouped(v, q).double()).to(q.dtype), lse.float()


def fake_backward(dout, q, k, v, out, lse, scale):
    """cuDNN's backward contract: probabilities from the given lse, delta = rowsum(dO * O)."""
    calls["bwd"] += 1
    assert lse.shape == (*q.shape[:3], 1)
    group = q.shape[1] // k.shape[1]
    kg, vg = _grouped(k, q).double(), _grouped(v, q).double()
    p = torch.exp(_scores(q, kg, scale) - lse.double())
    dout, out = dout.double(), out.double()
    ds = p * (dout @ vg.transpose(-1, -2) - (dout * out).sum(-1, keepdim=True))
    dq, dk, dv = ds @ kg * scale, ds.transpose(-1, -2) @ q.double() * scale, p.transpose(-1, -2) @ dout
    dk, dv = (x.unflatten(1, (k.shape[1], group)).sum(2) for x in (dk, dv))  # summed over each kv head's group
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


calls = {"fwd": 0, "bwd": 0}


@pytest.fixture
def fake_cudnn(monkeypatch):
    monkeypatch.setattr(cudnn, "cudnn_causal_forward", fake_forward)
    monkeypatch.setattr(cudnn, "cudnn_causal_backward", fake_backward)
    monkeypatch.setattr(executor, "use_cudnn_leaves", lambda *args: True)
    calls.update(fwd=0, bwd=0)


# name: (batch, heads, Nq, Nk, D, block, samples, min_seq_len, exact_sinks)
CASES = {
    "square": (1, 2, 64, 64, 16, 8, 10, 8, 0),
    "odd-head": (1, 2, 77, 77, 16, 8, 10, 8, 0),
    "prefill": (1, 2, 64, 90, 16, 8, 10, 8, 0),
    "batch-2": (2, 2, 70, 70, 16, 8, 6, 8, 0),
    "sinks": (1, 2, 96, 96, 16, 8, 10, 8, 3),
    "gqa": (1, 4, 77, 77, 16, 8, 10, 8, 3),
    "gqa-3": (2, 6, 70, 70, 16, 8, 6, 8, 0),  # 3 kv heads: with 2 a call, the last call takes 1
}
KV_HEADS = {"gqa": 2, "gqa-3": 3}  # as many as query heads elsewhere

# kv heads one cuDNN backward call of the leaves takes (None: all of them, the default budget)
LEAF_CALLS = {"one-call": None, "kv-head-a-call": 1, "two-kv-heads-a-call": 2}


def leaf_calls_per_batch_row(monkeypatch, kv_heads_a_call, parts, q, k) -> int:
    """Sets ``cudnn.LEAF_BACKWARD_ELEMENTS`` to exactly ``kv_heads_a_call`` kv heads' query
    elements of the leaves (with their grouped query heads); the calls each batch row takes."""
    if kv_heads_a_call is None:
        return 1
    leaves = next(part for part in parts if part.diagonal)
    one_kv_head = leaves.count * leaves.num_queries * (q.shape[1] // k.shape[1]) * q.shape[-1]
    monkeypatch.setattr(cudnn, "LEAF_BACKWARD_ELEMENTS", kv_heads_a_call * one_kv_head)
    return -(-k.shape[1] // kv_heads_a_call)


@pytest.mark.parametrize("leaf_calls", list(LEAF_CALLS))
@pytest.mark.parametrize("name", list(CASES))
def test_cudnn_leaves_match_reference(name, leaf_calls, fake_cudnn, monkeypatch):
    batch, heads, nq, nk, d, block, samples, min_len, sinks = CASES[name]
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(batch, h, n, d, generator=gen).to(DEVICE, DTYPE)
               for h, n in ((heads, nq), (KV_HEADS.get(name, heads), nk), (KV_HEADS.get(name, heads), nk)))
    cfg = HyperAttentionConfig(block_size=block, sample_size=samples, exact_up_to=0, min_seq_len=min_len,
                               exact_sinks=sinks)
    plan = plan_hyper_attention(q, k, v, True, cfg, torch.Generator().manual_seed(4))
    parts = parts_of(plan, nq, nk, True)
    scale = d ** -0.5
    calls_per_row = leaf_calls_per_batch_row(monkeypatch, LEAF_CALLS[leaf_calls], parts, q, k)

    out, lse = attention_forward(q, k, v, parts, scale, poison=True)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    want_out, want_lse = reference_attention(q64, k64, v64, plan, scale, True)
    assert calls["fwd"] == batch
    assert torch.isfinite(out).all() and torch.isfinite(lse).all(), "unwritten rows"
    assert rel_error(out, want_out) < 2e-3, "out"
    assert (lse.double() - want_lse).abs().max() < 1e-3, "lse"

    dout = torch.randn(out.shape, generator=gen).to(DEVICE, DTYPE)
    grads = attention_backward(dout, None, q, k, v, out, lse, parts, scale, poison=True)
    want = torch.autograd.grad((want_out * dout.double()).sum(), (q64, k64, v64))
    assert calls["bwd"] == batch * calls_per_row
    for label, got, ref in zip(("dq", "dk", "dv"), grads, want):
        assert torch.isfinite(got).all(), f"unwritten {label} rows"
        assert got.dtype == q.dtype
        assert rel_error(got, ref) < 3e-3, label


def test_leaf_views_are_the_diagonal_blocks():
    x = torch.arange(2 * 3 * 20 * 2).reshape(2, 3, 20, 2)
    view = cudnn._leaf_view(x, 1, 4, 5, 3)  # rows 4..18 of batch 1, as 3 leaves of 5
    assert view.shape == (3, 3, 5, 2)
    assert torch.equal(view[2, 1], x[1, 1, 14:19])
    assert torch.equal(cudnn._rows_of(view), x[1, :, 4:19])


def test_cudnn_is_off_without_cuda_or_when_asked(monkeypatch):
    q = torch.zeros(1, 2, 8, 16, dtype=torch.bfloat16)
    assert not cudnn.use_cudnn_leaves(q, q, q, 4, 2, "forward")  # a CPU tensor
    monkeypatch.setenv("HYPERATTN_LEAVES", "triton")
    assert not cudnn.use_cudnn_leaves(q, q, q, 4, 2, "forward")
    monkeypatch.setenv("HYPERATTN_LEAVES", "TRITON")
    with pytest.raises(ValueError, match="HYPERATTN_LEAVES must be one of auto, cudnn, triton"):
        cudnn.use_cudnn_leaves(q, q, q, 4, 2, "forward")


def test_cudnn_shape_rules():
    def qkv(hq=4, hkv=4, d=64, dv=64, dtype=torch.bfloat16):
        return (torch.zeros(1, hq, 8, d, dtype=dtype), torch.zeros(1, hkv, 8, d, dtype=dtype),
                torch.zeros(1, hkv, 8, dv, dtype=dtype))

    assert cudnn.cudnn_shapes_supported(*qkv())
    assert cudnn.cudnn_shapes_supported(*qkv(d=128, dv=128, dtype=torch.float16))
    assert cudnn.cudnn_shapes_supported(*qkv(hkv=2))  # grouped kv heads
    assert not cudnn.cudnn_shapes_supported(*qkv(hkv=3))
    assert not cudnn.cudnn_shapes_supported(*qkv(d=256, dv=256))
    assert not cudnn.cudnn_shapes_supported(*qkv(d=60, dv=60))
    assert not cudnn.cudnn_shapes_supported(*qkv(dv=32))
    assert not cudnn.cudnn_shapes_supported(*qkv(dtype=torch.float32))


def test_auto_runs_cudnn_from_a_geometrys_second_call(monkeypatch):
    monkeypatch.setattr(cudnn, "_seen_geometries", set())
    monkeypatch.setattr(cudnn, "_cudnn_geometries", set())
    probes = []

    def works():
        probes.append(1)
        return True

    geometry, other = ("forward", 1), ("forward", 2)
    assert not cudnn.decide_leaf_engine("auto", geometry, False, works)  # first call: no graph build
    assert not cudnn.decide_leaf_engine("auto", geometry, True, works)  # captured before cuDNN ran it
    assert cudnn.decide_leaf_engine("auto", geometry, False, works)
    assert cudnn.decide_leaf_engine("auto", geometry, True, works)  # its graph exists now
    assert not cudnn.decide_leaf_engine("auto", other, False, works)
    assert cudnn.decide_leaf_engine("cudnn", other, False, works)  # "cudnn": from the first call
    assert not cudnn.decide_leaf_engine("cudnn", ("backward", 1), False, lambda: False)  # the probe failed
    assert len(probes) == 2


def test_autograd_without_lse_runs_cudnn_leaves(fake_cudnn):
    """Only the output is used: the backward gets no lse gradient, so cuDNN may run the leaves."""
    batch, heads, nq, nk, d, block, samples, min_len, sinks = CASES["odd-head"]
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(batch, heads, n, d, generator=gen).to(DEVICE, DTYPE).requires_grad_() for n in (nq, nk, nk))
    cfg = HyperAttentionConfig(block_size=block, sample_size=samples, exact_up_to=0, min_seq_len=min_len)
    plan = plan_hyper_attention(q, k, v, True, cfg, torch.Generator().manual_seed(6))
    out, _ = triton_attention(q, k, v, plan, d ** -0.5, True)
    out.float().sum().backward()
    assert calls == {"fwd": batch, "bwd": batch}


@pytest.mark.parametrize("leaf_calls", list(LEAF_CALLS))
def test_cudnn_leaves_alone_write_their_rows(leaf_calls, fake_cudnn, monkeypatch):
    """Parts of the diagonal leaves only (block-diagonal causal attention): no other part adds to
    their rows, so their gradients are written without accumulators, batch row and heads each."""
    batch, q_heads, kv_heads, leaves, side, d = 2, 6, 3, 3, 8, 16
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(batch, q_heads, leaves * side, d, generator=gen).to(DEVICE, DTYPE)
    k, v = (torch.randn(batch, kv_heads, leaves * side, d, generator=gen).to(DEVICE, DTYPE) for _ in range(2))
    diagonal = Rectangles(count=leaves, queries=Rows(start=0, stride=side, length=side),
                          keys=Rows(start=0, stride=side, length=side))
    parts = assign_owners([Part(None, diagonal, causal=True, diagonal=True)], leaves * side, leaves * side)
    calls_per_row = leaf_calls_per_batch_row(monkeypatch, LEAF_CALLS[leaf_calls], parts, q, k)
    scale = d ** -0.5
    out, lse = attention_forward(q, k, v, parts, scale, poison=True)
    dout = torch.randn(out.shape, generator=gen).to(DEVICE, DTYPE)
    grads = attention_backward(dout, None, q, k, v, out, lse, parts, scale, poison=True)
    assert calls["bwd"] == batch * calls_per_row

    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    blocks = torch.arange(leaves * side, device=q.device) // side
    rows = torch.arange(leaves * side, device=q.device)
    hidden = (blocks[:, None] != blocks[None, :]) | (rows[None, :] > rows[:, None])
    scores = (q64 @ _grouped(k64, q).transpose(-1, -2) * scale).masked_fill(hidden, float("-inf"))
    want_out = torch.softmax(scores, -1) @ _grouped(v64, q)
    assert rel_error(out, want_out) < 2e-3, "out"
    want = torch.autograd.grad((want_out * dout.double()).sum(), (q64, k64, v64))
    for label, got, ref in zip(("dq", "dk", "dv"), grads, want):
        assert torch.isfinite(got).all(), f"unwritten {label} rows"
        assert rel_error(got, ref) < 3e-3, label


def fake_full_forward(q, k, v, scale):
    """cuDNN's non-causal forward contract (``cudnn.cudnn_full_forward``), in float64."""
    calls["heavy"] = calls.get("heavy", 0) + 1
    s = q.double() @ _grouped(k, q).double().transpose(-1, -2) * scale
    lse = torch.logsumexp(s, -1, keepdim=True)
    return (torch.exp(s - lse) @ _grouped(v, q).double()).to(q.dtype), lse.float()


# name: (batch, heads, kv heads, Nq, Nk, causal, query_blocks, samples, exact_sinks)
HEAVY_CASES = {
    "causal-bucket": (1, 2, 2, 96, 96, True, "bucket", 0, 3),
    "causal-rank-samples": (1, 2, 2, 96, 96, True, "rank", 6, 0),
    "causal-gqa-batch-2": (2, 4, 2, 80, 80, True, "bucket", 4, 3),
    "prefill": (1, 2, 2, 64, 100, True, "bucket", 0, 0),
    "non-causal": (1, 4, 2, 50, 70, False, "bucket", 5, 2),
}


@pytest.mark.parametrize("name", list(HEAVY_CASES))
def test_heavy_keys_by_cudnn_match_reference(name, fake_cudnn, monkeypatch):
    """The heavy keys run by cuDNN (gathered keys, strided query views) and folded into the fused
    kernel's rows give the reference executor's output."""
    batch, heads, kv_heads, nq, nk, causal, rule, samples, sinks = HEAVY_CASES[name]
    monkeypatch.setattr(cudnn, "cudnn_full_forward", fake_full_forward)
    monkeypatch.setattr(executor, "HEAVY_BY_CUDNN_MIN_HEAD_DIM", 16)  # these inputs' head dim
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(batch, heads, nq, 16, generator=gen).to(DEVICE, DTYPE)
    k, v = (torch.randn(batch, kv_heads, nk, 16, generator=gen).to(DEVICE, DTYPE) for _ in range(2))
    cfg = HyperAttentionConfig(block_size=8, sample_size=samples, exact_up_to=0, min_seq_len=8, exact_sinks=sinks,
                               heavy_keys=6, probe_queries=4, sampling="mass", query_blocks=rule, exact_tail=0)
    plan = plan_hyper_attention(q, k, v, causal, cfg, torch.Generator().manual_seed(6))
    parts = parts_of(plan, nq, nk, causal)
    calls["heavy"] = 0
    out, lse = attention_forward(q, k, v, parts, 0.25, poison=True)
    want_out, want_lse = reference_attention(q.double(), k.double(), v.double(), plan, 0.25, causal)
    assert calls["heavy"] == batch * sum(1 for part in parts if part.plan is not None and part.plan.heavy)
    assert calls["heavy"] > 0
    assert torch.isfinite(out).all() and torch.isfinite(lse).all(), "unwritten rows"
    assert rel_error(out, want_out) < 2e-3, "out"
    assert (lse.double() - want_lse).abs().max() < 1e-3, "lse"
    monkeypatch.setattr(executor, "HEAVY_BY_CUDNN_MIN_HEAD_DIM", 32)  # narrower heads: the fused kernel's keys
    calls["heavy"] = 0
    out_kernel, _ = attention_forward(q, k, v, parts, 0.25, poison=True)
    assert calls["heavy"] == 0
    assert rel_error(out_kernel, want_out) < 2e-3, "out, heavy keys in the fused kernel"
