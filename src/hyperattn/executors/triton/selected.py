"""The selected blocks (``HyperAttentionConfig.selected_blocks``): each query against its own few
runs of consecutive keys.

Two forms. Per row (``selected_fwd_kernel``, ``selected_bwd_kernel``): each query gathers its own keys
alone, on the CUDA cores. Per tile (``selected_tiles_*``): a tile of consecutive queries runs over the
distinct blocks its rows chose (``tile_unions``) on the tensor cores, each row masked to its own blocks
or, with ``selection_tile``, to those its tile's earlier rows chose too.

The forward merges the selected keys into the part accumulators like any other part; the backward
adds dq, dk and dv into the fp32 accumulators, dk and dv by atomics (the keys a block of queries
selected are scattered). Heavy keys (``dead``), the sinks (key rows below ``sinks``) and, with
``WINDOW``, each query's exact-window keys take no part: other parts attend to them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hyperattn.executors.triton.common import LOG2E, columns, head_base, load_rows, program_coords
from hyperattn.executors.triton.forward import finish_rows, open_query_tile, softmax_step
from hyperattn.executors.triton.tiles import tile_width
from hyperattn.plan.selection import first_of_runs

# Elements of a program's gathered (queries, keys of a block, head dim) tile, which sets its queries
# (between 4 and 64), on SELECTED_WARPS warps
SELECTED_TILE_ELEMENTS = 8192
SELECTED_WARPS = 4


@triton.jit
def _query_tile(num_tiles, num_q_heads, group, rects, n_q, q_start, rect_stride, BLOCK_M: tl.constexpr):
    """This program's (problem, head) pair and kv pair (zh, zk), head, kv head, batch row, rectangle,
    and its tile of consecutive queries: offsets, mask, int64 rows."""
    tile, zh, z, h, batch, r = program_coords(num_tiles, num_q_heads, rects)
    hk = h // group
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    q_rows = (q_start + r * rect_stride + offs_m).to(tl.int64)
    return zh, z * (num_q_heads // group) + hk, h, hk, batch, r, offs_m, offs_m < n_q, q_rows


@triton.jit
def _selected_keys(Sel, Dead, zh, zk, s, offs_m, rmask, q_rows, n_q, n_k, key_row0, sinks, window_edge,
                   NUM_SEL: tl.constexpr, SEL_BLOCK: tl.constexpr, SEL_PAD: tl.constexpr, WINDOW: tl.constexpr):
    """Key rows (int64 (BM, SEL_PAD)) of each row's selected block ``s`` and which of them it
    attends to: inside the block and the problem, not dead (heavy), not a sink, outside its window."""
    blk = tl.load(Sel + (zh.to(tl.int64) * n_q + offs_m) * NUM_SEL + s, mask=rmask, other=0)
    offs_j = tl.arange(0, SEL_PAD)
    keys = blk[:, None] * SEL_BLOCK + offs_j[None, :]
    inside = rmask[:, None] & (offs_j < SEL_BLOCK)[None, :] & (keys < n_k)
    dead = tl.load(Dead + zk.to(tl.int64) * n_k + keys, mask=inside, other=1)
    k_rows = (key_row0 + keys).to(tl.int64)
    visible = inside & (dead == 0) & (k_rows >= sinks)
    if WINDOW:
        visible = visible & (k_rows < (q_rows + window_edge)[:, None])
    return k_rows, visible


@triton.jit
def _gather_keys(base, k_rows, stride_n, offs, mask, col_mask):
    """(BM, SEL_PAD, C) fp32: row ``k_rows`` of each (query, key), 0 where masked."""
    ptrs = base + k_rows[:, :, None] * stride_n + offs[None, None, :]
    return tl.load(ptrs, mask=mask[:, :, None] & col_mask[None, None, :], other=0.0).to(tl.float32)


@triton.jit
def selected_fwd_kernel(
    Q, K, V, Out, Lse, Sel, Dead,
    scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles, rects, q_start, k_start, rect_stride,
    num_q_heads, group, sinks, window_edge,
    WINDOW: tl.constexpr, NUM_SEL: tl.constexpr, SEL_BLOCK: tl.constexpr, SEL_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """One program: a tile of consecutive queries of one (problem, head), each against the keys of
    its ``NUM_SEL`` selected blocks (Sel (Z, Hq, n_q, NUM_SEL) block indices; Dead (Z, Hkv, n_k)
    uint8, 1 for heavy keys), merged into Out/Lse."""
    zh, zk, h, hk, batch, r, offs_m, rmask, q_rows = _query_tile(num_tiles, num_q_heads, group, rects, n_q, q_start,
                                                                 rect_stride, BLOCK_M)
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    q, lse_rows, prev2, k_base, v_base, m_i, l_i, acc = open_query_tile(
        Q, K, V, Lse, batch, h, hk, q_rows, rmask, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
        stride_vb, stride_vh, stride_lb, stride_lh, offs_d, d_mask, True, BLOCK_M, DV_PAD)
    q = q.to(tl.float32) * scale_log2
    key_row0 = k_start + r * rect_stride
    for s in tl.static_range(NUM_SEL):
        k_rows, visible = _selected_keys(Sel, Dead, zh, zk, s, offs_m, rmask, q_rows, n_q, n_k, key_row0, sinks,
                                         window_edge, NUM_SEL, SEL_BLOCK, SEL_PAD, WINDOW)
        k = _gather_keys(k_base, k_rows, stride_kn, offs_d, visible, d_mask)
        scores = tl.where(visible, tl.sum(q[:, None, :] * k, 2), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(scores - m_safe[:, None])
        v = _gather_keys(v_base, k_rows, stride_vn, offs_dv, visible, dv_mask)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, 1)
        m_i = m_new
    o_rows = batch.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + q_rows * stride_on
    finish_rows(Out, Lse, o_rows, lse_rows, offs_dv, rmask, acc, m_i, l_i, prev2, True, HEAD_DIM_V)


@triton.jit
def _tile_chunk(Union, First, Sel, Dead, tile_id, start, count, zk, sel_rows, rmask, q_rows, n_k, key_row0, sinks,
                window_edge, WINDOW: tl.constexpr, SHARED: tl.constexpr, NUM_SEL: tl.constexpr,
                UNION_WIDTH: tl.constexpr, SEL_BLOCK: tl.constexpr, SEL_PAD: tl.constexpr,
                CHUNK_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Key rows (int64 (KN,)) of the tile's union blocks [start, start + CHUNK_BLOCKS), which of them
    are live (inside the problem, not dead, not a sink), and which of them each row attends to
    (BM, KN): under ``SHARED`` those of blocks first chosen by it or an earlier row of the tile, else
    those of its own blocks (Sel)."""
    offs_c = tl.arange(0, CHUNK_BLOCKS * SEL_PAD)
    slot = offs_c // SEL_PAD  # the chunk's block of each key column
    within = offs_c % SEL_PAD
    used = start + slot < count
    entry = tile_id * UNION_WIDTH + start + slot
    blk = tl.load(Union + entry, mask=used, other=0)
    keys = blk * SEL_BLOCK + within
    inside = used & (within < SEL_BLOCK) & (keys < n_k)
    dead = tl.load(Dead + zk * n_k + keys, mask=inside, other=1)
    k_rows = (key_row0 + keys).to(tl.int64)
    live = inside & (dead == 0) & (k_rows >= sinks)
    if SHARED:
        first = tl.load(First + entry, mask=used, other=BLOCK_M)
        visible = first[None, :] <= tl.arange(0, BLOCK_M)[:, None]
    else:
        mine = tl.zeros([BLOCK_M, CHUNK_BLOCKS * SEL_PAD], tl.int32)
        for s in tl.static_range(NUM_SEL):
            own = tl.load(Sel + sel_rows + s, mask=rmask, other=-2)
            mine = mine | (own[:, None] == blk[None, :]).to(tl.int32)
        visible = mine != 0
    visible = visible & live[None, :] & rmask[:, None]
    if WINDOW:
        visible = visible & (k_rows[None, :] < (q_rows + window_edge)[:, None])
    return k_rows, live, visible


