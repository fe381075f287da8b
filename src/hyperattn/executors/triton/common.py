"""Pieces shared by the kernels: constants, row loads, the query range of a key block."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def load_rows(base, rows, row_stride, cols, row_mask, col_mask):
    """(R, C) tile: rows ``rows`` (int64 (R,)) and columns ``cols`` of a matrix at ``base``; 0 where masked."""
    return tl.load(base + rows[:, None] * row_stride + cols[None, :], mask=row_mask[:, None] & col_mask[None, :],
                   other=0.0)


@triton.jit
def load_key_tile(k_base, v_base, key_row0, start, offs_m, n_q, n_k, stride_kn, stride_vn, offs_d, offs_dv, d_mask,
                  dv_mask, edge0, CAUSAL: tl.constexpr, BAND: tl.constexpr, BLOCK_N: tl.constexpr):
    """k (BN, D) and v (BN, Dv) of the consecutive keys from ``start``, and which of them each
    query of ``offs_m`` sees (BM, BN): none past ``n_k``; with ``CAUSAL`` none after the query
    (bottom-right: query i sees keys j <= n_k - n_q + i). ``BAND`` (the exact window,
    ``Part.band``): 1, only key rows below ``edge0 + i`` (the keys before query i's
    window); 2, only key rows from ``edge0 + i`` on (its window)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    kmask = offs_n < n_k
    k_rows = (key_row0 + offs_n).to(tl.int64)
    k = load_rows(k_base, k_rows, stride_kn, offs_d, kmask, d_mask)
    v = load_rows(v_base, k_rows, stride_vn, offs_dv, kmask, dv_mask)
    visible = kmask[None, :]
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= (n_k - n_q + offs_m)[:, None])
    if BAND != 0:
        visible = visible & band_mask(k_rows, edge0 + offs_m, BAND)
    return k, v, visible


@triton.jit
def band_mask(k_rows, limits, BAND: tl.constexpr):
    """(R, BN) bool: which key rows ``k_rows`` (BN,) rows with window limits ``limits`` (R,)
    (``Part.band``) see under ``BAND``: 1, those below the limit (outside the window);
    2, those from the limit on (inside)."""
    if BAND == 1:
        return k_rows[None, :] < limits[:, None]
    else:
        return k_rows[None, :] >= limits[:, None]


@triton.jit
def live_key_ranks(n_k, sinks, key_row0, heavy):
    """Sorted key ranks below which a problem's keys are neither sinks nor heavy keys: ``make_plan``
    sorts the problem's ``heavy`` heavy keys, then its key rows below ``sinks`` (its rows start at
    ``key_row0``), after every other key."""
    return n_k - tl.minimum(tl.maximum(sinks - key_row0, 0), n_k) - heavy


@triton.jit
def load_sorted_rows(Perm, perm_offset, lo, count, hi, WIDTH: tl.constexpr):
    """int32 (WIDTH,): the row (within its problem) at sorted rank ``lo + i`` (through Perm at
    ``perm_offset``), for i < ``count`` and ``lo + i < hi``; 0 elsewhere.

    The loops over a key block, the samples or a run of queries hold these rows in registers:
    then their tile loads depend on no load inside the loop, and the compiler prefetches them
    ``num_stages - 1`` tiles ahead (with the index load inside the loop it prefetched one tile,
    issued after the tile's math, and waited for all of it at the next iteration's start)."""
    offs = tl.arange(0, WIDTH)
    mask = (offs < count) & (lo + offs < hi)
    return tl.load(Perm + perm_offset + lo + offs, mask=mask, other=0).to(tl.int32)


