"""Fused Triton executors: the same plans as ``hyperattn.executors.reference``, run as kernels.

fp16 and bf16 inputs on CUDA (or any device under ``TRITON_INTERPRET=1``); the output is in
the input dtype, lse float32. Every part of the pattern is one launch that merges into fp32
accumulators; the backward recomputes probabilities from the final lse, so gradients
include every merge.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields

import torch
import triton

from hyperattn.executors.triton import on_device, tile_width
from hyperattn.executors.triton.backward import (
    add_rows_kernel,
    bwd_delta_kernel,
    dense_bwd_dkdv_kernel,
    dense_bwd_dq_kernel,
    hyper_bwd_dkdv_kernel,
    hyper_bwd_dq_kernel,
    hyper_bwd_samples_kernel,
)
from hyperattn.executors.cudnn import leaves_backward, leaves_forward, use_cudnn_leaves
from hyperattn.executors.triton.forward import dense_fwd_kernel, hyper_fwd_kernel, merge_copies_kernel, merge_leaves_kernel
from hyperattn.plan import AttentionPlan, CausalPlan


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


@dataclass(frozen=True)
class Part:
    """One launch: ``rects`` problems per batch row, problem r reading query rows
    ``q_start + r * rect_stride + [0, n_q)`` and key rows ``k_start + r * key_rect_stride + [0, n_k)``
    (``key_rect_stride`` None: ``rect_stride``; another value only for exact parts, and 0 only
    for parts that do not own their key rows: their problems add to the same key gradients).

    ``plan`` None means exact attention (causal: bottom-right within the problem).
    ``diagonal``: the causal diagonal leaves (cuDNN may run them; see ``hyperattn.executors.cudnn``).
    ``last_dq`` / ``last_dkdv``: in the backward, this part's query (key) rows get no gradient
    from parts that run after it; these parts partition the rows, so they write the final
    gradients in the input dtype. ``sinks``: a hyper part skips key rows below it (an exact
    part attends to them); its plan must come from ``hyperattn.plan.make_plan`` with the same
    sinks, which sorts them after every other key and weights their samples -inf, since the
    kernels skip them by rank and weight alone. ``exact_keys``: in problem 0 of each batch
    row (the first rectangle of a level, or the only problem), a hyper part also attends each
    query exactly to the problem's first ``exact_keys`` key rows, in the same softmax and in
    its dq; the key gradients through them come from exact parts that are ``key_grads_only``
    (they take no part in the forward and add no dq)."""

    plan: AttentionPlan | None
    causal: bool
    rects: int
    q_start: int
    k_start: int
    rect_stride: int
    n_q: int
    n_k: int
    last_dq: bool = True
    last_dkdv: bool = True
    sinks: int = 0
    diagonal: bool = False
    key_rect_stride: int | None = None
    exact_keys: int = 0
    key_grads_only: bool = False

    def __post_init__(self):
        if self.key_rect_stride is None:
            object.__setattr__(self, "key_rect_stride", self.rect_stride)
        if self.key_rect_stride != self.rect_stride and self.plan is not None:
            raise ValueError("Part.key_rect_stride differs from rect_stride only in exact parts")
        if self.shares_key_rows and self.last_dkdv:
            raise ValueError("a Part whose problems share key rows cannot own them (last_dkdv)")
        if self.exact_keys and self.plan is None:
            raise ValueError("Part.exact_keys belongs to hyper parts (an exact part attends to its keys anyway)")
        if self.key_grads_only and (self.plan is not None or self.last_dq or self.last_dkdv):
            raise ValueError("a key_grads_only Part is exact and owns no rows (its dq comes from a hyper part's "
                             "exact_keys)")

    @property
    def shares_key_rows(self) -> bool:
        """Whether several problems read (and add gradients to) the same key rows."""
        return self.key_rect_stride == 0 and self.rects > 1

    @property
    def rows(self) -> tuple[int, int, int, int]:
        """(rects, q_start, k_start, rect_stride): the kernels' row arguments (exact kernels
        also take ``key_rect_stride``)."""
        return self.rects, self.q_start, self.k_start, self.rect_stride


# Queries per problem of the exact parts that attend many queries to a few keys (the sinks
# of non-causal calls) and keys per problem of those that attend a few queries to many keys
# (the exact tail): enough problems to fill the device, none of them a long serial walk.
QUERY_CHUNK_LEN = 4096
KEY_CHUNK_LEN = 4096


def _rows_in_chunks(n: int, chunk_len: int) -> list[tuple[int, int, int]]:
    """(rects, start, length) runs covering rows [0, n): equal chunks of ``chunk_len``, then the rest."""
    rects = n // chunk_len
    runs = [(rects, 0, chunk_len)] if rects else []
    return runs + ([(1, rects * chunk_len, n - rects * chunk_len)] if n % chunk_len else [])


def parts_of(plan: AttentionPlan | CausalPlan | None, n_q: int, n_k: int, causal: bool) -> list[Part]:
    """The launches that execute ``plan`` (None: exact attention) over (n_q, n_k) rows."""
    if plan is None or isinstance(plan, AttentionPlan):
        if plan is None or not plan.sinks:
            return [Part(plan, causal and plan is None, 1, 0, 0, 0, n_q, n_k)]
        # non-causal sinks: the hyper part skips them in its block and samples, attends to them
        # exactly (output and dq) and owns every row; their key gradients come from problems of
        # QUERY_CHUNK_LEN queries adding to the same key rows
        sink_grads = [Part(None, False, rects, start, 0, length, length, plan.sinks, last_dq=False, last_dkdv=False,
                           key_rect_stride=0, key_grads_only=True)
                      for rects, start, length in _rows_in_chunks(n_q, QUERY_CHUNK_LEN)]
        return [Part(plan, False, 1, 0, 0, 0, n_q, n_k, sinks=plan.sinks, exact_keys=plan.sinks), *sink_grads]
    s = plan.schedule
    head, prefix = s.head_len, s.prefix_len + s.head_len
    if plan.window:
        raise ValueError("the fused kernels do not run an exact window yet (CausalPlan.window)")
    if plan.sinks > prefix + s.leaf_len:  # plan_hyper_attention caps them there
        raise ValueError(f"the fused kernels run at most {prefix + s.leaf_len} exact sinks here (the keys before "
                         f"the second diagonal leaf), got {plan.sinks}")
    # the diagonal leaves and the head own every query row; with the prefix's keys (when
    # there is no head) they own every key row
    parts = [Part(None, True, s.num_leaves, head, prefix, s.leaf_len, s.leaf_len, s.leaf_len, diagonal=True)]
    if head > 0:
        parts.append(Part(None, True, 1, 0, 0, 0, head, prefix))
    # exact sinks: rectangle 0 of each level attends to those among the main square's keys
    # (the rectangles 0 hold every query after the first leaf once), a hyper prefix to those
    # in the prefix (an exact prefix covers them); their key gradients come from exact parts
    # of QUERY_CHUNK_LEN queries adding to the same key rows
    prefix_sinks, main_sinks = s.split_sinks(plan.sinks)
    if plan.prefix_plan is None:
        prefix_sinks = 0
    for level, level_plan in enumerate(plan.level_plans, start=1):
        side = s.rectangle_side(level)
        parts.append(Part(level_plan, False, s.num_rectangles(level), head + side, prefix, 2 * side, side, side,
                          last_dq=False, last_dkdv=False, sinks=plan.sinks, exact_keys=main_sinks))
    if prefix > 0:  # exact (plan None) when the prefix fits in one block
        parts.append(Part(plan.prefix_plan, False, 1, head, 0, 0, s.main_len, prefix,
                          last_dq=False, last_dkdv=head == 0, sinks=plan.sinks, exact_keys=prefix_sinks))
    for k_start, n_sinks, q_start, num_rows in ((prefix, main_sinks, head + s.leaf_len, s.main_len - s.leaf_len),
                                                (0, prefix_sinks, head, s.main_len)):
        if n_sinks:
            parts += [Part(None, False, rects, q_start + start, k_start, length, length, n_sinks, last_dq=False,
                           last_dkdv=False, key_rect_stride=0, key_grads_only=True)
                      for rects, start, length in _rows_in_chunks(num_rows, QUERY_CHUNK_LEN)]
    return parts


def tail_parts(tail: int, n_k: int, causal: bool) -> tuple[list[Part], int]:
    """The exact tail (``HyperAttentionConfig.exact_tail``) as split-KV launches.

    The last ``tail`` queries attend to the keys every one of them sees in chunks of
    ``KEY_CHUNK_LEN`` keys, one problem per chunk, and to the remaining keys (causal: their
    own corner, bottom-right) in one more problem. Problem c reads copy c of the tail's query
    rows, so the parts run on ``copies`` stacked copies of them (``_tail_rows``) and write
    one partial result per copy, merged by log-sum-exp afterwards. Returns (parts, copies)."""
    seen_by_all = n_k - tail if causal else n_k
    chunks = seen_by_all // KEY_CHUNK_LEN
    if chunks < 2:
        return [Part(None, causal, 1, 0, 0, 0, tail, n_k)], 1
    split = chunks * KEY_CHUNK_LEN
    parts = [Part(None, False, chunks, 0, 0, tail, tail, KEY_CHUNK_LEN, last_dq=False, last_dkdv=False,
                  key_rect_stride=KEY_CHUNK_LEN)]
    if split < n_k:
        parts.append(Part(None, causal, 1, chunks * tail, split, 0, tail, n_k - split, last_dq=False,
                          last_dkdv=False))
    return parts, len(parts) - 1 + chunks


def _tail_rows(x: torch.Tensor, tail: int, copies: int) -> torch.Tensor:
    """The last ``tail`` rows (dim 2) of x, stacked ``copies`` times: (B, H, copies * tail, ...), contiguous."""
    rows = x[:, :, x.shape[2] - tail:]
    return rows.repeat(1, 1, copies, *([1] * (x.dim() - 3)))


# Tile configurations (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel family and head
# dim: the fastest of benchmarks/sweep_configs.py on an H200 at 131k tokens (head dims 64 and
# 128; 256 untuned); the hyper families' stages and the d64 dk/dv tile re-picked by same-call
# profiles once their row indices moved to registers (results/2026-11-29-register-indices-ab-*), and
# the d64 dk/dv tile again once its additions became relaxed atomics (results/2026-11-29-small-wins-*).
# BLOCK_M tiles queries and BLOCK_N keys in every family.
KERNEL_FAMILIES = ("hyper_fwd", "dense_fwd", "hyper_dq", "dense_dq", "hyper_dkdv", "dense_dkdv", "hyper_samples")
_CONFIGS = {
    64: dict(hyper_fwd=(128, 64, 4, 3), dense_fwd=(128, 64, 4, 3), hyper_dq=(128, 64, 4, 3),
             dense_dq=(128, 64, 8, 3), hyper_dkdv=(32, 128, 4, 3), dense_dkdv=(64, 64, 4, 3),
             hyper_samples=(64, 64, 4, 3)),
    128: dict(hyper_fwd=(64, 64, 4, 3), dense_fwd=(128, 128, 8, 3), hyper_dq=(64, 64, 4, 2),
              dense_dq=(128, 64, 8, 3), hyper_dkdv=(64, 64, 4, 2), dense_dkdv=(64, 64, 4, 2),
              hyper_samples=(64, 64, 4, 2)),
    256: {family: (64, 32, 8, 1) for family in KERNEL_FAMILIES},
}


@functools.cache
def _parse_override(text: str) -> dict[str, tuple[int, ...]]:
    """``"BM,BN,W,S"`` (every family) or ``"fwd=BM,BN,W,S;bwd_dkdv=..."`` (the families named),
    checked: four integers, known families, and the tile shapes Triton 3.6 compiles right."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        family, _, numbers = item.rpartition("=")
        families = KERNEL_FAMILIES if not family else (family.strip(),)
        values = tuple(int(x) for x in numbers.split(","))
        if len(values) != 4 or any(f not in KERNEL_FAMILIES for f in families):
            raise ValueError(f"HYPERATTN_TRITON_CONFIG: expected 'BM,BN,warps,stages' or "
                             f"'family=BM,BN,warps,stages;...' with family in {KERNEL_FAMILIES}, got {text!r}")
        for f in families:
            if f in ("hyper_fwd", "hyper_dq") and values[0] > 2 * values[1]:
                # Triton 3.6 miscompiles their register-held row indices (tl.gather) at these tiles: an
                # H200 faulted (illegal address) at 128,32,4,3 and 256,64,8,3, correct under the interpreter
                raise ValueError(f"HYPERATTN_TRITON_CONFIG: {f} needs BLOCK_M <= 2 * BLOCK_N, got {values}")
        overrides.update({f: values for f in families})
    return overrides