@triton.jit
def selected_tiles_fwd_kernel(
    Q, K, V, Out, Lse, Sel, Union, First, Count, Dead,
    scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles, rects, q_start, k_start, rect_stride,
    num_q_heads, group, sinks, window_edge,
    WINDOW: tl.constexpr, SHARED: tl.constexpr, NUM_SEL: tl.constexpr, UNION_WIDTH: tl.constexpr,
    SEL_BLOCK: tl.constexpr, SEL_PAD: tl.constexpr, CHUNK_BLOCKS: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``selected_fwd_kernel`` on the tensor cores: one program, a tile of consecutive queries of one
    (problem, head), runs over the distinct blocks its rows selected (``tile_unions``: Union, First,
    Count), CHUNK_BLOCKS blocks at a time, each row masked as ``_tile_chunk`` says."""
    zh, zk, h, hk, batch, r, offs_m, rmask, q_rows = _query_tile(num_tiles, num_q_heads, group, rects, n_q, q_start,
                                                                 rect_stride, BLOCK_M)
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    q, lse_rows, prev2, k_base, v_base, m_i, l_i, acc = open_query_tile(
        Q, K, V, Lse, batch, h, hk, q_rows, rmask, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
        stride_vb, stride_vh, stride_lb, stride_lh, offs_d, d_mask, True, BLOCK_M, DV_PAD)
    key_row0 = k_start + r * rect_stride
    tile_id = tl.program_id(0).to(tl.int64)  # programs run tile-fastest over (problem, head): zh * num_tiles + tile
    count = tl.load(Count + tile_id)
    sel_rows = (zh.to(tl.int64) * n_q + offs_m) * NUM_SEL
    for start in range(0, count, CHUNK_BLOCKS):
        k_rows, live, visible = _tile_chunk(Union, First, Sel, Dead, tile_id, start, count, zk, sel_rows, rmask,
                                            q_rows, n_k, key_row0, sinks, window_edge, WINDOW, SHARED, NUM_SEL,
                                            UNION_WIDTH, SEL_BLOCK, SEL_PAD, CHUNK_BLOCKS, BLOCK_M)
        k = load_rows(k_base, k_rows, stride_kn, offs_d, live, d_mask)
        v = load_rows(v_base, k_rows, stride_vn, offs_dv, live, dv_mask)
        scores = tl.where(visible, tl.dot(q, tl.trans(k)) * scale_log2, float("-inf"))
        m_i, l_i, acc = softmax_step(scores, v, m_i, l_i, acc)
    o_rows = batch.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + q_rows * stride_on
    finish_rows(Out, Lse, o_rows, lse_rows, offs_dv, rmask, acc, m_i, l_i, prev2, True, HEAD_DIM_V)


@triton.jit
def selected_tiles_bwd_kernel(
    Q, K, V, DO, Lse, Delta, DQAcc, DKAcc, DVAcc, Sel, Union, First, Count, Dead,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles, rects, q_start, k_start, rect_stride,
    num_q_heads, group, kv_seq_len, sinks, window_edge,
    WINDOW: tl.constexpr, SHARED: tl.constexpr, NUM_SEL: tl.constexpr, UNION_WIDTH: tl.constexpr,
    SEL_BLOCK: tl.constexpr, SEL_PAD: tl.constexpr, CHUNK_BLOCKS: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Gradients of ``selected_tiles_fwd_kernel``'s pairs on the tensor cores, accumulated as
    ``selected_bwd_kernel`` does: dq per tile, dk and dv per chunk of keys, by atomics."""
    zh, zk, h, hk, batch, r, offs_m, rmask, q_rows = _query_tile(num_tiles, num_q_heads, group, rects, n_q, q_start,
                                                                 rect_stride, BLOCK_M)
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    q = load_rows(head_base(Q, batch, h, stride_qb, stride_qh), q_rows, stride_qn, offs_d, rmask, d_mask)
    do = load_rows(head_base(DO, batch, h, stride_ob, stride_oh), q_rows, stride_on, offs_dv, rmask, dv_mask)
    l_rows = batch.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_rows
    lse2 = tl.load(Lse + l_rows, mask=rmask, other=float("inf")) * LOG2E
    delta = tl.load(Delta + l_rows, mask=rmask, other=0.0)
    k_base = head_base(K, batch, hk, stride_kb, stride_kh)
    v_base = head_base(V, batch, hk, stride_vb, stride_vh)
    kv_base = (batch.to(tl.int64) * (num_q_heads // group) + hk) * kv_seq_len
    key_row0 = k_start + r * rect_stride
    tile_id = tl.program_id(0).to(tl.int64)
    count = tl.load(Count + tile_id)
    sel_rows = (zh.to(tl.int64) * n_q + offs_m) * NUM_SEL
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for start in range(0, count, CHUNK_BLOCKS):
        k_rows, live, visible = _tile_chunk(Union, First, Sel, Dead, tile_id, start, count, zk, sel_rows, rmask,
                                            q_rows, n_k, key_row0, sinks, window_edge, WINDOW, SHARED, NUM_SEL,
                                            UNION_WIDTH, SEL_BLOCK, SEL_PAD, CHUNK_BLOCKS, BLOCK_M)
        k = load_rows(k_base, k_rows, stride_kn, offs_d, live, d_mask)
        v = load_rows(v_base, k_rows, stride_vn, offs_dv, live, dv_mask)
        p = tl.where(visible, tl.exp2(tl.dot(q, tl.trans(k)) * scale_log2 - lse2[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
        grad_rows = (kv_base + k_rows)[:, None]
        tl.atomic_add(DVAcc + grad_rows * HEAD_DIM_V + offs_dv[None, :], tl.dot(tl.trans(p.to(do.dtype)), do),
                      mask=live[:, None] & dv_mask[None, :], sem="relaxed")
        tl.atomic_add(DKAcc + grad_rows * HEAD_DIM + offs_d[None, :], tl.dot(tl.trans(ds.to(q.dtype)), q) * scale,
                      mask=live[:, None] & d_mask[None, :], sem="relaxed")
    tl.atomic_add(DQAcc + l_rows[:, None] * HEAD_DIM + offs_d[None, :], dq * scale,
                  mask=rmask[:, None] & d_mask[None, :], sem="relaxed")


@triton.jit
def selected_bwd_kernel(
    Q, K, V, DO, Lse, Delta, DQAcc, DKAcc, DVAcc, Sel, Dead,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles, rects, q_start, k_start, rect_stride,
    num_q_heads, group, kv_seq_len, sinks, window_edge,
    WINDOW: tl.constexpr, NUM_SEL: tl.constexpr, SEL_BLOCK: tl.constexpr, SEL_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Gradients of ``selected_fwd_kernel``'s pairs, from the final lse and delta: p = exp(s - lse),
    ds = p (dO v - delta). dq adds into DQAcc (B, Hq, Nq, D), dk and dv into DKAcc / DVAcc
    (B, Hkv, kv_seq_len, *), all fp32 and contiguous (like Lse and Delta), by atomics."""
    zh, zk, h, hk, batch, r, offs_m, rmask, q_rows = _query_tile(num_tiles, num_q_heads, group, rects, n_q, q_start,
                                                                 rect_stride, BLOCK_M)
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    q = load_rows(head_base(Q, batch, h, stride_qb, stride_qh), q_rows, stride_qn, offs_d, rmask, d_mask)
    q = q.to(tl.float32)
    do = load_rows(head_base(DO, batch, h, stride_ob, stride_oh), q_rows, stride_on, offs_dv, rmask, dv_mask)
    do = do.to(tl.float32)
    l_rows = batch.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_rows
    lse2 = tl.load(Lse + l_rows, mask=rmask, other=float("inf")) * LOG2E  # p = 0 on rows past the range
    delta = tl.load(Delta + l_rows, mask=rmask, other=0.0)
    k_base = head_base(K, batch, hk, stride_kb, stride_kh)
    v_base = head_base(V, batch, hk, stride_vb, stride_vh)
    kv_base = (batch.to(tl.int64) * (num_q_heads // group) + hk) * kv_seq_len
    key_row0 = k_start + r * rect_stride
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for s in tl.static_range(NUM_SEL):
        k_rows, visible = _selected_keys(Sel, Dead, zh, zk, s, offs_m, rmask, q_rows, n_q, n_k, key_row0, sinks,
                                         window_edge, NUM_SEL, SEL_BLOCK, SEL_PAD, WINDOW)
        k = _gather_keys(k_base, k_rows, stride_kn, offs_d, visible, d_mask)
        v = _gather_keys(v_base, k_rows, stride_vn, offs_dv, visible, dv_mask)
        p = tl.where(visible, tl.exp2(tl.sum(q[:, None, :] * k, 2) * scale_log2 - lse2[:, None]), 0.0)
        ds = p * (tl.sum(do[:, None, :] * v, 2) - delta[:, None])
        dq += tl.sum(ds[:, :, None] * k, 1)
        grad_rows = (kv_base + k_rows)[:, :, None]
        tl.atomic_add(DVAcc + grad_rows * HEAD_DIM_V + offs_dv[None, None, :], p[:, :, None] * do[:, None, :],
                      mask=visible[:, :, None] & dv_mask[None, None, :], sem="relaxed")
        tl.atomic_add(DKAcc + grad_rows * HEAD_DIM + offs_d[None, None, :], (ds * scale)[:, :, None] * q[:, None, :],
                      mask=visible[:, :, None] & d_mask[None, None, :], sem="relaxed")
    tl.atomic_add(DQAcc + l_rows[:, None] * HEAD_DIM + offs_d[None, :], dq * scale,
                  mask=rmask[:, None] & d_mask[None, :], sem="relaxed")


def dead_keys(plan, num_kv_heads: int) -> torch.Tensor:
    """uint8 (Z, Hkv, Nk): 1 for each problem's heavy keys, which the selected blocks skip."""
    z, _, n_k = plan.k_perm.shape
    dead = torch.zeros(z, num_kv_heads, n_k, dtype=torch.uint8, device=plan.k_perm.device)
    return dead.scatter_(-1, plan.sample_idx[..., :plan.heavy], 1)


def _launch_args(q, v, part):
    p = part.plan
    batch, num_q_heads = q.shape[:2]
    sel_pad = triton.next_power_of_2(p.selected_block_size)
    width = max(tile_width(q.shape[-1]), tile_width(v.shape[-1]))
    block_m = min(64, max(4, SELECTED_TILE_ELEMENTS // (sel_pad * width)))
    tiles = triton.cdiv(part.num_queries, block_m)
    grid = (batch * part.count * num_q_heads * tiles,)
    rows = (part.num_queries, part.num_keys, tiles, part.count, part.query_start, part.key_start,
            part.rects.queries.stride)
    return grid, rows, dict(WINDOW=part.skips_window, NUM_SEL=p.selected.shape[-1], SEL_BLOCK=p.selected_block_size,
                            SEL_PAD=sel_pad, BLOCK_M=block_m, num_warps=SELECTED_WARPS, num_stages=1)


def tile_unions(selected: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct blocks the rows of each tile of ``block_m`` consecutive queries selected.

    selected (Z, Hq, Nq, s) int64 -> union int32 (Z, Hq, tiles, block_m * s): each tile's blocks
    ascending, then padding; first int32 (same shape): the first row of the tile (0 to block_m - 1)
    that selected each; count int32 (Z, Hq, tiles): how many blocks."""
    z, hq, n_q, s = selected.shape
    tiles = triton.cdiv(n_q, block_m)
    pad = tiles * block_m - n_q
    if pad:  # repeat the last row: it adds no block
        selected = torch.cat((selected, selected[:, :, -1:].expand(-1, -1, pad, -1)), 2)
    row = torch.arange(block_m, device=selected.device).repeat_interleave(s)
    order = (selected.view(z, hq, tiles, block_m * s) * block_m + row).sort(-1).values  # by block, then row
    first = first_of_runs(order.div(block_m, rounding_mode="floor"))
    order = order.masked_fill(~first, torch.iinfo(torch.int64).max).sort(-1).values
    count = first.sum(-1, dtype=torch.int32)
    padding = order == torch.iinfo(torch.int64).max
    union = order.div(block_m, rounding_mode="floor").masked_fill(padding, -1).to(torch.int32)
    first_row = order.remainder(block_m).masked_fill(padding, block_m).to(torch.int32)
    return union.contiguous(), first_row.contiguous(), count.contiguous()


# Query rows of a program of the selected blocks' tensor-core kernels (a power of two >= 16) where each
# query attends to its own blocks, and keys of their chunks; 0: the per-row kernels (``selected_fwd_kernel``).
# Per row is faster: heavy 448 + 4 x 16 (two-stage) at 131k, d64, H100: 115 ms against 148 ms in tiles of 16
# (``tools/option_cost.py --selected-tile-rows 0,16``). Plans with ``selection_tile`` always take the tile
# kernels, with tiles of that many rows.
SELECTED_TILE_ROWS = 0
SELECTED_CHUNK_KEYS = 64


def _tile_rows(plan) -> int:
    """Query rows of a tile of the tile kernels for ``plan``; 0: the per-row kernels."""
    return plan.selection_tile or SELECTED_TILE_ROWS


def _tile_launch(q, k, part):
    """Grid, tile lists and constants of the tile kernels for hyper ``part``."""
    p = part.plan
    block_m = _tile_rows(p)
    union, first, count = tile_unions(p.selected, block_m)
    tiles = count.shape[-1]
    sel_pad = triton.next_power_of_2(p.selected_block_size)
    grid = (q.shape[0] * part.count * q.shape[1] * tiles,)
    rows = (part.num_queries, part.num_keys, tiles, part.count, part.query_start, part.key_start,
            part.rects.queries.stride, q.shape[1], q.shape[1] // k.shape[1])
    consts = dict(WINDOW=part.skips_window, SHARED=bool(p.selection_tile), NUM_SEL=p.selected.shape[-1],
                  UNION_WIDTH=union.shape[-1], SEL_BLOCK=p.selected_block_size, SEL_PAD=sel_pad,
                  CHUNK_BLOCKS=max(1, SELECTED_CHUNK_KEYS // sel_pad), BLOCK_M=block_m, num_warps=4, num_stages=2)
    return grid, (p.selected, union, first, count, dead_keys(p, k.shape[1])), rows, consts


def selected_forward(q, k, v, out, lse, part, scale: float, dims: dict, strides: list[int]) -> None:
    """Merge the selected blocks of hyper ``part`` into out (fp32) / lse."""
    if _tile_rows(part.plan):
        grid, lists, rows, consts = _tile_launch(q, k, part)
        selected_tiles_fwd_kernel[grid](q, k, v, out, lse, *lists, scale * math.log2(math.e), *strides, *rows,
                                        part.sinks, part.window_edge, **consts, **dims)
        return
    grid, rows, consts = _launch_args(q, v, part)
    selected_fwd_kernel[grid](
        q, k, v, out, lse, part.plan.selected, dead_keys(part.plan, k.shape[1]), scale * math.log2(math.e),
        *strides, *rows, q.shape[1], q.shape[1] // k.shape[1], part.sinks, part.window_edge, **consts, **dims)


def selected_backward(q, k, v, dout, lse, delta, dq_acc, dk_acc, dv_acc, part, scale: float, dims: dict,
                      strides: list[int]) -> None:
    """Add the gradients of the selected blocks of hyper ``part`` into the fp32 accumulators."""
    if _tile_rows(part.plan):
        grid, lists, rows, consts = _tile_launch(q, k, part)
        selected_tiles_bwd_kernel[grid](q, k, v, dout, lse, delta, dq_acc, dk_acc, dv_acc, *lists, scale,
                                        scale * math.log2(math.e), *strides, *rows, k.shape[2], part.sinks,
                                        part.window_edge, **consts, **dims)
        return
    grid, rows, consts = _launch_args(q, v, part)
    selected_bwd_kernel[grid](
        q, k, v, dout, lse, delta, dq_acc, dk_acc, dv_acc, part.plan.selected, dead_keys(part.plan, k.shape[1]),
        scale, scale * math.log2(math.e), *strides, *rows, q.shape[1], q.shape[1] // k.shape[1], k.shape[2],
        part.sinks, part.window_edge, **consts, **dims)