@triton.jit
def load_block_key_tile(block_rows, k_base, v_base, key_row0, k_lo, start, block_size, n_live, stride_kn, stride_vn,
                        offs_d, offs_dv, d_mask, dv_mask, BLOCK_N: tl.constexpr):
    """k (BN, D), v (BN, Dv), which are keys (BN,) and their rows (int64 (BN,)) of sorted ranks
    ``k_lo + start + [0, BN)`` of a key block, whose rows ``load_sorted_rows`` gave: ranks inside
    the block and below ``n_live``."""
    offs_n = start + tl.arange(0, BLOCK_N)
    kmask = (offs_n < block_size) & (k_lo + offs_n < n_live)
    k_rows = (key_row0 + tl.gather(block_rows, offs_n, 0)).to(tl.int64)
    k = load_rows(k_base, k_rows, stride_kn, offs_d, kmask, d_mask)
    v = load_rows(v_base, k_rows, stride_vn, offs_dv, kmask, dv_mask)
    return k, v, kmask, k_rows


@triton.jit
def load_sample_rows(SIdx, SBlk, SLogW, sample_offset, num_samples, blk, SAMPLES: tl.constexpr):
    """The sampled keys seen by queries of key block ``blk``, in registers (see ``load_sorted_rows``):
    int32 key rows (SAMPLES,) and fp32 log2 weights (SAMPLES,), -inf for samples of that block
    (the block part has them), past ``num_samples``, and for sampled sinks (log-weight -inf)."""
    offs = tl.arange(0, SAMPLES)
    smask = offs < num_samples
    rows = tl.load(SIdx + sample_offset + offs, mask=smask, other=0).to(tl.int32)
    s_blk = tl.load(SBlk + sample_offset + offs, mask=smask, other=-1)
    log_w = tl.load(SLogW + sample_offset + offs, mask=smask, other=0.0)
    return rows, tl.where(smask & (s_blk != blk), log_w * LOG2E, float("-inf"))


