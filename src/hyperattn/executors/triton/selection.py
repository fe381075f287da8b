"""Block selection in one kernel: each query's score against every block's mean key and a running
top-``s`` of them, without materializing the (queries x blocks) scores.

Computes what ``hyperattn.plan.selection.select_key_blocks`` computes. The block means come from
``block_centroids_triton`` (one read of the keys); the kernel scores a tile of queries
against a tile of means on the tensor cores (the means rounded to the queries' dtype, float32
accumulation) twice. The first pass keeps each row's ``s`` largest tile maxima: the smallest of
them is a floor under the row's ``s``-th best score (``s`` distinct blocks reach it). The second
inserts into each row's best ``s`` the tile's entries at or above the floor that beat the row's
worst, one per row and round, until no row of the tile has such an entry: with the floor, few
entries ever qualify, so few tiles run a round. A choice of one block (the centroid rule) takes one
pass, a running maximum. Blocks without a live
key score below every live block, so they are chosen only where fewer live blocks remain. Scores
within rounding of each other may rank differently than in the PyTorch version.

The second stage of a two-stage selection (``refine_selection``) is a kernel of its own: each query
scores the few blocks inside its coarse blocks on the CUDA cores, one gathered mean at a time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hyperattn.executors.triton import on_device
from hyperattn.executors.triton.tiles import tile_width

SELECTION_BLOCK_M = 64
SELECTION_BLOCK_N = 64
# The score of a block without a live key: finite, below every real score
DEAD_SCORE = tl.constexpr(-3.0e38)


@triton.jit
def _query_tile(Q, stride_qz, stride_qh, stride_qn, n_q, num_q_heads, group, num_tiles, SEL_PAD: tl.constexpr,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's (problem, head) pair zh, its kv pair zk (int64), row / column / slot offsets and
    masks, and its tile of queries (BLOCK_M, D_PAD) in Q's dtype."""
    pid = tl.program_id(0)
    zh = pid // num_tiles
    tile = pid % num_tiles
    z = zh // num_q_heads
    h = zh % num_q_heads
    zk = (z * (num_q_heads // group) + h // group).to(tl.int64)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    rmask = offs_m < n_q
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + z.to(tl.int64) * stride_qz + h.to(tl.int64) * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qn
                + offs_d[None, :], mask=rmask[:, None] & d_mask[None, :], other=0.0)
    return zh, zk, offs_m, offs_d, tl.arange(0, SEL_PAD), rmask, d_mask, q


@triton.jit
def _block_scores(q, C, Live, zk, n_b, start, offs_d, d_mask, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Scores (BM, BLOCK_N) of the query tile against blocks [start, start + BLOCK_N): DEAD_SCORE for
    blocks without a live key, -inf past the last block."""
    offs_n = start + tl.arange(0, BLOCK_N)
    nmask = offs_n < n_b
    c = tl.load(C + (zk * n_b + offs_n)[:, None] * HEAD_DIM + offs_d[None, :],
                mask=nmask[:, None] & d_mask[None, :], other=0.0)
    live = tl.load(Live + zk * n_b + offs_n, mask=nmask, other=0)
    s = tl.dot(q, tl.trans(c))
    s = tl.where(live[None, :] != 0, s, DEAD_SCORE)
    return tl.where(nmask[None, :], s, float("-inf"))


@triton.jit
def select_blocks_kernel(
    Q, C, Live, Out,
    stride_qz, stride_qh, stride_qn,
    n_q, n_b, num_q_heads, group, num_tiles,
    NUM_SEL: tl.constexpr, SEL_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: a tile of queries of one (problem, head). C (Z, Hkv, n_b, D) block means in
    q's dtype, Live (Z, Hkv, n_b) uint8; Out (Z, Hq, n_q, NUM_SEL) int64 block indices, ascending."""
    zh, zk, offs_m, offs_d, offs_s, rmask, d_mask, q = _query_tile(
        Q, stride_qz, stride_qh, stride_qn, n_q, num_q_heads, group, num_tiles, SEL_PAD, HEAD_DIM, D_PAD, BLOCK_M)
    if NUM_SEL == 1:  # each row's best block: one pass, a running maximum (the first block of the best score)
        top = tl.full([BLOCK_M], float("-inf"), tl.float32)
        top_idx = tl.zeros([BLOCK_M], tl.int32)
        for start in range(0, n_b, BLOCK_N):
            s = _block_scores(q, C, Live, zk, n_b, start, offs_d, d_mask, HEAD_DIM, BLOCK_N)
            tile_max = tl.max(s, 1)
            better = tile_max > top
            top_idx = tl.where(better, start + tl.argmax(s, 1), top_idx)
            top = tl.where(better, tile_max, top)
        tl.store(Out + zh.to(tl.int64) * n_q + offs_m, top_idx.to(tl.int64), mask=rmask)
        return
    # each row's best NUM_SEL (value, block); the padding slots hold +inf and are never replaced
    empty = tl.where(offs_s[None, :] < NUM_SEL, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, SEL_PAD], tl.float32)
    tops = empty  # the row's NUM_SEL largest tile maxima
    for start in range(0, n_b, BLOCK_N):
        tile_max = tl.max(_block_scores(q, C, Live, zk, n_b, start, offs_d, d_mask, HEAD_DIM, BLOCK_N), 1)
        low = tl.min(tops, 1)
        slot = tl.argmin(tops, 1)
        tops = tl.where((offs_s[None, :] == slot[:, None]) & (tile_max > low)[:, None], tile_max[:, None], tops)
    floor = tl.min(tops, 1)  # -inf while fewer tiles than NUM_SEL
    best = empty
    best_idx = tl.full([BLOCK_M, SEL_PAD], -1, tl.int32)
    for start in range(0, n_b, BLOCK_N):
        s = _block_scores(q, C, Live, zk, n_b, start, offs_d, d_mask, HEAD_DIM, BLOCK_N)
        s = tl.where(s >= floor[:, None], s, float("-inf"))
        tile_max = tl.max(s, 1)
        worst = tl.min(best, 1)
        while tl.max((tile_max > worst).to(tl.int32), 0) > 0:
            improves = tile_max > worst
            pick = tl.argmax(s, 1)
            slot = tl.argmin(best, 1)
            into = improves[:, None] & (offs_s[None, :] == slot[:, None])
            best = tl.where(into, tile_max[:, None], best)
            best_idx = tl.where(into, (start + pick)[:, None], best_idx)
            s = tl.where(improves[:, None] & (tl.arange(0, BLOCK_N)[None, :] == pick[:, None]), float("-inf"), s)
            tile_max = tl.max(s, 1)
            worst = tl.min(best, 1)
    ordered = tl.sort(tl.where(offs_s[None, :] < NUM_SEL, best_idx, 2**30), 1)
    tl.store(Out + (zh.to(tl.int64) * n_q + offs_m)[:, None] * NUM_SEL + offs_s[None, :], ordered.to(tl.int64),
             mask=rmask[:, None] & (offs_s[None, :] < NUM_SEL))


@triton.jit
def refine_blocks_kernel(
    Q, C, Live, Coarse, Out,
    stride_qz, stride_qh, stride_qn,
    n_q, n_b, num_q_heads, group, num_tiles,
    NUM_COARSE: tl.constexpr, RATIO: tl.constexpr, NUM_SEL: tl.constexpr, SEL_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """One program: a tile of queries of one (problem, head), each scoring the RATIO blocks inside
    each of its NUM_COARSE coarse blocks (Coarse (Z, Hq, n_q, NUM_COARSE) int64) against its own
    vector on the CUDA cores, keeping its best NUM_SEL. C, Live, Out as in ``select_blocks_kernel``."""
    zh, zk, offs_m, offs_d, offs_s, rmask, d_mask, q = _query_tile(
        Q, stride_qz, stride_qh, stride_qn, n_q, num_q_heads, group, num_tiles, SEL_PAD, HEAD_DIM, D_PAD, BLOCK_M)
    q = q.to(tl.float32)
    best = tl.where(offs_s[None, :] < NUM_SEL, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, SEL_PAD], tl.float32)
    best_idx = tl.full([BLOCK_M, SEL_PAD], -1, tl.int32)
    rows = zh.to(tl.int64) * n_q + offs_m
    for j in range(NUM_COARSE):
        coarse = tl.load(Coarse + rows * NUM_COARSE + j, mask=rmask, other=0)
        for r in tl.static_range(RATIO):
            blk = coarse * RATIO + r
            inside = rmask & (blk < n_b)
            c = tl.load(C + (zk * n_b + blk)[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=inside[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
            live = tl.load(Live + zk * n_b + blk, mask=inside, other=0)
            score = tl.where(live != 0, tl.sum(q * c, 1), DEAD_SCORE)
            score = tl.where(inside, score, float("-inf"))  # past the last block: never chosen
            worst = tl.min(best, 1)
            slot = tl.argmin(best, 1)
            into = (score > worst)[:, None] & (offs_s[None, :] == slot[:, None])
            best = tl.where(into, score[:, None], best)
            best_idx = tl.where(into, blk.to(tl.int32)[:, None], best_idx)
    ordered = tl.sort(tl.where(offs_s[None, :] < NUM_SEL, best_idx, 2**30), 1)
    tl.store(Out + rows[:, None] * NUM_SEL + offs_s[None, :], ordered.to(tl.int64),
             mask=rmask[:, None] & (offs_s[None, :] < NUM_SEL))


@triton.jit
def block_means_kernel(
    K, Live, C, HasLive,
    stride_kz, stride_kh, stride_kn,
    n_k, n_b, num_kv_heads, block_size,
    HAS_LIVE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, CHUNK: tl.constexpr,
):
    """One program: one block of ``block_size`` consecutive keys of one (problem, kv head), read once in
    chunks of CHUNK rows. C (Z, Hkv, n_b, HEAD_DIM) float32: the mean of the block's live keys (0 where
    none); HasLive (Z, Hkv, n_b) uint8: whether it has one."""
    pid = tl.program_id(0)
    zk = pid // n_b
    b = pid % n_b
    z = zk // num_kv_heads
    h = zk % num_kv_heads
    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    base = K + z.to(tl.int64) * stride_kz + h.to(tl.int64) * stride_kh
    total = tl.zeros([D_PAD], tl.float32)
    count = 0.0
    for lo in range(0, block_size, CHUNK):
        offs = lo + tl.arange(0, CHUNK)
        rows = b.to(tl.int64) * block_size + offs
        use = (offs < block_size) & (rows < n_k)
        if HAS_LIVE:
            use = use & (tl.load(Live + zk.to(tl.int64) * n_k + rows, mask=use, other=0) != 0)
        keys = tl.load(base + rows[:, None] * stride_kn + offs_d[None, :], mask=use[:, None] & d_mask[None, :],
                       other=0.0)
        total += tl.sum(keys.to(tl.float32), 0)
        count += tl.sum(use.to(tl.float32), 0)
    out = zk.to(tl.int64) * n_b + b
    tl.store(C + out * HEAD_DIM + offs_d, total / tl.maximum(count, 1.0), mask=d_mask)
    tl.store(HasLive + out, (count > 0).to(tl.uint8))


def block_centroids_triton(k: torch.Tensor, live: torch.Tensor | None, block_size: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``hyperattn.plan.selection.block_centroids`` in one kernel (one read of the keys): k
    (Z, Hkv, Nk, D) fp16/bf16 on CUDA (or under the interpreter), live (Z, Hkv, Nk) bool or None ->
    (float32 (Z, Hkv, blocks, D) means, bool (Z, Hkv, blocks))."""
    z, hkv, nk, d = k.shape
    num_blocks = -(-nk // block_size)
    means = torch.empty(z, hkv, num_blocks, d, dtype=torch.float32, device=k.device)
    has_live = torch.empty(z, hkv, num_blocks, dtype=torch.uint8, device=k.device)
    if means.numel() == 0:
        return means, has_live.bool()
    k = k.detach()
    if k.stride(-1) != 1:
        k = k.contiguous()
    live_arg = live.contiguous().view(torch.uint8) if live is not None else has_live
    with on_device(k):
        block_means_kernel[(z * hkv * num_blocks,)](
            k, live_arg, means, has_live, k.stride(0), k.stride(1), k.stride(2), nk, num_blocks, hkv, block_size,
            HAS_LIVE=live is not None, HEAD_DIM=d, D_PAD=tile_width(d), CHUNK=min(64, triton.next_power_of_2(block_size)))
    return means, has_live.bool()


def _launch(kernel, q, k, live, block_size, num_selected, *inputs, **consts) -> torch.Tensor:
    """Block means, output and grid shared by the selection kernels: kernel(q, means, live, *inputs,
    out, q strides, n_q, blocks, Hq, group, tiles, NUM_SEL=..., SEL_PAD=..., HEAD_DIM=..., D_PAD=...,
    BLOCK_M=..., **consts)."""
    centroids, has_live = block_centroids_triton(k, live, block_size)
    z, hq, n_q, d = q.shape
    num_blocks = centroids.shape[2]
    count = min(num_selected, num_blocks)
    out = torch.empty(z, hq, n_q, count, dtype=torch.int64, device=q.device)
    if out.numel() == 0:
        return out
    q = q.detach()
    if q.stride(-1) != 1:
        q = q.contiguous()
    tiles = triton.cdiv(n_q, SELECTION_BLOCK_M)
    with on_device(q):
        kernel[(z * hq * tiles,)](
            q, centroids.to(q.dtype).contiguous(), has_live.to(torch.uint8).contiguous(), *inputs, out, q.stride(0),
            q.stride(1), q.stride(2), n_q, num_blocks, hq, hq // k.shape[1], tiles, NUM_SEL=count,
            SEL_PAD=triton.next_power_of_2(count), HEAD_DIM=d, D_PAD=tile_width(d), BLOCK_M=SELECTION_BLOCK_M,
            **consts)
    return out


def select_key_blocks_triton(q: torch.Tensor, k: torch.Tensor, live: torch.Tensor | None, block_size: int,
                             num_selected: int) -> torch.Tensor:
    """``hyperattn.plan.selection.select_key_blocks`` in one kernel (plus the block means): q
    (Z, Hq, Nq, D) fp16/bf16 on CUDA (or under the interpreter), k (Z, Hkv, Nk, D), live (Z, Hkv, Nk)
    bool or None -> int64 (Z, Hq, Nq, min(num_selected, blocks)), ascending."""
    return _launch(select_blocks_kernel, q, k, live, block_size, num_selected, BLOCK_N=SELECTION_BLOCK_N)


def refine_selection_triton(q: torch.Tensor, k: torch.Tensor, live: torch.Tensor | None, block_size: int,
                            num_selected: int, coarse: torch.Tensor, coarse_size: int) -> torch.Tensor:
    """``hyperattn.plan.selection.refine_selection`` in one kernel (plus the block means): q
    (Z, Hq, Nq, D) fp16/bf16 on CUDA (or under the interpreter), coarse (Z, Hq, Nq, m) int64
    -> int64 (Z, Hq, Nq, min(num_selected, blocks)), ascending."""
    return _launch(refine_blocks_kernel, q, k, live, block_size, num_selected, coarse.contiguous(),
                   NUM_COARSE=coarse.shape[-1], RATIO=coarse_size // block_size)
