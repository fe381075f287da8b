"""Backward kernels: gradients of one part, given the final output's lse and delta.

Every part was merged into one softmax per query, so its probabilities are
``exp(s - lse_final)`` and its score gradient is ``p * (dp - delta)`` with
``delta = rowsum(dO * O) - dLse``: the lse paths of every merge are in ``delta``. Within
a launch every gradient row is owned by one program (``write_rows``: add into an fp32
accumulator, or write the final gradient when no later part touches the row), except the
sampled keys, whose gradients go to the accumulators by fp32 atomics: each program reduces
a whole segment of queries in registers first, so there are few atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from hyperattn.executors.triton.common import (
    LOG2E,
    NO_BLOCK,
    band_mask,
    block_and_sample_rows,
    bucket_tile_rows,
    block_query_tile,
    causal_key_split,
    columns,
    head_base,
    live_key_ranks,
    load_block_key_tile,
    load_key_rows,
    load_key_tile,
    load_query_blocks,
    load_rows,
    load_sampled_key_tile,
    load_sorted_rows,
    next_query_block,
    program_coords,
    query_block_range,
    query_rank_blocks,
    sorted_query_rows,
    write_key_grads,
    write_rows,
)



@triton.jit
def bwd_delta_kernel(Out, DO, DLse, Delta, n_rows, head_dim_v, HAS_DLSE: tl.constexpr, DV_PAD: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Delta = rowsum(dO * O) - dLse over rows of contiguous (rows, Dv) Out/DO, in fp32."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, DV_PAD)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols[None, :] < head_dim_v)
    o = tl.load(Out + rows[:, None] * head_dim_v + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * head_dim_v + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLse + rows, mask=rmask, other=0.0)
    tl.store(Delta + rows, delta, mask=rmask)


@triton.jit
def add_rows_kernel(Acc, Part, Out, stride_pb, stride_ph, stride_pn, num_heads, n_rows, row_start, part_rows,
                    num_tiles, WIDTH: tl.constexpr, W_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """Out[:, :, row_start + i] = Acc[:, :, row_start + i] + Part[:, :, i] for i < part_rows:
    the final gradient of rows that cuDNN's leaves and the fp32 accumulator share.

    Acc (B, H, n_rows, WIDTH) fp32 and Out (in its dtype) contiguous; Part (B, H, part_rows,
    WIDTH) any strides with unit last stride."""
    pid = tl.program_id(0)
    bh = pid // num_tiles
    rows = (pid % num_tiles) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, W_PAD)
    mask = (rows < part_rows)[:, None] & (cols < WIDTH)[None, :]
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    part = tl.load(Part + b * stride_pb + h * stride_ph + rows.to(tl.int64)[:, None] * stride_pn + cols[None, :],
                   mask=mask, other=0.0)
    flat = (bh.to(tl.int64) * n_rows + row_start + rows)[:, None] * WIDTH + cols[None, :]
    acc = tl.load(Acc + flat, mask=mask, other=0.0)
    tl.store(Out + flat, (acc + part.to(tl.float32)).to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _load_query_rows(q_base, DO, Lse, Delta, batch, h, q_rows, rmask, stride_qn, stride_ob, stride_oh, stride_on,
                     stride_lb, stride_lh, offs_d, offs_dv, d_mask, dv_mask):
    """What the backward needs of query rows ``q_rows`` (int64 (R,)) of head ``h``: q (R, D),
    dO (R, Dv), lse in log2 units and delta (R,), and the rows' offsets in Lse (= in Delta, DQ)."""
    q = load_rows(q_base, q_rows, stride_qn, offs_d, rmask, d_mask)
    o_rows = batch.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + q_rows * stride_on
    l_rows = batch.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_rows
    do = load_rows(DO, o_rows, 1, offs_dv, rmask, dv_mask)
    lse2 = tl.load(Lse + l_rows, mask=rmask, other=float("inf")) * LOG2E  # p = 0 on rows past the range
    delta = tl.load(Delta + l_rows, mask=rmask, other=0.0)
    return q, do, lse2, delta, l_rows


