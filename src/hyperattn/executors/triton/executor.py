"""The fused Triton executor: runs a launch list (``hyperattn.plan.launch``) as kernel launches.

fp16 and bf16 inputs on CUDA (or any device under ``TRITON_INTERPRET=1``); the output is in
the input dtype, lse float32. Every part of the pattern is one launch that merges into fp32
accumulators; the backward recomputes probabilities from the final lse, so gradients
include every merge. ``hyperattn.executors.triton.op`` wraps this in a custom op.
"""

from __future__ import annotations

import math

import torch
import triton

from hyperattn.executors.cudnn import heavy_keys_forward, leaves_backward, leaves_forward, use_cudnn_leaves
from hyperattn.executors.triton.backward import (
    add_rows_kernel,
    bwd_delta_kernel,
    dense_bwd_dkdv_kernel,
    dense_bwd_dq_kernel,
    hyper_bwd_dkdv_kernel,
    hyper_bwd_dq_kernel,
    hyper_bwd_samples_kernel,
)
from hyperattn.executors.triton.common import NO_BLOCK
from hyperattn.executors.triton.forward import (dense_fwd_kernel, hyper_fwd_kernel, merge_copies_kernel,
                                               merge_leaves_kernel)
from hyperattn.executors.triton.selected import selected_backward, selected_forward
from hyperattn.executors.triton.tiles import (KERNEL_FAMILIES, fit_tiles, index_widths, launch_config, query_chunk,
                                             tile_width)
from hyperattn.plan.blocks import num_key_blocks
from hyperattn.plan.launch import Part, tail_parts


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def _rows(part: Part) -> tuple[int, int, int, int]:
    """(problems per batch row, first query row, first key row, query stride): the kernels' row
    arguments (exact kernels also take the key stride)."""
    return part.count, part.query_start, part.key_start, part.rects.queries.stride


def _exact_rows(part: Part) -> tuple[int, int, int, int, int]:
    """``_rows`` and the key stride: the exact kernels' row arguments."""
    return (*_rows(part), part.rects.keys.stride)


def _tail_rows(x: torch.Tensor, tail: int, copies: int) -> torch.Tensor:
    """The last ``tail`` rows (dim 2) of x, stacked ``copies`` times: (B, H, copies * tail, ...), contiguous."""
    rows = x[:, :, x.shape[2] - tail:]
    return rows.repeat(1, 1, copies, *([1] * (x.dim() - 3)))


def _dims(q, v) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    return dict(HEAD_DIM=d, HEAD_DIM_V=dv, D_PAD=tile_width(d), DV_PAD=tile_width(dv))


def _strides(*tensors) -> list[int]:
    out = []
    for x in tensors:
        out.extend(x.stride()[:-1] if x.dim() == 4 else x.stride()[:2])
    return out


def _query_blocks(plan) -> torch.Tensor | None:
    """The q_block the hyper kernels take: the plan's, or with selected blocks (which replace the
    LSH block) every query in no key block (``NO_BLOCK``), so that their block loops run empty."""
    if plan.selected is None:
        return plan.q_block
    return torch.full(plan.selected.shape[:3], NO_BLOCK.value, dtype=torch.int64, device=plan.selected.device)