@triton.jit
def load_sampled_key_tile(sample_rows, sample_bias2, start, k_base, v_base, key_row0, stride_kn, stride_vn, offs_d,
                          offs_dv, d_mask, dv_mask, BLOCK_N: tl.constexpr):
    """k (BN, D), v (BN, Dv), which count (BN,), their log2 weights (BN,) and rows (int64 (BN,)) of
    sampled keys ``start + [0, BN)`` (``load_sample_rows`` gave their rows and weights)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    bias2 = tl.gather(sample_bias2, offs_n, 0)
    live = bias2 > float("-inf")
    k_rows = (key_row0 + tl.gather(sample_rows, offs_n, 0)).to(tl.int64)
    k = load_rows(k_base, k_rows, stride_kn, offs_d, live, d_mask)
    v = load_rows(v_base, k_rows, stride_vn, offs_dv, live, dv_mask)
    return k, v, live, bias2, k_rows


@triton.jit
def query_block_range(blk, block_size, n_q, n_k):
    """Sorted query ranks [lo, hi) of key block ``blk``: p with (p * n_k // n_q) // block_size == blk.
    64-bit: blk * block_size * n_q passes 2**31 from about 64k tokens on."""
    lo = (blk.to(tl.int64) * block_size * n_q + n_k - 1) // n_k
    hi = tl.minimum(((blk.to(tl.int64) + 1) * block_size * n_q + n_k - 1) // n_k, n_q)
    return lo, hi


@triton.jit
def query_rank_blocks(ranks, block_size, n_q, n_k):
    """Key block of each sorted query rank (int (R,), >= 0): ``(rank * n_k // n_q) // block_size``,
    exactly (int64 (R,)). An fp64 estimate, off by one at most and only where the quotient lies
    within rounding of an integer, is corrected with 64-bit products: no 64-bit division, whose
    slow path is a subroutine call per element. (``tl.cast``: Triton passes an int argument
    equal to 1 as a constexpr.)"""
    num = ranks.to(tl.int64) * n_k
    den = tl.cast(n_q, tl.int64) * block_size
    est = (ranks.to(tl.float64) * (tl.cast(n_k, tl.float64) / den.to(tl.float64))).to(tl.int64)
    est = tl.where((est + 1) * den <= num, est + 1, est)
    return tl.where(est * den > num, est - 1, est)


NO_BLOCK = tl.constexpr(2**30)


@triton.jit
def load_query_blocks(QBlk, zh, ranks, rmask, n_q):
    """int32 (R,): the key block of the sorted query ranks ``ranks`` of (problem, head) ``zh``
    under the ``"bucket"`` rule (the plan's ``q_block``, laid out like QPerm); -1 where masked."""
    return tl.load(QBlk + zh.to(tl.int64) * n_q + ranks, mask=rmask, other=-1).to(tl.int32)


@triton.jit
def next_query_block(q_blk, blk):
    """The smallest key block in ``q_blk`` (R,) above ``blk``; ``NO_BLOCK`` when there is none.
    A query tile of the bucket rule visits its blocks in this order, each once."""
    return tl.min(tl.where(q_blk > blk, q_blk, NO_BLOCK), 0)


@triton.jit
def load_sample_blocks(SBlk, sample_offset, num_samples, SAMPLES: tl.constexpr):
    """int32 (SAMPLES,): the key block of each sampled key (-1 for heavy keys and past ``num_samples``)."""
    offs = tl.arange(0, SAMPLES)
    return tl.load(SBlk + sample_offset + offs, mask=offs < num_samples, other=-1).to(tl.int32)


@triton.jit
def write_rows(Acc, Final, rows, row_stride, cols, row_mask, col_mask, value, WRITE: tl.constexpr):
    """Write a gradient tile.

    ``WRITE``: "add" does ``Acc += value`` (fp32) as relaxed atomic reductions, which the
    program does not wait for and other programs may add to the same rows alongside; "finish"
    writes ``Acc + value`` to Final in Final's dtype; "store" writes ``value`` to Final. Acc
    and Final share the layout."""
    offsets = rows[:, None] * row_stride + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    if WRITE == "add":
        tl.atomic_add(Acc + offsets, value, mask=mask, sem="relaxed")
    elif WRITE == "store":
        tl.store(Final + offsets, value.to(Final.dtype.element_ty), mask=mask)
    else:
        total = tl.load(Acc + offsets, mask=mask, other=0.0) + value
        if WRITE == "finish":
            tl.store(Final + offsets, total.to(Final.dtype.element_ty), mask=mask)
        else:
            tl.store(Acc + offsets, total, mask=mask)


@triton.jit
def program_coords(num_tiles, num_heads, rects):
    """This program's work: (tile, zh, z, head, batch, r). Programs run tile-fastest over the
    (problem, head) pairs ``zh = z * num_heads + head``; problem ``z = batch * rects + r`` is
    rectangle r of batch row ``batch``."""
    pid = tl.program_id(0)
    zh = pid // num_tiles
    tile = pid % num_tiles
    z = zh // num_heads
    head = zh % num_heads
    return tile, zh, z, head, z // rects, z % rects


@triton.jit
def head_base(X, batch, head, stride_b, stride_h):
    """Pointer to row 0 of (batch, head) of a (B, H, N, ...) tensor, 64-bit offsets."""
    return X + batch.to(tl.int64) * stride_b + head.to(tl.int64) * stride_h


@triton.jit
def columns(HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr):
    """Column offsets of q/k (D_PAD,) and of v/out (DV_PAD,), and which are real columns."""
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    return offs_d, offs_dv, offs_d < HEAD_DIM, offs_dv < HEAD_DIM_V


@triton.jit
def block_query_tile(tile, tiles_per_block, block_size, n_q, n_k, BLOCK_M: tl.constexpr):
    """(key block, first sorted query rank of the tile, end of the block's ranks) of a hyper
    part's query tile ``tile``; the tile holds queries when its first rank is below the end."""
    blk = tile // tiles_per_block
    q_lo, q_hi = query_block_range(blk, block_size, n_q, n_k)
    return blk, q_lo + (tile % tiles_per_block) * BLOCK_M, q_hi


@triton.jit
def sorted_query_rows(QPerm, zh, ranks, rmask, n_q, row0):
    """int64 rows (from ``row0``, the problem's first query row) of the sorted query ranks
    ``ranks`` of (problem, head) ``zh``."""
    return (row0 + tl.load(QPerm + zh.to(tl.int64) * n_q + ranks, mask=rmask, other=0)).to(tl.int64)


@triton.jit
def block_and_sample_rows(KPerm, SIdx, SBlk, SLogW, zk, blk, block_size, n_k, num_samples, sinks, key_row0, heavy,
                          BLOCK_KEYS: tl.constexpr, SAMPLES: tl.constexpr):
    """What a query tile of key block ``blk`` of (problem, kv head) ``zk`` reads of the plan, in
    registers: (first sorted key rank of the block, live ranks (below the heavy keys and sinks), the block's key
    rows, the samples' rows and log2 weights). Both index sets load before the block loop, so
    the samples' do not wait for its drain."""
    zk64 = zk.to(tl.int64)
    k_lo = blk * block_size
    n_live = live_key_ranks(n_k, sinks, key_row0, heavy)
    block_rows = load_sorted_rows(KPerm, zk64 * n_k, k_lo, block_size, n_live, BLOCK_KEYS)
    sample_rows, sample_bias2 = load_sample_rows(SIdx, SBlk, SLogW, zk64 * num_samples, num_samples, blk, SAMPLES)
    return k_lo, n_live, block_rows, sample_rows, sample_bias2


@triton.jit
def bucket_tile_rows(QBlk, SIdx, SBlk, SLogW, zh, zk, offs_m, rmask, n_q, n_k, num_samples, sinks, key_row0, heavy,
                     SAMPLES: tl.constexpr):
    """What a query tile of the bucket rule reads of the plan, in registers: (its rows' key blocks
    (``load_query_blocks``), the live key ranks, the samples' rows and log2 weights (none skipped
    by block: each row skips its own, ``sample_blocks``), the samples' blocks)."""
    zk64 = zk.to(tl.int64)
    q_blk = load_query_blocks(QBlk, zh, offs_m, rmask, n_q)
    sample_rows, sample_bias2 = load_sample_rows(SIdx, SBlk, SLogW, zk64 * num_samples, num_samples, -2, SAMPLES)
    sample_blocks = load_sample_blocks(SBlk, zk64 * num_samples, num_samples, SAMPLES)
    return q_blk, live_key_ranks(n_k, sinks, key_row0, heavy), sample_rows, sample_bias2, sample_blocks


@triton.jit
def causal_key_split(tile, n_q, n_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(k_full, k_hi) of an exact part's query tile: keys [0, k_full) are visible to every query
    of the tile (no mask), [k_full, k_hi) to some (bottom-right causal); without CAUSAL, all."""
    k_hi = n_k
    k_full = n_k
    if CAUSAL:
        k_hi = tl.minimum(n_k, n_k - n_q + (tile + 1) * BLOCK_M)
        k_full = (n_k - n_q + tile * BLOCK_M + 1) // BLOCK_N * BLOCK_N
    return k_full, k_hi


@triton.jit
def load_key_rows(K, V, batch, hk, k_rows, kmask, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                  offs_d, offs_dv, d_mask, dv_mask):
    """k (R, D) and v (R, Dv) of key rows ``k_rows`` (int64 (R,)) of kv head ``hk``; 0 where masked."""
    k = load_rows(head_base(K, batch, hk, stride_kb, stride_kh), k_rows, stride_kn, offs_d, kmask, d_mask)
    v = load_rows(head_base(V, batch, hk, stride_vb, stride_vh), k_rows, stride_vn, offs_dv, kmask, dv_mask)
    return k, v


@triton.jit
def write_key_grads(DKAcc, DK, DVAcc, DV, dk, dv, batch, hk, num_kv_heads, kv_seq_len, k_rows, kmask, offs_d, offs_dv,
                    d_mask, dv_mask, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, WRITE: tl.constexpr):
    """``write_rows`` of a key tile's dk and dv (already scaled) into contiguous (B, Hkv, kv_seq_len, *)
    gradients."""
    kv_rows = (batch.to(tl.int64) * num_kv_heads + hk) * kv_seq_len + k_rows
    write_rows(DKAcc, DK, kv_rows, HEAD_DIM, offs_d, kmask, d_mask, dk, WRITE)
    write_rows(DVAcc, DV, kv_rows, HEAD_DIM_V, offs_dv, kmask, dv_mask, dv, WRITE)