def _launch_config(family: str, head_dim: int, head_dim_v: int) -> dict:
    """Tile sizes and warps of one kernel family by head dim;
    ``HYPERATTN_TRITON_CONFIG`` overrides them (for tuning, see ``_parse_override``)."""
    widest = max(head_dim, head_dim_v)
    block_m, block_n, warps, stages = _CONFIGS[64 if widest <= 64 else 128 if widest <= 128 else 256][family]
    if os.environ.get("TRITON_INTERPRET") == "1":  # small tiles: the interpreter is slow
        block_m, block_n = 16, 16
    override = _parse_override(os.environ.get("HYPERATTN_TRITON_CONFIG", "")).get(family)
    if override:
        block_m, block_n, warps, stages = override
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)


def _dims(q, v) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    return dict(HEAD_DIM=d, HEAD_DIM_V=dv, D_PAD=tile_width(d), DV_PAD=tile_width(dv))


def _strides(*tensors) -> list[int]:
    out = []
    for x in tensors:
        out.extend(x.stride()[:-1] if x.dim() == 4 else x.stride()[:2])
    return out


def _queries_per_key_block(part: Part) -> int:
    """The most sorted queries any key block of a hyper part gets."""
    return min(-(-part.plan.block_size * part.n_q // part.n_k), part.n_q)  # ceil((i+1)x) - ceil(ix) <= ceil(x)


def _hyper_tiles(part: Part, block_m: int) -> tuple[int, int, int]:
    """(query tiles per key block, key blocks, tiles) of a hyper part."""
    num_blocks = -(-part.n_k // part.plan.block_size)
    tiles_per_block = -(-_queries_per_key_block(part) // block_m)
    return tiles_per_block, num_blocks, tiles_per_block * num_blocks


def _fit_tiles(cfg: dict, n_q: int, n_k: int) -> dict:
    """``cfg`` with BLOCK_M and BLOCK_N no larger than an exact part's queries and keys (powers
    of two, at least 16), on at most 4 warps when cut: the exact tail's 64 queries and the
    sinks' 16 keys would otherwise fill half or a quarter of every tile."""
    block_m = min(cfg["BLOCK_M"], tile_width(n_q))
    block_n = min(cfg["BLOCK_N"], tile_width(n_k))
    if (block_m, block_n) == (cfg["BLOCK_M"], cfg["BLOCK_N"]):
        return cfg
    return dict(cfg, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=min(cfg["num_warps"], 4))


# The most sorted queries whose rows the key-side backward kernels hold in registers at a time
REGISTER_QUERY_ROWS = 512


def query_chunk(rows: int, block_m: int) -> int:
    """``QUERY_CHUNK`` of the key-side backward kernels for loops over ``rows`` sorted queries:
    all of them where they fit in ``REGISTER_QUERY_ROWS``, as a power of two of at least ``block_m``."""
    return max(block_m, min(REGISTER_QUERY_ROWS, tile_width(rows)))


def index_widths(block_size: int, num_samples: int, block_n: int) -> dict:
    """``BLOCK_KEYS`` and ``SAMPLES`` of the hyper forward and dq kernels: the key block's and
    the samples' row indices they hold in registers, as powers of two of at least ``block_n``."""
    return dict(BLOCK_KEYS=tile_width(max(block_size, block_n)), SAMPLES=tile_width(max(num_samples, block_n)))


def _query_side_widths(part: Part, cfg: dict) -> dict:
    """The hyper forward and dq kernels' ``index_widths`` and ``EXACT_BLOCK_N``, the key tile of
    the part's exact keys: as few as cover them (at least 16, the tensor cores' smallest), at
    most the kernel's BLOCK_N; 0 without exact keys."""
    p = part.plan
    exact_block_n = min(tile_width(part.exact_keys), cfg["BLOCK_N"]) if part.exact_keys else 0
    return dict(index_widths(p.block_size, p.sample_idx.shape[-1], cfg["BLOCK_N"]), EXACT_BLOCK_N=exact_block_n)


def _launch_forward(q, k, v, out, lse, part: Part, scale: float, merge: bool) -> None:
    """One forward launch of ``part``: write its rows of out/lse, or merge into them."""
    batch, num_q_heads = q.shape[:2]
    cfg = _launch_config("dense_fwd" if part.plan is None else "hyper_fwd", q.shape[-1], v.shape[-1])
    strides = _strides(q, k, v, out, lse)
    scale_log2 = scale * math.log2(math.e)
    heads = (num_q_heads, num_q_heads // k.shape[1])
    problems = batch * part.rects * num_q_heads
    if part.plan is None:
        cfg = _fit_tiles(cfg, part.n_q, part.n_k)
        tiles = triton.cdiv(part.n_q, cfg["BLOCK_M"])
        dense_fwd_kernel[(problems * tiles,)](
            q, k, v, out, lse, scale_log2, *strides, part.n_q, part.n_k, tiles, *part.rows, part.key_rect_stride,
            *heads, CAUSAL=part.causal, MERGE=merge, **_dims(q, v), **cfg)
    else:
        p = part.plan
        tiles_per_block, _, tiles = _hyper_tiles(part, cfg["BLOCK_M"])
        hyper_fwd_kernel[(problems * tiles,)](
            q, k, v, out, lse, p.q_perm, p.k_perm, p.sample_idx, p.sample_block, p.sample_log_weight,
            scale_log2, *strides, part.n_q, part.n_k, p.sample_idx.shape[-1], p.block_size,
            tiles_per_block, tiles, *part.rows, *heads, part.sinks, part.exact_keys, MERGE=merge,
            **_query_side_widths(part, cfg), **_dims(q, v), **cfg)


def _cudnn_runs(q, k, v, part: Part, direction: str) -> bool:
    """Whether cuDNN runs this part (the diagonal leaves) in ``direction``."""
    return part.diagonal and use_cudnn_leaves(q, k, v, part.n_q, part.rects, direction)


def _tail_forward(q, k, v, out, lse, tail: int, causal: bool, scale: float) -> None:
    """Write exact attention of the last ``tail`` queries over every key they see
    (``tail_parts``) into their rows of out (B, Hq, Nq, Dv) and lse (B, Hq, Nq), contiguous."""
    parts, copies = tail_parts(tail, k.shape[2], causal)
    queries = _tail_rows(q, tail, copies)
    batch, num_q_heads = q.shape[:2]
    partial = torch.empty(batch, num_q_heads, copies * tail, v.shape[-1], dtype=torch.float32, device=q.device)
    partial_lse = torch.empty(batch, num_q_heads, copies * tail, dtype=torch.float32, device=q.device)
    for part in parts:
        _launch_forward(queries, k, v, partial, partial_lse, part, scale, merge=False)
    block = 64
    merge_copies_kernel[(batch * num_q_heads * triton.cdiv(tail, block),)](
        partial, partial_lse, out, lse, copies, tail, q.shape[2], HEAD_DIM_V=v.shape[-1],
        DV_PAD=tile_width(v.shape[-1]), BLOCK=block)


def attention_forward(q, k, v, parts: list[Part], scale: float, tail: int = 0, causal: bool = False,
                      poison: bool = False):
    """Run the parts; returns out (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) float32.

    A single forward part (``key_grads_only`` parts have none) writes the output. Otherwise
    every part merges into a float32 accumulator (lse -inf until a part writes a row), except
    the diagonal leaves where cuDNN runs them
    (``hyperattn.executors.cudnn.use_cudnn_leaves``), and one pass merges the accumulator with
    cuDNN's leaves (if any) into the output. Then the last ``tail`` rows are replaced by exact
    attention (``causal``: bottom-right) over every key they see (``_tail_forward``).
    ``poison`` fills the outputs with NaN first, so rows no part wrote show up."""
    out, lse = _parts_forward(q, k, v, parts, scale, poison)
    tail = min(tail, q.shape[2])
    if tail:
        _tail_forward(q, k, v, out, lse, tail, causal, scale)
    return out, lse


def _parts_forward(q, k, v, parts: list[Part], scale: float, poison: bool):
    batch, num_q_heads, n_q, _ = q.shape
    out = torch.empty((batch, num_q_heads, n_q, v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, num_q_heads, n_q), dtype=torch.float32, device=q.device)
    if poison:
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
    parts = [part for part in parts if not part.key_grads_only]
    if len(parts) == 1:
        _launch_forward(q, k, v, out, lse, parts[0], scale, merge=False)
        return out, lse
    acc = torch.empty(out.shape, dtype=torch.float32, device=q.device)
    acc_lse = torch.full(lse.shape, float("-inf"), dtype=torch.float32, device=q.device)
    leaf_lo = leaf_hi = 0  # query rows of cuDNN's leaves
    leaf_out, leaf_lse = out, lse
    for part in parts:
        if _cudnn_runs(q, k, v, part, "forward"):
            leaf_lo, leaf_hi = part.q_start, part.q_start + part.rects * part.rect_stride
            leaf_out, leaf_lse = leaves_forward(q, k, v, part.q_start, part.k_start, part.n_q, part.rects, scale)
        else:
            _launch_forward(q, k, v, acc, acc_lse, part, scale, merge=True)
    if out.numel():
        block = 64
        tiles = triton.cdiv(n_q, block)
        merge_leaves_kernel[(batch * num_q_heads * tiles,)](
            acc, acc_lse, leaf_out, leaf_lse, out, lse, *leaf_out.stride()[:3], *leaf_lse.stride(),
            num_q_heads, n_q, leaf_lo, leaf_hi, tiles, HEAD_DIM_V=v.shape[-1], DV_PAD=tile_width(v.shape[-1]),
            BLOCK=block)
    return out, lse


def _launch_dense_backward(q, k, v, dout, lse, delta, dq_acc, dq, dk_acc, dk, dv_acc, dv, part: Part, scale: float,
                           dq_mode: str, dkdv_mode: str, cfgs: dict) -> None:
    """The dq (unless ``part.key_grads_only``) and the dk/dv launch of an exact part
    (``write_rows`` modes ``dq_mode``, ``dkdv_mode``)."""
    batch, num_q_heads = q.shape[:2]
    num_kv_heads, kv_seq_len = k.shape[1], k.shape[2]
    group = num_q_heads // num_kv_heads
    problems = batch * part.rects
    strides = _strides(q, k, v, dout, lse)
    scale_log2 = scale * math.log2(math.e)
    dims = _dims(q, v)
    cfg_dq, cfg_dkdv = (_fit_tiles(cfgs[f], part.n_q, part.n_k) for f in ("dense_dq", "dense_dkdv"))
    q_tiles = triton.cdiv(part.n_q, cfg_dq["BLOCK_M"])
    k_tiles = triton.cdiv(part.n_k, cfg_dkdv["BLOCK_N"])
    if not part.key_grads_only:
        dense_bwd_dq_kernel[(problems * num_q_heads * q_tiles,)](
            q, k, v, dout, lse, delta, dq_acc, dq, scale, scale_log2, *strides, part.n_q, part.n_k, q_tiles,
            *part.rows, part.key_rect_stride, num_q_heads, group, CAUSAL=part.causal, WRITE=dq_mode, **dims, **cfg_dq)
    dense_bwd_dkdv_kernel[(problems * num_kv_heads * k_tiles,)](
        q, k, v, dout, lse, delta, dk_acc, dk, dv_acc, dv, scale, scale_log2, *strides, part.n_q, part.n_k,
        k_tiles, *part.rows, part.key_rect_stride, num_kv_heads, group, kv_seq_len, CAUSAL=part.causal,
        WRITE=dkdv_mode, **dims, **cfg_dkdv)  # "add" where problems share key rows (never their owners)


def _tail_backward(dout, q, k, v, lse, delta, tail: int, causal: bool, scale: float, cfgs: dict):
    """Gradients of ``_tail_forward``'s rows: dq of the last ``tail`` queries (B, Hq, tail, D)
    and dk, dv of every key (B, Hkv, Nk, D / Dv), float32. The tail's parts cover every key
    row once, so dk and dv need no zero fill: they start the backward's accumulators."""
    parts, copies = tail_parts(tail, k.shape[2], causal)
    queries, douts, lses, deltas = (_tail_rows(x, tail, copies) for x in (q, dout, lse, delta))
    dq = torch.empty(queries.shape, dtype=torch.float32, device=q.device)
    dk = torch.empty(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.empty(v.shape, dtype=torch.float32, device=q.device)
    for part in parts:
        _launch_dense_backward(queries, k, v, douts, lses, deltas, dq, dq, dk, dk, dv, dv, part, scale, "store",
                               "store", cfgs)
    return dq.unflatten(2, (copies, tail)).sum(2), dk, dv


def _add_leaf_grads(grads, acc: dict, leaf_grads, b: int, kv_lo: int, kv_hi: int, group: int, part: Part) -> None:
    """Finish the leaf rows of batch row ``b``, kv heads [kv_lo, kv_hi) and their query heads in
    the final gradients ``grads`` (dq, dk, dv): cuDNN's ``leaf_grads`` (1, heads, rows, *) plus
    the fp32 accumulator where the levels added into one (``add_rows_kernel``), else as they are."""
    q_heads, kv_heads = slice(kv_lo * group, kv_hi * group), slice(kv_lo, kv_hi)
    for name, grad, leaf_grad, start, heads in zip(("dq", "dk", "dv"), grads, leaf_grads,
                                                   (part.q_start, part.k_start, part.k_start),
                                                   (q_heads, kv_heads, kv_heads)):
        rows = grad[b:b + 1, heads]  # contiguous, as the accumulator's: one batch row, consecutive heads
        if name not in acc:
            rows[:, :, start:start + leaf_grad.shape[2]] = leaf_grad
            continue
        if leaf_grad.stride(-1) != 1:
            leaf_grad = leaf_grad.contiguous()
        block, width = 64, grad.shape[-1]
        tiles = triton.cdiv(leaf_grad.shape[2], block)
        add_rows_kernel[(rows.shape[1] * tiles,)](
            acc[name][b:b + 1, heads], leaf_grad, rows, *leaf_grad.stride()[:3], rows.shape[1], rows.shape[2],
            start, leaf_grad.shape[2], tiles, WIDTH=width, W_PAD=tile_width(width), BLOCK=block)


def attention_backward(dout, dlse, q, k, v, out, lse, parts: list[Part], scale: float, tail: int = 0,
                       causal: bool = False, poison: bool = False):
    """Gradients of ``attention_forward``'s (out, lse) with respect to q, k, v, in their dtypes.

    Parts that share gradient rows add into zeroed fp32 accumulators; the parts that own
    the rows (``Part.last_dq``, ``Part.last_dkdv``) run last and write the final gradients.
    Without an lse gradient, cuDNN may run the diagonal leaves
    (``hyperattn.executors.cudnn.use_cudnn_leaves``), over groups of heads
    (``hyperattn.executors.cudnn.LEAF_BACKWARD_ELEMENTS``); one addition per gradient and group
    (``_add_leaf_grads``) finishes their rows.
    The exact tail's rows reach the parts with lse +inf, so the parts give them no gradient
    (their probabilities are 0); the tail's own launches add theirs.
    ``poison`` fills the gradients with NaN first, so rows no part wrote show up."""
    batch, num_q_heads, n_q, d = q.shape
    num_kv_heads, n_k, dv = k.shape[1], k.shape[2], v.shape[-1]
    dout = dout.contiguous()
    dims = _dims(q, v)
    delta = torch.empty(batch, num_q_heads, n_q, dtype=torch.float32, device=q.device)
    if delta.numel():
        bwd_delta_kernel[(triton.cdiv(delta.numel(), 64),)](
            out.contiguous(), dout, None if dlse is None else dlse.float().contiguous(), delta, delta.numel(), dv,
            HAS_DLSE=dlse is not None, DV_PAD=dims["DV_PAD"], BLOCK=64)
    grads = [torch.empty(batch, num_q_heads, n_q, d, dtype=q.dtype, device=q.device),
             torch.empty(batch, num_kv_heads, n_k, d, dtype=k.dtype, device=q.device),
             torch.empty(batch, num_kv_heads, n_k, dv, dtype=v.dtype, device=q.device)]
    if poison:
        for grad in grads:
            grad.fill_(float("nan"))
    dq, dk, dvv = grads
    # fp32 accumulators, allocated once some part must add into them
    acc = {}

    def accumulator(name, like):
        if name not in acc:
            acc[name] = torch.zeros(like.shape, dtype=torch.float32, device=q.device)
        return acc[name]

    def write_mode(name, last):
        return ("finish" if name in acc else "store") if last else "add"

    cfgs = {f: _launch_config(f, d, dv) for f in KERNEL_FAMILIES if f not in ("hyper_fwd", "dense_fwd")}
    tail = min(tail, n_q)
    if tail:
        dq_tail, acc["dk"], acc["dv"] = _tail_backward(dout, q, k, v, lse, delta, tail, causal, scale, cfgs)
        lse = lse.clone()
        lse[:, :, n_q - tail:] = float("inf")
    strides = _strides(q, k, v, dout, lse)
    scale_log2 = scale * math.log2(math.e)
    group = num_q_heads // num_kv_heads
    cudnn_part = next((part for part in parts if dlse is None and _cudnn_runs(q, k, v, part, "backward")), None)
    # parts that own rows run last, so that every addition lands before the final write
    for part in sorted(parts, key=lambda part: (part.last_dq, part.last_dkdv)):
        if part is cudnn_part:
            continue
        kv_heads = (num_kv_heads, group, n_k)
        problems = batch * part.rects
        p = part.plan
        num_samples = 0 if p is None else p.sample_idx.shape[-1]
        if num_samples:
            cfg = cfgs["hyper_samples"]
            block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
            sample_chunks = triton.cdiv(num_samples, block_n)
            # enough programs to fill the device, each reducing a long run of queries
            segments = max(1, min(triton.cdiv(part.n_q, 4 * block_m),
                                  triton.cdiv(4 * _sm_count(q.device), problems * num_kv_heads * sample_chunks)))
            segment_len = triton.cdiv(triton.cdiv(part.n_q, segments), block_m) * block_m
            segments = triton.cdiv(part.n_q, segment_len)
            hyper_bwd_samples_kernel[(problems * num_kv_heads * sample_chunks * segments,)](
                q, k, v, dout, lse, delta, accumulator("dk", dk), accumulator("dv", dvv),
                p.q_perm, p.sample_idx, p.sample_block, p.sample_log_weight,
                scale, scale_log2, *strides, part.n_q, part.n_k, num_samples, p.block_size, sample_chunks,
                segments, segment_len, *part.rows, *kv_heads, **dims, **cfg,
                QUERY_CHUNK=query_chunk(segment_len, block_m))
        dq_mode, dkdv_mode = write_mode("dq", part.last_dq), write_mode("dk", part.last_dkdv)
        dq_acc = accumulator("dq", dq) if dq_mode != "store" and not part.key_grads_only else dq
        dk_acc, dv_acc = (accumulator("dk", dk), accumulator("dv", dvv)) if dkdv_mode != "store" else (dk, dvv)
        if p is None:
            _launch_dense_backward(q, k, v, dout, lse, delta, dq_acc, dq, dk_acc, dk, dv_acc, dvv, part, scale,
                                   dq_mode, dkdv_mode, cfgs)
            continue
        cfg_dq, cfg_dkdv = cfgs["hyper_dq"], cfgs["hyper_dkdv"]
        tiles_per_block, num_blocks, tiles = _hyper_tiles(part, cfg_dq["BLOCK_M"])
        hyper_bwd_dq_kernel[(problems * num_q_heads * tiles,)](
            q, k, v, dout, lse, delta, dq_acc, dq, p.q_perm, p.k_perm, p.sample_idx, p.sample_block,
            p.sample_log_weight, scale, scale_log2, *strides, part.n_q, part.n_k, num_samples, p.block_size,
            tiles_per_block, tiles, *part.rows, num_q_heads, group, part.sinks, part.exact_keys, WRITE=dq_mode,
            **_query_side_widths(part, cfg_dq), **dims, **cfg_dq)
        key_tiles_per_block = triton.cdiv(p.block_size, cfg_dkdv["BLOCK_N"])
        key_tiles = key_tiles_per_block * num_blocks
        hyper_bwd_dkdv_kernel[(problems * num_kv_heads * key_tiles,)](
            q, k, v, dout, lse, delta, dk_acc, dk, dv_acc, dvv, p.q_perm, p.k_perm, scale, scale_log2, *strides,
            part.n_q, part.n_k, p.block_size, key_tiles_per_block, key_tiles, *part.rows, *kv_heads, part.sinks,
            WRITE=dkdv_mode, **dims, **cfg_dkdv,
            QUERY_CHUNK=query_chunk(_queries_per_key_block(part), cfg_dkdv["BLOCK_M"]))
    if cudnn_part is not None:
        part = cudnn_part
        for b, kv_lo, kv_hi, *leaf_grads in leaves_backward(dout, q, k, v, out, lse, part.q_start, part.k_start,
                                                             part.n_q, part.rects, scale):
            _add_leaf_grads(grads, acc, leaf_grads, b, kv_lo, kv_hi, group, part)
            del leaf_grads  # so that one cuDNN call's gradients at most are live
    if tail:
        dq[:, :, n_q - tail:] = dq_tail
    return dq, dk, dvv


# --- torch.library ops: the parts travel as a flat tensor list and an int list -----------


_PART_FIELDS = [f for f in fields(Part) if f.name != "plan"]  # ints, then has_plan, block_size and sinks


def _encode(parts: list[Part]) -> tuple[list[torch.Tensor], list[int]]:
    tensors, ints = [], []
    for part in parts:
        p = part.plan
        ints += [int(getattr(part, f.name)) for f in _PART_FIELDS]
        ints += [int(p is not None), 0 if p is None else p.block_size, 0 if p is None else p.sinks]
        if p is not None:
            tensors += [p.q_perm, p.k_perm, p.sample_idx, p.sample_block, p.sample_log_weight]
    return tensors, ints


def _decode(tensors: list[torch.Tensor], ints: list[int]) -> list[Part]:
    parts, next_tensor, width = [], 0, len(_PART_FIELDS) + 3
    for i in range(0, len(ints), width):
        *values, has_plan, block_size, sinks = ints[i:i + width]
        plan = None
        if has_plan:
            plan = AttentionPlan(*tensors[next_tensor:next_tensor + 5], block_size=block_size, sinks=sinks)
            next_tensor += 5
        values = {f.name: bool(x) if f.type == "bool" else x for f, x in zip(_PART_FIELDS, values)}
        parts.append(Part(plan, **values))
    return parts


@torch.library.custom_op("hyperattn::attention_fwd", mutates_args=())
def attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan_tensors: list[torch.Tensor], part_ints: list[int],
    scale: float, tail: int, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    with on_device(q):
        return attention_forward(q, k, v, _decode(plan_tensors, part_ints), scale, tail, causal)


@attention_fwd_op.register_fake
def _(q, k, v, plan_tensors, part_ints, scale, tail, causal):
    batch, heads, n_q, _ = q.shape
    return q.new_empty(batch, heads, n_q, v.shape[-1]), q.new_empty(batch, heads, n_q, dtype=torch.float32)


@torch.library.custom_op("hyperattn::attention_bwd", mutates_args=())
def attention_bwd_op(
    dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, plan_tensors: list[torch.Tensor], part_ints: list[int], scale: float,
    tail: int, causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with on_device(q):
        return attention_backward(dout, dlse, q, k, v, out, lse, _decode(plan_tensors, part_ints), scale, tail, causal)


@attention_bwd_op.register_fake
def _(dout, dlse, q, k, v, out, lse, plan_tensors, part_ints, scale, tail, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, plan_tensors, part_ints, scale, tail, causal = inputs
    out, lse = output
    ctx.set_materialize_grads(False)  # an unused lse gets no gradient (None), so cuDNN can run the leaves
    ctx.save_for_backward(q, k, v, out, lse, *plan_tensors)
    ctx.part_ints, ctx.scale, ctx.tail, ctx.causal = part_ints, scale, tail, causal


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, *plan_tensors = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_bwd_op(dout, dlse, q, k, v, out, lse, plan_tensors, ctx.part_ints, ctx.scale, ctx.tail,
                                  ctx.causal)
    return dq, dk, dv, [None] * len(plan_tensors), None, None, None, None


attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def triton_attention(q, k, v, plan: AttentionPlan | CausalPlan | None, scale: float, causal: bool, tail: int = 0):
    """Attention over ``plan`` (None: exact attention) with fused kernels; differentiable.

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), fp16 or bf16. Returns out
    (B, Hq, Nq, Dv) in q's dtype and lse (B, Hq, Nq) float32. ``tail``: the last ``tail``
    rows are exact attention over every key they see (``HyperAttentionConfig.exact_tail``),
    computed in the same op. Runs as the custom op
    ``hyperattn::attention_fwd`` (backward ``hyperattn::attention_bwd``), so
    ``torch.compile`` and CUDA graphs treat it as one opaque call."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    plan_tensors, part_ints = _encode(parts_of(plan, q.shape[2], k.shape[2], causal))
    return attention_fwd_op(q, k, v, plan_tensors, part_ints, float(scale), tail, causal)
