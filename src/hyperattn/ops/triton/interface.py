"""Fused Triton executors: the same plans as ``hyperattn.ops.reference``, run as kernels.

fp16 and bf16 inputs on CUDA (or any device under ``TRITON_INTERPRET=1``); the output is in
the input dtype, lse float32. Every part of the pattern is one launch that merges into fp32
accumulators; the backward recomputes probabilities from the final lse, so gradients
include every merge.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton

from hyperattn.ops.triton.backward import (
    dense_bwd_dkdv_kernel,
    dense_bwd_dq_kernel,
    hyper_bwd_dkdv_kernel,
    hyper_bwd_dq_kernel,
    hyper_bwd_samples_kernel,
)
from hyperattn.ops.triton import on_device
from hyperattn.ops.triton.forward import dense_fwd_kernel, hyper_fwd_kernel
from hyperattn.plan import AttentionPlan, CausalPlan



def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


@dataclass(frozen=True)
class Part:
    """One launch: ``rects`` problems per batch row, problem r reading query rows
    ``q_start + r * rect_stride + [0, n_q)`` and key rows ``k_start + r * rect_stride + [0, n_k)``.

    ``plan`` None means exact attention (causal: bottom-right within the problem).
    ``merge``: merge into rows an earlier part wrote (else write them)."""

    plan: AttentionPlan | None
    causal: bool
    merge: bool
    rects: int
    q_start: int
    k_start: int
    rect_stride: int
    n_q: int
    n_k: int


def parts_of(plan: AttentionPlan | CausalPlan | None, n_q: int, n_k: int, causal: bool) -> list[Part]:
    """The launches that execute ``plan`` (None: exact attention) over (n_q, n_k) rows."""
    if plan is None or isinstance(plan, AttentionPlan):
        return [Part(plan, causal and plan is None, False, 1, 0, 0, 0, n_q, n_k)]
    s = plan.schedule
    head, prefix = s.head_len, s.prefix_len + s.head_len
    parts = [Part(None, True, False, s.num_leaves, head, prefix, s.leaf_len, s.leaf_len, s.leaf_len)]
    if head > 0:
        parts.append(Part(None, True, False, 1, 0, 0, 0, head, prefix))
    for level, level_plan in enumerate(plan.level_plans, start=1):
        side = s.rectangle_side(level)
        parts.append(Part(level_plan, False, True, s.num_rectangles(level), head + side, prefix, 2 * side, side, side))
    if prefix > 0:  # exact (plan None) when the prefix fits in one block
        parts.append(Part(plan.prefix_plan, False, True, 1, head, 0, 0, s.main_len, prefix))
    return parts


def _launch_config(head_dim: int, head_dim_v: int) -> dict:
    """Tile sizes and warps by head dim; ``HYPERATTN_TRITON_CONFIG="BLOCK_M,BLOCK_N,warps,stages"``
    overrides them (for tuning)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return dict(BLOCK_M=16, BLOCK_N=16)
    override = os.environ.get("HYPERATTN_TRITON_CONFIG")
    if override:
        block_m, block_n, warps, stages = (int(x) for x in override.split(","))
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    widest = max(head_dim, head_dim_v)
    if widest <= 64:  # fastest of benchmarks/sweep_configs.py on an H200 at 131k tokens
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    if widest <= 128:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=1)


def _dims(q, v) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    return dict(HEAD_DIM=d, HEAD_DIM_V=dv, D_PAD=max(16, triton.next_power_of_2(d)),
                DV_PAD=max(16, triton.next_power_of_2(dv)))


def _strides(*tensors) -> list[int]:
    out = []
    for x in tensors:
        out.extend(x.stride()[:-1] if x.dim() == 4 else x.stride()[:2])
    return out