@triton.jit
def _score_grads(q, k, v, do, lse2, delta, bias2, visible, scale_log2):
    """p and ds (BM, BN) for a tile: s = q k^T scale (+ bias2, (BN,) log2 biases; -inf: the key
    takes no part), p = exp(s - lse), ds = p (do v^T - delta); p = 0 where ``visible`` (BM, BN) is
    False. ``bias2`` or ``visible`` None: no bias, no mask. Rows past their range (q, dO, delta
    loaded as zeros, lse as +inf: ``_load_query_rows``) get p = 0 and ds = 0: they add nothing to
    dq, dk or dv, whatever a key's bias."""
    qk = tl.dot(q, tl.trans(k))
    if bias2 is None:
        p = tl.exp2(qk * scale_log2 - lse2[:, None])
    else:
        p = tl.exp2(qk * scale_log2 + bias2[None, :] - lse2[:, None])
    if visible is not None:
        p = tl.where(visible, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _block_keys_dq_range(q, do, lse2, delta, dq, block_rows, k_base, v_base, key_row0, k_lo, block_size, n_live,
                         stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, lo, hi, rows_in,
                         key_limits, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq (unscaled) of the query tile over the key block's tiles starting at [lo, hi); ``MASKED``:
    keys outside the block or from ``n_live`` on get a -inf bias (else every key counts);
    ``rows_in`` (BM, 1) bool: the rows that attend to the block (None: all); ``key_limits`` (BM,):
    each row sees only key rows below its limit (None: all)."""
    for start in range(lo, hi, BLOCK_N):
        k, v, kmask, k_rows = load_block_key_tile(block_rows, k_base, v_base, key_row0, k_lo, start, block_size,
                                                  n_live, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask,
                                                  BLOCK_N)
        bias2 = tl.where(kmask, 0.0, float("-inf")) if MASKED else None
        visible = rows_in
        if key_limits is not None:
            if rows_in is None:
                visible = band_mask(k_rows, key_limits, 1)
            else:
                visible = rows_in & band_mask(k_rows, key_limits, 1)
        p, ds = _score_grads(q, k, v, do, lse2, delta, bias2, visible, scale_log2)
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _block_keys_dq(q, do, lse2, delta, dq, block_rows, k_base, v_base, key_row0, k_lo, block_size, n_live,
                   stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, rows_in, key_limits,
                   BLOCK_N: tl.constexpr):
    """dq (unscaled) of the query tile over sorted key ranks [k_lo, k_lo + block_size) below
    ``n_live`` (their rows: ``block_rows``): unmasked tiles first, then the one that ends the keys.
    Rows past the tile's end add nothing (``_score_grads``)."""
    num_keys = tl.maximum(tl.minimum(block_size, n_live - k_lo), 0)
    full_end = num_keys // BLOCK_N * BLOCK_N
    dq = _block_keys_dq_range(q, do, lse2, delta, dq, block_rows, k_base, v_base, key_row0, k_lo, block_size, n_live,
                              stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, 0, full_end,
                              rows_in, key_limits, False, BLOCK_N)
    return _block_keys_dq_range(q, do, lse2, delta, dq, block_rows, k_base, v_base, key_row0, k_lo, block_size,
                                n_live, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, full_end,
                                num_keys, rows_in, key_limits, True, BLOCK_N)


@triton.jit
def _sampled_keys_dq(q, do, lse2, delta, dq, sample_rows, sample_bias2, num_samples, k_base, v_base, key_row0,
                     stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, q_blk, sample_blocks,
                     key_limits, BLOCK_N: tl.constexpr):
    """dq (unscaled) of the query tile over the sampled keys (``load_sample_rows``); with
    ``q_blk`` (the bucket rule) a row skips the samples of its own block (``sample_blocks``), and
    with ``key_limits`` those in its exact window (``Part.band``)."""
    for start in range(0, num_samples, BLOCK_N):
        k, v, live, bias2, k_rows = load_sampled_key_tile(sample_rows, sample_bias2, start, k_base, v_base, key_row0,
                                                          stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask,
                                                          BLOCK_N)
        visible = None
        if q_blk is not None:
            visible = q_blk[:, None] != tl.gather(sample_blocks, start + tl.arange(0, BLOCK_N), 0)[None, :]
        if key_limits is not None:
            if visible is None:
                visible = band_mask(k_rows, key_limits, 1)
            else:
                visible = visible & band_mask(k_rows, key_limits, 1)
        p, ds = _score_grads(q, k, v, do, lse2, delta, bias2, visible, scale_log2)  # skipped: bias2 -inf, p 0
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def hyper_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQAcc, DQ,
    QPerm, KPerm, SIdx, SBlk, SLogW, QBlk,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_samples, block_size, tiles_per_block, num_tiles,
    rects, q_start, k_start, rect_stride,
    num_q_heads, group, sinks, exact_keys, heavy, window_edge,
    WRITE: tl.constexpr, WINDOW: tl.constexpr, EXACT_BLOCK_N: tl.constexpr, BLOCK_KEYS: tl.constexpr, SAMPLES: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ of one query tile: its key block, the samples outside it and, in problem 0 of each
    batch row, the first ``exact_keys`` key rows (attended exactly). Sinks and
    ``EXACT_BLOCK_N``, ``BLOCK_KEYS``, ``SAMPLES``: as in ``hyper_fwd_kernel``.

    DO, DQ share the strides ``stride_o*`` (contiguous (B, Hq, Nq, *) buffers); Lse, Delta
    share ``stride_l*``."""
    tl.static_assert(BLOCK_KEYS % BLOCK_N == 0 and SAMPLES % BLOCK_N == 0)
    tile, zh, z, h, batch, r = program_coords(num_tiles, num_q_heads, rects)
    hk = h // group
    if QBlk is None:
        blk, row0, q_hi = block_query_tile(tile, tiles_per_block, block_size, n_q, n_k, BLOCK_M)
    else:
        row0 = tile * BLOCK_M
        q_hi = n_q
    if row0 < q_hi:
        offs_m = row0 + tl.arange(0, BLOCK_M)
        rmask = offs_m < q_hi
        offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
        q_rows = sorted_query_rows(QPerm, zh, offs_m, rmask, n_q, q_start + r * rect_stride)
        q, do, lse2, delta, l_rows = _load_query_rows(head_base(Q, batch, h, stride_qb, stride_qh), DO, Lse, Delta,
                                                      batch, h, q_rows, rmask, stride_qn, stride_ob, stride_oh,
                                                      stride_on, stride_lb, stride_lh, offs_d, offs_dv, d_mask,
                                                      dv_mask)
        k_base = head_base(K, batch, hk, stride_kb, stride_kh)
        v_base = head_base(V, batch, hk, stride_vb, stride_vh)
        key_row0 = k_start + r * rect_stride
        zk = z * (num_q_heads // group) + hk
        key_limits = None  # with WINDOW: the first key row of each query row's exact window
        if WINDOW:
            key_limits = q_rows + window_edge
        dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
        if QBlk is None:  # the rank rule: one key block per tile
            k_lo, n_live, block_rows, sample_rows, sample_bias2 = block_and_sample_rows(
                KPerm, SIdx, SBlk, SLogW, zk, blk, block_size, n_k, num_samples, sinks, key_row0, heavy, BLOCK_KEYS,
                SAMPLES)
            dq = _block_keys_dq(q, do, lse2, delta, dq, block_rows, k_base, v_base, key_row0, k_lo, block_size,
                                n_live, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, None,
                                key_limits, BLOCK_N)
            dq = _sampled_keys_dq(q, do, lse2, delta, dq, sample_rows, sample_bias2, num_samples, k_base, v_base,
                                  key_row0, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, None,
                                  None, key_limits, BLOCK_N)
        else:  # the bucket rule: each row's own block, the tile's blocks in turn
            q_blk, n_live, sample_rows, sample_bias2, sample_blocks = bucket_tile_rows(
                QBlk, SIdx, SBlk, SLogW, zh, zk, offs_m, rmask, n_q, n_k, num_samples, sinks, key_row0, heavy, SAMPLES)
            blk = next_query_block(q_blk, -1)
            while blk < NO_BLOCK:
                block_rows = load_sorted_rows(KPerm, zk.to(tl.int64) * n_k, blk * block_size, block_size, n_live,
                                              BLOCK_KEYS)
                dq = _block_keys_dq(q, do, lse2, delta, dq, block_rows, k_base, v_base, key_row0, blk * block_size,
                                    block_size, n_live, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask,
                                    scale_log2, (q_blk == blk)[:, None], key_limits, BLOCK_N)
                blk = next_query_block(q_blk, blk)
            dq = _sampled_keys_dq(q, do, lse2, delta, dq, sample_rows, sample_bias2, num_samples, k_base, v_base,
                                  key_row0, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, scale_log2, q_blk,
                                  sample_blocks, key_limits, BLOCK_N)
        if EXACT_BLOCK_N > 0:
            if r == 0:
                dq = _dense_dq_range(q, do, lse2, delta, dq, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m,
                                     rmask, offs_d, offs_dv, d_mask, dv_mask, 0, exact_keys, n_q, exact_keys,
                                     scale_log2, 0, False, 0, EXACT_BLOCK_N)

        write_rows(DQAcc, DQ, l_rows, HEAD_DIM, offs_d, rmask, d_mask, dq * scale, WRITE)  # DQ is laid out like Lse


@triton.jit
def _key_grads_over_queries(k, v, bias2, s_blk, dk, dv, rank_lo, rank_hi, QPerm, QBlk, QOff, blk, num_blocks, Q, DO,
                            Lse, Delta, z, batch, hk, group, num_q_heads, q_start, r, rect_stride, n_q, n_k,
                            block_size, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, stride_lb,
                            stride_lh, offs_d, offs_dv, d_mask, dv_mask, scale_log2, k_rows, window_edge,
                            WINDOW: tl.constexpr, QUERY_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr):
    """dk, dv (unscaled) of a key tile (k, v, log2 biases ``bias2``) plus its gradients from the
    sorted queries of ranks [rank_lo, rank_hi) of every query head of kv head ``hk`` (rows:
    ``q_start + r * rect_stride`` + QPerm of problem z); with QOff (the bucket rule: each query
    head's first rank of each of the ``num_blocks`` key blocks, and its Nq last), the ranks of
    key block ``blk`` in each head instead. ``s_blk`` (BN,): sampled keys' blocks, unseen by the
    queries of that block (QBlk: the queries' blocks under the bucket rule; None: the rank
    rule's); None: every query sees every key (biases -inf aside). ``WINDOW``: a query skips the key
    rows ``k_rows`` (BN,) of its exact window (``Part.band``).
    The rows of QUERY_CHUNK sorted queries at a time sit in registers, so that the query tiles'
    loads depend on no load inside the inner loop (see ``load_sorted_rows``)."""
    for g in range(0, group):
        h = hk * group + g
        zh = z * num_q_heads + h
        zh64 = zh.to(tl.int64)
        q_base = head_base(Q, batch, h, stride_qb, stride_qh)
        lo = rank_lo
        hi = rank_hi
        if QOff is not None:
            lo = tl.load(QOff + zh64 * (num_blocks + 1) + blk)
            hi = tl.load(QOff + zh64 * (num_blocks + 1) + blk + 1)
        for chunk_lo in range(lo, hi, QUERY_CHUNK):
            chunk_rows = load_sorted_rows(QPerm, zh64 * n_q, chunk_lo, QUERY_CHUNK, hi, QUERY_CHUNK)
            for row0 in range(chunk_lo, tl.minimum(chunk_lo + QUERY_CHUNK, hi), BLOCK_M):
                offs_m = row0 + tl.arange(0, BLOCK_M)
                rmask = offs_m < hi
                if s_blk is not None:
                    if QBlk is None:
                        q_blk = query_rank_blocks(offs_m, block_size, n_q, n_k).to(tl.int32)
                    else:
                        q_blk = load_query_blocks(QBlk, zh, offs_m, rmask, n_q)
                q_rows = (q_start + r * rect_stride + tl.gather(chunk_rows, offs_m - chunk_lo, 0)).to(tl.int64)
                q, do, lse2, delta, l_rows = _load_query_rows(q_base, DO, Lse, Delta, batch, h, q_rows, rmask,
                                                              stride_qn, stride_ob, stride_oh, stride_on, stride_lb,
                                                              stride_lh, offs_d, offs_dv, d_mask, dv_mask)
                # rows past their range add nothing (``_score_grads``)
                visible = None
                if s_blk is not None:
                    visible = q_blk[:, None] != s_blk[None, :]
                if WINDOW:
                    if visible is None:
                        visible = band_mask(k_rows, q_rows + window_edge, 1)
                    else:
                        visible = visible & band_mask(k_rows, q_rows + window_edge, 1)
                p, ds = _score_grads(q, k, v, do, lse2, delta, bias2, visible, scale_log2)
                dv += tl.dot(tl.trans(p).to(do.dtype), do)
                dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    return dk, dv


@triton.jit
def hyper_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DKAcc, DK, DVAcc, DV,
    QPerm, KPerm, QOff,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, block_size, key_tiles_per_block, num_tiles,
    rects, q_start, k_start, rect_stride,
    num_kv_heads, group, kv_seq_len, sinks, heavy, num_blocks, window_edge,
    WRITE: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QUERY_CHUNK: tl.constexpr,
):
    """dK, dV of one tile of one key block (block part only), over every query head of its
    kv head and every query of the block (with QOff, the bucket rule's: see
    ``_key_grads_over_queries``). DK, DV: contiguous fp32 (B, Hkv, kv_seq_len, *).
    ``QUERY_CHUNK``: a power of two, a multiple of BLOCK_M (``tiles.query_chunk``)."""
    tl.static_assert(QUERY_CHUNK % BLOCK_M == 0)
    tile, zk, z, hk, batch, r = program_coords(num_tiles, num_kv_heads, rects)
    blk = tile // key_tiles_per_block
    num_q_heads = num_kv_heads * group

    offs_n = (tile % key_tiles_per_block) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = blk * block_size + offs_n
    kmask = (offs_n < block_size) & (ranks < n_k)
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    k_rows = sorted_query_rows(KPerm, zk, ranks, kmask, n_k, k_start + r * rect_stride)
    k, v = load_key_rows(K, V, batch, hk, k_rows, kmask, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh,
                         stride_vn, offs_d, offs_dv, d_mask, dv_mask)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)

    # the plan sorts the sinks after every other key: they get no gradient here (their rows
    # are still written where this part owns them); like ranks past the block, their log2
    # bias is -inf (one add per score, no (BM, BN) mask)
    bias2 = tl.where(kmask & (ranks < live_key_ranks(n_k, sinks, k_start + r * rect_stride, heavy)), 0.0, float("-inf"))
    q_lo, q_hi = query_block_range(blk, block_size, n_q, n_k)
    dk, dv = _key_grads_over_queries(k, v, bias2, None, dk, dv, q_lo, q_hi, QPerm, None, QOff, blk, num_blocks, Q,
                                     DO, Lse, Delta, z, batch,
                                     hk, group, num_q_heads, q_start, r, rect_stride, n_q, n_k, block_size, stride_qb,
                                     stride_qh, stride_qn, stride_ob, stride_oh, stride_on, stride_lb, stride_lh,
                                     offs_d, offs_dv, d_mask, dv_mask, scale_log2, k_rows, window_edge, WINDOW,
                                     QUERY_CHUNK, BLOCK_M)
    write_key_grads(DKAcc, DK, DVAcc, DV, dk * scale, dv, batch, hk, num_kv_heads, kv_seq_len, k_rows, kmask, offs_d,
                    offs_dv, d_mask, dv_mask, HEAD_DIM, HEAD_DIM_V, WRITE)


@triton.jit
def _dense_dq_range(q, do, lse2, delta, dq, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, rmask,
                    offs_d, offs_dv, d_mask, dv_mask, lo, hi, n_q, n_k, scale_log2, edge0,
                    CAUSAL: tl.constexpr, BAND: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq (unscaled) of the query tile over consecutive keys [lo, hi) (masks: ``load_key_tile``)."""
    for start in range(lo, hi, BLOCK_N):
        k, v, visible = load_key_tile(k_base, v_base, key_row0, start, offs_m, n_q, n_k, stride_kn, stride_vn, offs_d,
                                      offs_dv, d_mask, dv_mask, edge0, CAUSAL, BAND, BLOCK_N)
        p, ds = _score_grads(q, k, v, do, lse2, delta, None, rmask[:, None] & visible, scale_log2)
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _dense_dkdv_range(q_base, DO, Lse, Delta, k, v, dk, dv, batch, h, r, q_start, rect_stride,
                      stride_qn, stride_ob, stride_oh, stride_on, stride_lb, stride_lh,
                      offs_n, kmask, offs_d, offs_dv, d_mask, dv_mask, lo, hi, n_q, n_k, scale_log2, k_rows,
                      window_edge, CAUSAL: tl.constexpr, BAND: tl.constexpr, BLOCK_M: tl.constexpr):
    """dk (unscaled), dv of the key tile (rows ``k_rows``) from consecutive queries [lo, hi) of head
    ``h`` (masks: ``load_key_tile``)."""
    for row0 in range(lo, hi, BLOCK_M):
        offs_m = row0 + tl.arange(0, BLOCK_M)
        rmask = offs_m < n_q
        q_rows = (q_start + r * rect_stride + offs_m).to(tl.int64)
        q, do, lse2, delta, l_rows = _load_query_rows(q_base, DO, Lse, Delta, batch, h, q_rows, rmask, stride_qn,
                                                      stride_ob, stride_oh, stride_on, stride_lb, stride_lh,
                                                      offs_d, offs_dv, d_mask, dv_mask)
        visible = rmask[:, None] & kmask[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= (n_k - n_q + offs_m)[:, None])
        if BAND != 0:
            visible = visible & band_mask(k_rows, q_rows + window_edge, BAND)
        p, ds = _score_grads(q, k, v, do, lse2, delta, None, visible, scale_log2)
        dv += tl.dot(tl.trans(p).to(do.dtype), do)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q)
    return dk, dv


@triton.jit
def dense_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQAcc, DQ,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles,
    rects, q_start, k_start, rect_stride, key_rect_stride,
    num_q_heads, group, window_edge,
    CAUSAL: tl.constexpr, BAND: tl.constexpr, WRITE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ of one tile of consecutive queries of an exact (optionally causal) part."""
    tile, _, _, h, batch, r = program_coords(num_tiles, num_q_heads, rects)
    hk = h // group
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = offs_m < n_q
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    q_rows = (q_start + r * rect_stride + offs_m).to(tl.int64)
    q, do, lse2, delta, l_rows = _load_query_rows(head_base(Q, batch, h, stride_qb, stride_qh), DO, Lse, Delta, batch,
                                                  h, q_rows, rmask, stride_qn, stride_ob, stride_oh, stride_on,
                                                  stride_lb, stride_lh, offs_d, offs_dv, d_mask, dv_mask)
    k_base = head_base(K, batch, hk, stride_kb, stride_kh)
    v_base = head_base(V, batch, hk, stride_vb, stride_vh)
    key_row0 = k_start + r * key_rect_stride
    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)

    k_full, k_hi = causal_key_split(tile, n_q, n_k, CAUSAL, BLOCK_M, BLOCK_N)
    edge0 = q_start + r * rect_stride + window_edge
    dq = _dense_dq_range(q, do, lse2, delta, dq, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, rmask,
                         offs_d, offs_dv, d_mask, dv_mask, 0, k_full, n_q, n_k, scale_log2, edge0, False,
                         BAND, BLOCK_N)
    dq = _dense_dq_range(q, do, lse2, delta, dq, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, rmask,
                         offs_d, offs_dv, d_mask, dv_mask, k_full, k_hi, n_q, n_k, scale_log2, edge0, CAUSAL,
                         BAND, BLOCK_N)

    write_rows(DQAcc, DQ, l_rows, HEAD_DIM, offs_d, rmask, d_mask, dq * scale, WRITE)  # DQ is laid out like Lse


@triton.jit
def dense_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DKAcc, DK, DVAcc, DV,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles,
    rects, q_start, k_start, rect_stride, key_rect_stride,
    num_kv_heads, group, kv_seq_len, window_edge,
    CAUSAL: tl.constexpr, BAND: tl.constexpr, WRITE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV of one tile of consecutive keys of an exact part, over the kv head's query heads."""
    tile, _, _, hk, batch, r = program_coords(num_tiles, num_kv_heads, rects)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    kmask = offs_n < n_k
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    k_rows = (k_start + r * key_rect_stride + offs_n).to(tl.int64)
    k, v = load_key_rows(K, V, batch, hk, k_rows, kmask, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh,
                         stride_vn, offs_d, offs_dv, d_mask, dv_mask)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)

    q_lo = 0
    q_full = 0
    if CAUSAL:  # queries from q_lo see part of this key tile, from q_full all of it
        q_lo = tl.maximum(0, tile * BLOCK_N - (n_k - n_q)) // BLOCK_M * BLOCK_M
        q_full = tl.minimum(tl.maximum(q_lo, tile * BLOCK_N + BLOCK_N - 1 - (n_k - n_q)), n_q)
        q_full = tl.minimum((q_full + BLOCK_M - 1) // BLOCK_M * BLOCK_M, n_q)
    for g in range(0, group):
        h = hk * group + g
        q_base = head_base(Q, batch, h, stride_qb, stride_qh)
        dk, dv = _dense_dkdv_range(q_base, DO, Lse, Delta, k, v, dk, dv, batch, h, r, q_start, rect_stride,
                                   stride_qn, stride_ob, stride_oh, stride_on, stride_lb, stride_lh,
                                   offs_n, kmask, offs_d, offs_dv, d_mask, dv_mask, q_lo, q_full, n_q, n_k,
                                   scale_log2, k_rows, window_edge, CAUSAL, BAND, BLOCK_M)
        dk, dv = _dense_dkdv_range(q_base, DO, Lse, Delta, k, v, dk, dv, batch, h, r, q_start, rect_stride,
                                   stride_qn, stride_ob, stride_oh, stride_on, stride_lb, stride_lh,
                                   offs_n, kmask, offs_d, offs_dv, d_mask, dv_mask, q_full, n_q, n_q, n_k,
                                   scale_log2, k_rows, window_edge, False, BAND, BLOCK_M)
    write_key_grads(DKAcc, DK, DVAcc, DV, dk * scale, dv, batch, hk, num_kv_heads, kv_seq_len, k_rows, kmask, offs_d,
                    offs_dv, d_mask, dv_mask, HEAD_DIM, HEAD_DIM_V, WRITE)


@triton.jit
def hyper_bwd_samples_kernel(
    Q, K, V, DO, Lse, Delta, DKAcc, DVAcc,
    QPerm, SIdx, SBlk, SLogW, QBlk,
    scale, scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_samples, block_size, sample_chunks, segments, segment_len,
    rects, q_start, k_start, rect_stride,
    num_kv_heads, group, kv_seq_len, window_edge,
    WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    QUERY_CHUNK: tl.constexpr,
):
    """dK, dV of one chunk of sampled keys from one segment of sorted queries (all query
    heads of the kv head), reduced in registers, then added to the fp32 accumulators
    DKAcc/DVAcc (B, Hkv, kv_seq_len, *) by atomics. ``QUERY_CHUNK``: a power of two, a
    multiple of BLOCK_M (``tiles.query_chunk``)."""
    tl.static_assert(QUERY_CHUNK % BLOCK_M == 0)
    work, zk, z, hk, batch, r = program_coords(sample_chunks * segments, num_kv_heads, rects)
    chunk = work // segments
    segment = work % segments
    num_q_heads = num_kv_heads * group

    offs_n = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
    smask = offs_n < num_samples
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)
    zk64 = zk.to(tl.int64)
    s_local = tl.load(SIdx + zk64 * num_samples + offs_n, mask=smask, other=0)
    s_blk = tl.load(SBlk + zk64 * num_samples + offs_n, mask=smask, other=-1).to(tl.int32)
    bias2 = tl.load(SLogW + zk64 * num_samples + offs_n, mask=smask, other=float("-inf")) * LOG2E
    k_rows = (k_start + r * rect_stride + s_local).to(tl.int64)
    k, v = load_key_rows(K, V, batch, hk, k_rows, smask, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh,
                         stride_vn, offs_d, offs_dv, d_mask, dv_mask)
    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], tl.float32)

    rank_lo = segment * segment_len
    rank_hi = tl.minimum(rank_lo + segment_len, n_q)
    dk, dv = _key_grads_over_queries(k, v, bias2, s_blk, dk, dv, rank_lo, rank_hi, QPerm, QBlk, None, 0, 0, Q, DO,
                                     Lse, Delta, z,
                                     batch, hk, group, num_q_heads, q_start, r, rect_stride, n_q, n_k, block_size,
                                     stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, stride_lb,
                                     stride_lh, offs_d, offs_dv, d_mask, dv_mask, scale_log2, k_rows, window_edge,
                                     WINDOW, QUERY_CHUNK, BLOCK_M)
    write_key_grads(DKAcc, DKAcc, DVAcc, DVAcc, dk * scale, dv, batch, hk, num_kv_heads, kv_seq_len, k_rows, smask,
                    offs_d, offs_dv, d_mask, dv_mask, HEAD_DIM, HEAD_DIM_V, "add")