def _hyper_tiles(part: Part, block_m: int) -> tuple[int, int, int]:
    """(query tiles per key block, key blocks, tiles) of a hyper part; under the bucket rule
    (``AttentionPlan.q_block``) or with selected blocks the tiles are consecutive sorted queries,
    whatever their blocks."""
    num_blocks = num_key_blocks(part.num_keys, part.plan.block_size)
    if part.plan.q_block is not None or part.plan.selected is not None:
        return 0, num_blocks, triton.cdiv(part.num_queries, block_m)
    tiles_per_block = -(-part.queries_per_key_block // block_m)
    return tiles_per_block, num_blocks, tiles_per_block * num_blocks


def _block_query_offsets(q_block: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """int32 (Z, Hq, num_blocks + 1): the first sorted query rank of each key block under the
    bucket rule (``q_block`` (Z, Hq, Nq) is non-decreasing), then Nq."""
    blocks = torch.arange(num_blocks + 1, device=q_block.device).expand(*q_block.shape[:-1], -1).contiguous()
    return torch.searchsorted(q_block, blocks, out_int32=True)


def _query_side_widths(part: Part, cfg: dict, num_samples: int) -> dict:
    """The hyper forward and dq kernels' ``index_widths`` (for ``num_samples`` samples) and
    ``EXACT_BLOCK_N``, the key tile of the part's exact keys: as few as cover them (at least 16,
    the tensor cores' smallest), at most the kernel's BLOCK_N; 0 without exact keys."""
    exact_block_n = min(tile_width(part.exact_keys), cfg["BLOCK_N"]) if part.exact_keys else 0
    return dict(index_widths(part.plan.block_size, num_samples, cfg["BLOCK_N"]), EXACT_BLOCK_N=exact_block_n)


def _without_heavy(plan_tensor: torch.Tensor, heavy: int) -> torch.Tensor:
    """A plan's sample tensor (Z, Hkv, heavy + samples) without its leading heavy keys, contiguous (at
    least one element: the kernels take no empty tensor)."""
    rest = plan_tensor[..., heavy:].contiguous()
    return rest if rest.numel() else plan_tensor.new_zeros(1)


def _launch_forward(q, k, v, out, lse, part: Part, scale: float, merge: bool, heavy_done=None) -> None:
    """One forward launch of ``part``: write its rows of out/lse, or merge into them. ``heavy_done``:
    the result of the part's heavy keys (``heavy_keys_forward``), which the launch then folds in
    rather than attending to them."""
    batch, num_q_heads = q.shape[:2]
    cfg = launch_config("dense_fwd" if part.plan is None else "hyper_fwd", q.shape[-1], v.shape[-1])
    strides = _strides(q, k, v, out, lse)
    scale_log2 = scale * math.log2(math.e)
    heads = (num_q_heads, num_q_heads // k.shape[1])
    problems = batch * part.count * num_q_heads
    if part.plan is None:
        cfg = fit_tiles(cfg, part.num_queries, part.num_keys)
        tiles = triton.cdiv(part.num_queries, cfg["BLOCK_M"])
        dense_fwd_kernel[(problems * tiles,)](
            q, k, v, out, lse, scale_log2, *strides, part.num_queries, part.num_keys, tiles, *_exact_rows(part),
            *heads, part.window_edge, CAUSAL=part.causal, BAND=part.band, MERGE=merge, **_dims(q, v), **cfg)
    else:
        p = part.plan
        tiles_per_block, _, tiles = _hyper_tiles(part, cfg["BLOCK_M"])
        samples = (p.sample_idx, p.sample_block, p.sample_log_weight)
        heavy_out = heavy_lse = None
        num_samples = p.sample_idx.shape[-1]
        if heavy_done is not None:
            heavy_out, heavy_lse = heavy_done
            samples = tuple(_without_heavy(x, p.heavy) for x in samples)
            num_samples -= p.heavy
        hyper_fwd_kernel[(problems * tiles,)](
            q, k, v, out, lse, p.q_perm, p.k_perm, *samples, _query_blocks(p), heavy_out, heavy_lse,
            scale_log2, *strides, *(heavy_out.stride()[:4] if heavy_done else (0,) * 4),
            *(heavy_lse.stride() if heavy_done else (0,) * 4), part.num_queries, part.num_keys, num_samples,
            p.block_size, tiles_per_block, tiles, *_rows(part), *heads, part.sinks, part.exact_keys, p.heavy,
            part.window_edge, MERGE=merge, WINDOW=part.skips_window,
            **_query_side_widths(part, cfg, num_samples), **_dims(q, v), **cfg)
        if p.selected is not None:
            selected_forward(q, k, v, out, lse, part, scale, _dims(q, v), strides)


def _cudnn_runs(q, k, v, part: Part, direction: str) -> bool:
    """Whether cuDNN runs this part (the diagonal leaves) in ``direction``."""
    return part.diagonal and use_cudnn_leaves(q, k, v, part.num_queries, part.count, direction)


# The narrowest head dim whose heavy keys cuDNN attends: at 64 the fused kernel is faster (H100, 131k causal
# forward, 448 heavy keys: 18.76 ms in the kernel against 20.43 by cuDNN; at 128, 28.54 against 27.74)
HEAVY_BY_CUDNN_MIN_HEAD_DIM = 128


def _heavy_by_cudnn(q, k, v, part: Part, scale: float):
    """cuDNN's result for the heavy keys of a hyper part (``heavy_keys_forward``), or None where the
    fused kernel attends to them: no heavy keys, an exact window (whose keys each query skips), a head
    dim below ``HEAVY_BY_CUDNN_MIN_HEAD_DIM`` or cuDNN not running them (``use_cudnn_leaves``,
    direction "heavy")."""
    p = part.plan
    if p is None or not p.heavy or part.skips_window or q.shape[-1] < HEAVY_BY_CUDNN_MIN_HEAD_DIM:
        return None
    if not use_cudnn_leaves(q, k, v, (part.num_queries, p.heavy), part.count, "heavy"):
        return None
    rows = p.sample_idx[..., :p.heavy] + part.key_start + part.rects.keys.stride * torch.arange(
        part.count, device=q.device).repeat(q.shape[0])[:, None, None]
    return heavy_keys_forward(q, k, v, rows, part.query_start, part.rects.queries.stride, part.num_queries,
                              part.count, scale)


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
    cuDNN's leaves (if any) into the output. Where cuDNN runs them, the heavy keys of each hyper part
    are attended by cuDNN first (``_heavy_by_cudnn``: one dense call over the gathered keys, a transient
    output of the part's query rows) and folded into the part's rows by its kernel. Then the last
    ``tail`` rows are replaced by exact attention (``causal``: bottom-right) over every key they
    see (``_tail_forward``). ``poison`` fills the outputs with NaN first, so rows no part wrote show up."""
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
    if len(parts) == 1 and (parts[0].plan is None or parts[0].plan.selected is None):  # selected blocks merge
        _launch_forward(q, k, v, out, lse, parts[0], scale, merge=False,
                        heavy_done=_heavy_by_cudnn(q, k, v, parts[0], scale))
        return out, lse
    acc = torch.empty(out.shape, dtype=torch.float32, device=q.device)
    acc_lse = torch.full(lse.shape, float("-inf"), dtype=torch.float32, device=q.device)
    leaf_lo = leaf_hi = 0  # query rows of cuDNN's leaves
    leaf_out, leaf_lse = out, lse
    for part in parts:
        if _cudnn_runs(q, k, v, part, "forward"):
            leaf_lo, leaf_hi = part.query_start, part.query_start + part.count * part.rects.queries.stride
            leaf_out, leaf_lse = leaves_forward(q, k, v, part.query_start, part.key_start,
                                                part.num_queries, part.count, scale)
        else:
            _launch_forward(q, k, v, acc, acc_lse, part, scale, merge=True,
                            heavy_done=_heavy_by_cudnn(q, k, v, part, scale))
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
    problems = batch * part.count
    strides = _strides(q, k, v, dout, lse)
    scale_log2 = scale * math.log2(math.e)
    dims = _dims(q, v)
    cfg_dq, cfg_dkdv = (fit_tiles(cfgs[f], part.num_queries, part.num_keys) for f in ("dense_dq", "dense_dkdv"))
    q_tiles = triton.cdiv(part.num_queries, cfg_dq["BLOCK_M"])
    k_tiles = triton.cdiv(part.num_keys, cfg_dkdv["BLOCK_N"])
    if not part.key_grads_only:
        dense_bwd_dq_kernel[(problems * num_q_heads * q_tiles,)](
            q, k, v, dout, lse, delta, dq_acc, dq, scale, scale_log2, *strides, part.num_queries, part.num_keys,
            q_tiles, *_exact_rows(part), num_q_heads, group, part.window_edge, CAUSAL=part.causal, BAND=part.band,
            WRITE=dq_mode, **dims, **cfg_dq)
    dense_bwd_dkdv_kernel[(problems * num_kv_heads * k_tiles,)](
        q, k, v, dout, lse, delta, dk_acc, dk, dv_acc, dv, scale, scale_log2, *strides, part.num_queries, part.num_keys,
        k_tiles, *_exact_rows(part), num_kv_heads, group, kv_seq_len, part.window_edge, CAUSAL=part.causal,
        BAND=part.band, WRITE=dkdv_mode, **dims, **cfg_dkdv)  # "add" where problems share key rows (never their owners)


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
                                                   (part.query_start, part.key_start, part.key_start),
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
    the rows (``Part.owns_queries``, ``Part.owns_keys``) run last and write the final gradients.
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

    cfgs = {f: launch_config(f, d, dv) for f in KERNEL_FAMILIES if f not in ("hyper_fwd", "dense_fwd")}
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
    for part in sorted(parts, key=lambda part: (part.owns_queries, part.owns_keys)):
        if part is cudnn_part:
            continue
        kv_heads = (num_kv_heads, group, n_k)
        problems = batch * part.count
        p = part.plan
        num_samples = 0 if p is None else p.sample_idx.shape[-1]
        q_block = None if p is None else _query_blocks(p)
        if p is not None and p.selected is not None:  # into the accumulators, before the part's own writes
            selected_backward(q, k, v, dout, lse, delta, accumulator("dq", dq), accumulator("dk", dk),
                              accumulator("dv", dvv), part, scale, dims, strides)
        if num_samples:
            cfg = cfgs["hyper_samples"]
            block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
            sample_chunks = triton.cdiv(num_samples, block_n)
            # enough programs to fill the device, each reducing a long run of queries
            segments = max(1, min(triton.cdiv(part.num_queries, 4 * block_m),
                                  triton.cdiv(4 * _sm_count(q.device), problems * num_kv_heads * sample_chunks)))
            segment_len = triton.cdiv(triton.cdiv(part.num_queries, segments), block_m) * block_m
            segments = triton.cdiv(part.num_queries, segment_len)
            hyper_bwd_samples_kernel[(problems * num_kv_heads * sample_chunks * segments,)](
                q, k, v, dout, lse, delta, accumulator("dk", dk), accumulator("dv", dvv),
                p.q_perm, p.sample_idx, p.sample_block, p.sample_log_weight, q_block,
                scale, scale_log2, *strides, part.num_queries, part.num_keys, num_samples, p.block_size, sample_chunks,
                segments, segment_len, *_rows(part), *kv_heads, part.window_edge, WINDOW=part.skips_window, **dims, **cfg,
                QUERY_CHUNK=query_chunk(segment_len, block_m))
        dq_mode, dkdv_mode = write_mode("dq", part.owns_queries), write_mode("dk", part.owns_keys)
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
            p.sample_log_weight, q_block, scale, scale_log2, *strides, part.num_queries, part.num_keys,
            num_samples,
            p.block_size, tiles_per_block, tiles, *_rows(part), num_q_heads, group, part.sinks, part.exact_keys,
            p.heavy, part.window_edge, WRITE=dq_mode, WINDOW=part.skips_window,
            **_query_side_widths(part, cfg_dq, num_samples), **dims, **cfg_dq)
        key_tiles_per_block = triton.cdiv(p.block_size, cfg_dkdv["BLOCK_N"])
        key_tiles = key_tiles_per_block * num_blocks
        hyper_bwd_dkdv_kernel[(problems * num_kv_heads * key_tiles,)](
            q, k, v, dout, lse, delta, dk_acc, dk, dv_acc, dvv, p.q_perm, p.k_perm,
            None if q_block is None else _block_query_offsets(q_block, num_blocks), scale, scale_log2, *strides,
            part.num_queries, part.num_keys, p.block_size, key_tiles_per_block, key_tiles, *_rows(part), *kv_heads,
            part.sinks, p.heavy, num_blocks, part.window_edge, WRITE=dkdv_mode, WINDOW=part.skips_window, **dims, **cfg_dkdv,
            QUERY_CHUNK=query_chunk(part.queries_per_key_block, cfg_dkdv["BLOCK_M"]))
    if cudnn_part is not None:
        part = cudnn_part
        for b, kv_lo, kv_hi, *leaf_grads in leaves_backward(dout, q, k, v, out, lse, part.query_start, part.key_start,
                                                             part.num_queries, part.count, scale):
            _add_leaf_grads(grads, acc, leaf_grads, b, kv_lo, kv_hi, group, part)
            del leaf_grads  # so that one cuDNN call's gradients at most are live
    if tail:
        dq[:, :, n_q - tail:] = dq_tail
    return dq, dk, dvv