def _hyper_tiles(part: Part, block_m: int) -> tuple[int, int, int]:
    """(query tiles per key block, key blocks, tiles) of a hyper part."""
    b = part.plan.block_size
    num_blocks = -(-part.n_k // b)
    rows_per_block = min(-(-b * part.n_q // part.n_k), part.n_q)  # ceil((i+1)x) - ceil(ix) <= ceil(x)
    tiles_per_block = -(-rows_per_block // block_m)
    return tiles_per_block, num_blocks, tiles_per_block * num_blocks


def attention_forward(q, k, v, parts: list[Part], scale: float, poison: bool = False):
    """Run the parts; returns out (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) float32.

    A single part writes the output in q's dtype; several merge in a float32 accumulator.
    ``poison`` fills the outputs with NaN first, so rows no part wrote show up."""
    batch, num_q_heads, n_q, _ = q.shape
    num_kv_heads = k.shape[1]
    out_dtype = q.dtype if len(parts) == 1 else torch.float32
    out = torch.empty((batch, num_q_heads, n_q, v.shape[-1]), dtype=out_dtype, device=q.device)
    lse = torch.empty((batch, num_q_heads, n_q), dtype=torch.float32, device=q.device)
    if poison:
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
    cfg, dims = _launch_config(q.shape[-1], v.shape[-1]), _dims(q, v)
    strides = _strides(q, k, v, out, lse)
    scale_log2 = scale * math.log2(math.e)
    group = num_q_heads // num_kv_heads
    for part in parts:
        geometry = (part.rects, part.q_start, part.k_start, part.rect_stride, num_q_heads, group)
        problems = batch * part.rects * num_q_heads
        if part.plan is None:
            tiles = triton.cdiv(part.n_q, cfg["BLOCK_M"])
            dense_fwd_kernel[(problems * tiles,)](
                q, k, v, out, lse, scale_log2, *strides, part.n_q, part.n_k, tiles, *geometry,
                CAUSAL=part.causal, MERGE=part.merge, **dims, **cfg)
        else:
            p = part.plan
            tiles_per_block, _, tiles = _hyper_tiles(part, cfg["BLOCK_M"])
            hyper_fwd_kernel[(problems * tiles,)](
                q, k, v, out, lse, p.q_perm, p.k_perm, p.sample_idx, p.sample_block, p.sample_log_weight,
                scale_log2, *strides, part.n_q, part.n_k, p.sample_idx.shape[-1], p.block_size,
                tiles_per_block, tiles, *geometry, MERGE=part.merge, **dims, **cfg)
    return out.to(q.dtype), lse


def attention_backward(dout, dlse, q, k, v, out, lse, parts: list[Part], scale: float):
    """Gradients of ``attention_forward``'s (out, lse) with respect to q, k, v."""
    batch, num_q_heads, n_q, d = q.shape
    num_kv_heads, n_k, dv = k.shape[1], k.shape[2], v.shape[-1]
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    dq = torch.zeros(batch, num_q_heads, n_q, d, dtype=torch.float32, device=q.device)
    dk = torch.zeros(batch, num_kv_heads, n_k, d, dtype=torch.float32, device=q.device)
    dvv = torch.zeros(batch, num_kv_heads, n_k, dv, dtype=torch.float32, device=q.device)
    cfg, dims = _launch_config(d, dv), _dims(q, v)
    strides = _strides(q, k, v, dout, lse)
    scale_log2 = scale * math.log2(math.e)
    group = num_q_heads // num_kv_heads
    for part in parts:
        q_geometry = (part.rects, part.q_start, part.k_start, part.rect_stride, num_q_heads, group)
        kv_geometry = (part.rects, part.q_start, part.k_start, part.rect_stride, num_kv_heads, group, n_k)
        problems = batch * part.rects
        if part.plan is None:
            q_tiles = triton.cdiv(part.n_q, cfg["BLOCK_M"])
            k_tiles = triton.cdiv(part.n_k, cfg["BLOCK_N"])
            dense_bwd_dq_kernel[(problems * num_q_heads * q_tiles,)](
                q, k, v, dout, lse, delta, dq, scale, scale_log2, *strides, part.n_q, part.n_k, q_tiles,
                *q_geometry, CAUSAL=part.causal, **dims, **cfg)
            dense_bwd_dkdv_kernel[(problems * num_kv_heads * k_tiles,)](
                q, k, v, dout, lse, delta, dk, dvv, scale, scale_log2, *strides, part.n_q, part.n_k, k_tiles,
                *kv_geometry, CAUSAL=part.causal, **dims, **cfg)
            continue
        p = part.plan
        num_samples = p.sample_idx.shape[-1]
        tiles_per_block, num_blocks, tiles = _hyper_tiles(part, cfg["BLOCK_M"])
        hyper_bwd_dq_kernel[(problems * num_q_heads * tiles,)](
            q, k, v, dout, lse, delta, dq, p.q_perm, p.k_perm, p.sample_idx, p.sample_block,
            p.sample_log_weight, scale, scale_log2, *strides, part.n_q, part.n_k, num_samples, p.block_size,
            tiles_per_block, tiles, *q_geometry, **dims, **cfg)
        key_tiles_per_block = triton.cdiv(p.block_size, cfg["BLOCK_N"])
        key_tiles = key_tiles_per_block * num_blocks
        hyper_bwd_dkdv_kernel[(problems * num_kv_heads * key_tiles,)](
            q, k, v, dout, lse, delta, dk, dvv, p.q_perm, p.k_perm, scale, scale_log2, *strides,
            part.n_q, part.n_k, p.block_size, key_tiles_per_block, key_tiles, *kv_geometry, **dims, **cfg)
        if num_samples:
            dks = torch.zeros(*p.sample_idx.shape, d, dtype=torch.float32, device=q.device)
            dvs = torch.zeros(*p.sample_idx.shape, dv, dtype=torch.float32, device=q.device)
            sample_chunks = triton.cdiv(num_samples, cfg["BLOCK_N"])
            # enough programs to fill the device, each reducing a long run of queries
            segments = max(1, min(triton.cdiv(part.n_q, 4 * cfg["BLOCK_M"]),
                                  triton.cdiv(4 * _sm_count(q.device), problems * num_kv_heads * sample_chunks)))
            segment_len = triton.cdiv(triton.cdiv(part.n_q, segments), cfg["BLOCK_M"]) * cfg["BLOCK_M"]
            segments = triton.cdiv(part.n_q, segment_len)
            hyper_bwd_samples_kernel[(problems * num_kv_heads * sample_chunks * segments,)](
                q, k, v, dout, lse, delta, dks, dvs, p.q_perm, p.sample_idx, p.sample_block, p.sample_log_weight,
                scale, scale_log2, *strides, part.n_q, part.n_k, num_samples, p.block_size, sample_chunks,
                segments, segment_len, *kv_geometry[:-1], **dims, **cfg)
            _add_sample_grads(dk, dks, part, p)
            _add_sample_grads(dvv, dvs, part, p)
    return dq.to(q.dtype), dk.to(k.dtype), dvv.to(v.dtype)


def _add_sample_grads(grad: torch.Tensor, sample_grad: torch.Tensor, part: Part, plan: AttentionPlan) -> None:
    """grad (B, Hkv, Nk, D) += sample_grad (Z, Hkv, m, D) at the sampled keys' rows."""
    z, num_kv_heads, m = plan.sample_idx.shape
    problem = torch.arange(z, device=grad.device).view(z, 1, 1)
    rows = part.k_start + (problem % part.rects) * part.rect_stride + plan.sample_idx
    batch_index = (problem // part.rects).expand(z, num_kv_heads, m)
    head_index = torch.arange(num_kv_heads, device=grad.device).view(1, num_kv_heads, 1).expand(z, num_kv_heads, m)
    grad.index_put_((batch_index, head_index, rows), sample_grad, accumulate=True)


# --- torch.library ops: the parts travel as a flat tensor list and an int list -----------


_PART_INTS = 10  # has_plan, causal, merge, rects, q_start, k_start, rect_stride, n_q, n_k, block_size


def _encode(parts: list[Part]) -> tuple[list[torch.Tensor], list[int]]:
    tensors, ints = [], []
    for part in parts:
        p = part.plan
        ints += [int(p is not None), int(part.causal), int(part.merge), part.rects, part.q_start, part.k_start,
                 part.rect_stride, part.n_q, part.n_k, 0 if p is None else p.block_size]
        if p is not None:
            tensors += [p.q_perm, p.k_perm, p.sample_idx, p.sample_block, p.sample_log_weight]
    return tensors, ints


def _decode(tensors: list[torch.Tensor], ints: list[int]) -> list[Part]:
    parts, next_tensor = [], 0
    for i in range(0, len(ints), _PART_INTS):
        has_plan, causal, merge, rects, q_start, k_start, rect_stride, n_q, n_k, block_size = ints[i:i + _PART_INTS]
        plan = None
        if has_plan:
            plan = AttentionPlan(*tensors[next_tensor:next_tensor + 5], block_size=block_size)
            next_tensor += 5
        parts.append(Part(plan, bool(causal), bool(merge), rects, q_start, k_start, rect_stride, n_q, n_k))
    return parts


@torch.library.custom_op("hyperattn::attention_fwd", mutates_args=())
def attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan_tensors: list[torch.Tensor], part_ints: list[int],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    with on_device(q):
        return attention_forward(q, k, v, _decode(plan_tensors, part_ints), scale)


@attention_fwd_op.register_fake
def _(q, k, v, plan_tensors, part_ints, scale):
    batch, heads, n_q, _ = q.shape
    return q.new_empty(batch, heads, n_q, v.shape[-1]), q.new_empty(batch, heads, n_q, dtype=torch.float32)


@torch.library.custom_op("hyperattn::attention_bwd", mutates_args=())
def attention_bwd_op(
    dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, plan_tensors: list[torch.Tensor], part_ints: list[int], scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with on_device(q):
        return attention_backward(dout, dlse, q, k, v, out, lse, _decode(plan_tensors, part_ints), scale)


@attention_bwd_op.register_fake
def _(dout, dlse, q, k, v, out, lse, plan_tensors, part_ints, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, plan_tensors, part_ints, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *plan_tensors)
    ctx.part_ints, ctx.scale = part_ints, scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *plan_tensors = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_bwd_op(dout, dlse, q, k, v, out, lse, plan_tensors, ctx.part_ints, ctx.scale)
    return dq, dk, dv, [None] * len(plan_tensors), None, None


attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def triton_attention(q, k, v, plan: AttentionPlan | CausalPlan | None, scale: float, causal: bool):
    """Attention over ``plan`` (None: exact attention) with fused kernels; differentiable.

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), fp16 or bf16. Returns out
    (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) float32. Runs as the custom op
    ``hyperattn::attention_fwd`` (backward ``hyperattn::attention_bwd``), so
    ``torch.compile`` and CUDA graphs treat it as one opaque call."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    plan_tensors, part_ints = _encode(parts_of(plan, q.shape[2], k.shape[2], causal))
    return attention_fwd_op(q, k, v, plan_tensors, part_ints, float(scale))
