"""The fused executor as PyTorch custom ops: ``hyperattn::attention_fwd`` and
``hyperattn::attention_bwd``, with autograd, fake tensors for ``torch.compile``, and CUDA graphs.

The op's schema is the call's meaning: q, k, v, the plan (``hyperattn.plan.flatten_plan``: its
index tensors and a few ints), scale, causal and the exact tail. The launch list is derived
inside the op (``hyperattn.plan.launch.parts_of``), so launch details never change the schema.
"""

from __future__ import annotations

import torch

from hyperattn.executors.triton import on_device
from hyperattn.executors.triton.executor import attention_backward, attention_forward
from hyperattn.plan import AttentionPlan, CausalPlan, flatten_plan, unflatten_plan
from hyperattn.plan.launch import parts_of


def _parts(q, k, plan_tensors, plan_ints, causal):
    return parts_of(unflatten_plan(plan_tensors, plan_ints), q.shape[2], k.shape[2], causal)


@torch.library.custom_op("hyperattn::attention_fwd", mutates_args=())
def attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan_tensors: list[torch.Tensor], plan_ints: list[int],
    scale: float, causal: bool, tail: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    with on_device(q):
        return attention_forward(q, k, v, _parts(q, k, plan_tensors, plan_ints, causal), scale, tail, causal)


@attention_fwd_op.register_fake
def _(q, k, v, plan_tensors, plan_ints, scale, causal, tail):
    batch, heads, n_q, _ = q.shape
    return q.new_empty(batch, heads, n_q, v.shape[-1]), q.new_empty(batch, heads, n_q, dtype=torch.float32)


@torch.library.custom_op("hyperattn::attention_bwd", mutates_args=())
def attention_bwd_op(
    dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, plan_tensors: list[torch.Tensor], plan_ints: list[int], scale: float,
    causal: bool, tail: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with on_device(q):
        return attention_backward(dout, dlse, q, k, v, out, lse, _parts(q, k, plan_tensors, plan_ints, causal), scale,
                                  tail, causal)


@attention_bwd_op.register_fake
def _(dout, dlse, q, k, v, out, lse, plan_tensors, plan_ints, scale, causal, tail):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, plan_tensors, plan_ints, scale, causal, tail = inputs
    out, lse = output
    ctx.set_materialize_grads(False)  # an unused lse gets no gradient (None), so cuDNN can run the leaves
    ctx.save_for_backward(q, k, v, out, lse, *plan_tensors)
    ctx.plan_ints, ctx.scale, ctx.causal, ctx.tail = plan_ints, scale, causal, tail


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *plan_tensors = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_bwd_op(dout, dlse, q, k, v, out, lse, plan_tensors, ctx.plan_ints, ctx.scale, ctx.causal,
                                  ctx.tail)
    return dq, dk, dv, [None] * len(plan_tensors), None, None, None, None


attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def triton_attention(q, k, v, plan: AttentionPlan | CausalPlan | None, scale: float, causal: bool, tail: int = 0):
    """Attention over ``plan`` (None: exact attention) with fused kernels; differentiable.

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), fp16 or bf16. Returns out
    (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) float32. ``tail``: the last ``tail``
    rows are exact attention over every key they see (``HyperAttentionConfig.exact_tail``),
    computed in the same op. ``torch.compile`` and CUDA graphs treat it as one opaque call."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    plan_tensors, plan_ints = flatten_plan(plan)
    return attention_fwd_op(q, k, v, plan_tensors, plan_ints, float(scale), causal, tail)
