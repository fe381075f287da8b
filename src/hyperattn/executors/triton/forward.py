"""Forward kernels: attention over one part of the pattern, merged into fp32 accumulators.

A *part* is a batch of problems of one shape: the whole input, the rectangles of one causal
level, the diagonal leaves, the prefix, the exact sinks. Problem ``z = batch * rects + r``
reads query rows ``q_start + r * rect_stride + i`` and key rows
``k_start + r * key_rect_stride + j`` of the original tensors (only the exact tail's few
query rows are copied, once per key chunk). Scores live in the log2 domain; the stored lse
is natural-log. Offsets that scale with the sequence are 64-bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

from hyperattn.executors.triton.common import (
    LOG2E,
    LN2,
    NO_BLOCK,
    band_mask,
    block_and_sample_rows,
    bucket_tile_rows,
    block_query_tile,
    causal_key_split,
    columns,
    head_base,
    load_block_key_tile,
    load_key_tile,
    load_rows,
    load_sampled_key_tile,
    load_sorted_rows,
    next_query_block,
    program_coords,
    sorted_query_rows,
)



@triton.jit
def softmax_step(s, v, m_i, l_i, acc):
    """One online-softmax step. s (BM, BN) fp32 log2 scores (-inf masked), v (BN, DV); a row
    that has seen no key yet keeps m_i -inf and l_i 0."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def merge_lse2(prev_out, prev2, out, lse2):
    """Merge two partial results of rows: (BM, DV) outputs and (BM,) lse in log2 units.
    A side with lse -inf (no keys, or nothing written yet) counts for nothing, whatever its
    output holds; rows where both are -inf get out 0 and lse -inf."""
    top = tl.maximum(prev2, lse2)
    top = tl.where(top == float("-inf"), 0.0, top)
    w_prev = tl.where(prev2 == float("-inf"), 0.0, tl.exp2(prev2 - top))
    w_new = tl.where(lse2 == float("-inf"), 0.0, tl.exp2(lse2 - top))
    total = w_prev + w_new
    prev_out = tl.where(w_prev[:, None] > 0.0, prev_out, 0.0)
    out = tl.where(w_new[:, None] > 0.0, out, 0.0)
    safe_total = tl.where(total > 0.0, total, 1.0)
    merged = (w_prev[:, None] * prev_out + w_new[:, None] * out) / safe_total[:, None]
    return merged, tl.where(total > 0.0, top + tl.log2(safe_total), float("-inf"))


@triton.jit
def _written_lse2(Lse, lse_rows, rmask, MERGE: tl.constexpr):
    """The lse (log2 units) a merging program's rows hold so far, loaded before its loops so
    that the epilogue's output read does not wait for it: (BM,) fp32, -inf where no part wrote
    yet (or without MERGE)."""
    if MERGE:
        return tl.load(Lse + lse_rows, mask=rmask, other=float("-inf")) * LOG2E
    return tl.full(rmask.shape, float("-inf"), tl.float32)


@triton.jit
def open_query_tile(Q, K, V, Lse, batch, h, hk, q_rows, rmask, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
                     stride_vb, stride_vh, stride_lb, stride_lh, offs_d, d_mask, MERGE: tl.constexpr,
                     BLOCK_M: tl.constexpr, DV_PAD: tl.constexpr):
    """What a forward program holds before its key loops, for query rows ``q_rows`` of head ``h``
    (kv head ``hk``): q (BM, D), the rows' offsets in Lse and their lse so far (``_written_lse2``),
    the k and v bases, and the online softmax's empty state (m, l, acc)."""
    q = load_rows(head_base(Q, batch, h, stride_qb, stride_qh), q_rows, stride_qn, offs_d, rmask, d_mask)
    lse_rows = batch.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_rows
    prev2 = _written_lse2(Lse, lse_rows, rmask, MERGE)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], tl.float32)
    return (q, lse_rows, prev2, head_base(K, batch, hk, stride_kb, stride_kh), head_base(V, batch, hk, stride_vb,
            stride_vh), m_i, l_i, acc)


@triton.jit
def finish_rows(Out, Lse, o_rows, lse_rows, offs_dv, rmask, acc, m_i, l_i, prev2, MERGE: tl.constexpr,
                 HEAD_DIM_V: tl.constexpr):
    """Normalize and store (or merge into) the output rows (fp32 when merging).

    o_rows (BM,) int64 offsets of the rows in Out, lse_rows (BM,) int64 offsets in Lse, prev2
    their lse so far (``_written_lse2``). Merging rows that hold lse -inf takes the new values
    (their output is not read); rows that saw no key get out 0 and lse -inf."""
    lse2 = m_i + tl.log2(l_i)  # -inf for rows that saw no key: merged as nothing, written as 0
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_ptrs = Out + o_rows[:, None] + offs_dv[None, :]
    o_mask = rmask[:, None] & (offs_dv[None, :] < HEAD_DIM_V)
    if MERGE:
        prev_out = tl.load(o_ptrs, mask=o_mask & (prev2 > float("-inf"))[:, None], other=0.0)
        out, lse2 = merge_lse2(prev_out, prev2, out, lse2)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_mask)
    tl.store(Lse + lse_rows, lse2 * LN2, mask=rmask)


@triton.jit
def merge_leaves_kernel(
    Acc, AccLse, Leaf, LeafLse, Out, Lse,
    stride_lfb, stride_lfh, stride_lfn, stride_llb, stride_llh, stride_lln,
    num_heads, n_q, leaf_lo, leaf_hi, num_tiles,
    HEAD_DIM_V: tl.constexpr, DV_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """The forward's last pass: Out, Lse = merge(Acc, AccLse; Leaf, LeafLse) per row.

    Acc (B, H, Nq, Dv) fp32 and AccLse (B, H, Nq) hold every part the kernels ran (lse -inf
    where none wrote); Leaf (B, H, leaf_hi - leaf_lo, Dv) and LeafLse (B, H, *) (any strides)
    are cuDNN's diagonal leaves of query rows [leaf_lo, leaf_hi) (none when leaf_lo == leaf_hi).
    Out (in its dtype) and Lse are contiguous like Acc."""
    pid = tl.program_id(0)
    bh = pid // num_tiles
    rows = (pid % num_tiles) * BLOCK + tl.arange(0, BLOCK)
    b = bh // num_heads
    h = bh % num_heads
    cols = tl.arange(0, DV_PAD)
    rmask = rows < n_q
    cmask = cols < HEAD_DIM_V
    flat = bh.to(tl.int64) * n_q + rows
    acc = tl.load(Acc + flat[:, None] * HEAD_DIM_V + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    acc_lse2 = tl.load(AccLse + flat, mask=rmask, other=float("-inf")) * LOG2E
    in_leaf = rmask & (rows >= leaf_lo) & (rows < leaf_hi)
    leaf_rows = (rows - leaf_lo).to(tl.int64)
    leaf = tl.load(Leaf + b.to(tl.int64) * stride_lfb + h.to(tl.int64) * stride_lfh
                   + leaf_rows[:, None] * stride_lfn + cols[None, :],
                   mask=in_leaf[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    leaf_lse2 = tl.load(LeafLse + b.to(tl.int64) * stride_llb + h.to(tl.int64) * stride_llh + leaf_rows * stride_lln,
                        mask=in_leaf, other=float("-inf")) * LOG2E
    out, lse2 = merge_lse2(acc, acc_lse2, leaf, leaf_lse2)
    tl.store(Out + flat[:, None] * HEAD_DIM_V + cols[None, :], out.to(Out.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])
    tl.store(Lse + flat, lse2 * LN2, mask=rmask)


@triton.jit
def merge_copies_kernel(
    Part, PartLse, Out, Lse, copies, rows_per_copy, n_q,
    HEAD_DIM_V: tl.constexpr, DV_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """The exact tail's last pass: Out, Lse rows [n_q - R, n_q) = the merge of ``copies``
    partial results of those rows (R = ``rows_per_copy``).

    Part (B, H, copies * R, Dv) fp32 and PartLse (B, H, copies * R) hold copy c's partial
    result of row i at row c * R + i; Out (in its dtype) and Lse are contiguous (B, H, n_q, *)."""
    pid = tl.program_id(0)
    tiles = tl.cdiv(rows_per_copy, BLOCK)
    bh = (pid // tiles).to(tl.int64)
    rows = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, DV_PAD)
    rmask = rows < rows_per_copy
    mask = rmask[:, None] & (cols[None, :] < HEAD_DIM_V)
    out = tl.zeros([BLOCK, DV_PAD], tl.float32)
    lse2 = tl.full([BLOCK], float("-inf"), tl.float32)
    for c in range(0, copies):
        flat = (bh * copies + c) * rows_per_copy + rows
        part = tl.load(Part + flat[:, None] * HEAD_DIM_V + cols[None, :], mask=mask, other=0.0)
        part_lse2 = tl.load(PartLse + flat, mask=rmask, other=float("-inf")) * LOG2E
        out, lse2 = merge_lse2(out, lse2, part, part_lse2)
    flat = bh * n_q + n_q - rows_per_copy + rows
    tl.store(Out + flat[:, None] * HEAD_DIM_V + cols[None, :], out.to(Out.dtype.element_ty), mask=mask)
    tl.store(Lse + flat, lse2 * LN2, mask=rmask)


@triton.jit
def _block_keys_fwd(q, block_rows, k_base, v_base, key_row0, k_lo, block_size, n_live, stride_kn, stride_vn, offs_d,
                    offs_dv, d_mask, dv_mask, m_i, l_i, acc, scale_log2, rows_in, key_limits,
                    BLOCK_N: tl.constexpr):
    """Online softmax of the query tile over sorted key ranks [k_lo, k_lo + block_size) below
    ``n_live`` (their rows: ``block_rows``); ``rows_in`` (BM,) bool: the rows that attend to
    this block (None: all); ``key_limits`` (BM,): each row sees only key rows below its limit
    (None: all)."""
    for start in range(0, block_size, BLOCK_N):
        k, v, kmask, k_rows = load_block_key_tile(block_rows, k_base, v_base, key_row0, k_lo, start, block_size,
                                                  n_live, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask,
                                                  BLOCK_N)
        visible = kmask[None, :]
        if rows_in is not None:
            visible = visible & rows_in[:, None]
        if key_limits is not None:
            visible = visible & band_mask(k_rows, key_limits, 1)
        s = tl.where(visible, tl.dot(q, tl.trans(k)) * scale_log2, float("-inf"))
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc)
    return m_i, l_i, acc


@triton.jit
def _sampled_keys_fwd(q, sample_rows, sample_bias2, num_samples, k_base, v_base, key_row0, stride_kn, stride_vn,
                      offs_d, offs_dv, d_mask, dv_mask, m_i, l_i, acc, scale_log2, q_blk, sample_blocks, key_limits,
                      BLOCK_N: tl.constexpr):
    """Online softmax of the query tile over the sampled keys (``load_sample_rows``: rows and
    log2 weights, -inf for those it skips); with ``q_blk`` (BM,) (the bucket rule), a row also
    skips the samples of its own block (``sample_blocks``: ``load_sample_blocks``), and with
    ``key_limits`` those in its exact window (``Part.band``)."""
    for start in range(0, num_samples, BLOCK_N):
        k, v, live, bias2, k_rows = load_sampled_key_tile(sample_rows, sample_bias2, start, k_base, v_base, key_row0,
                                                          stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask,
                                                          BLOCK_N)
        # a skipped sample loads as zeros: its score is 0 * scale_log2 + (-inf)
        s = tl.dot(q, tl.trans(k)) * scale_log2 + bias2[None, :]
        if q_blk is not None:
            s_blk = tl.gather(sample_blocks, start + tl.arange(0, BLOCK_N), 0)
            s = tl.where(q_blk[:, None] != s_blk[None, :], s, float("-inf"))
        if key_limits is not None:
            s = tl.where(band_mask(k_rows, key_limits, 1), s, float("-inf"))
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc)
    return m_i, l_i, acc


@triton.jit
def _fold_rows(m_i, l_i, acc, part_out, part_lse2):
    """Fold a finished partial result of the rows (BM, DV) fp32 and its lse (BM,) (log2 units,
    -inf for rows it holds nothing of) into the online softmax's state (m, l, acc)."""
    m_new = tl.maximum(m_i, part_lse2)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    beta = tl.exp2(part_lse2 - m_safe)
    part_out = tl.where((part_lse2 > float("-inf"))[:, None], part_out, 0.0)
    return m_new, l_i * alpha + beta, acc * alpha[:, None] + beta[:, None] * part_out


@triton.jit
def hyper_fwd_kernel(
    Q, K, V, Out, Lse,
    QPerm, KPerm, SIdx, SBlk, SLogW, QBlk, HeavyOut, HeavyLse,
    scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    stride_hob, stride_hor, stride_hoh, stride_hon,
    stride_hlb, stride_hlr, stride_hlh, stride_hln,
    n_q, n_k, num_samples, block_size, tiles_per_block, num_tiles,
    rects, q_start, k_start, rect_stride,
    num_q_heads, group, sinks, exact_keys, heavy, window_edge,
    MERGE: tl.constexpr, WINDOW: tl.constexpr, EXACT_BLOCK_N: tl.constexpr, BLOCK_KEYS: tl.constexpr, SAMPLES: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: one tile of the sorted queries of one key block, one (problem, head); with
    QBlk (the plan's ``q_block``, the bucket rule), one tile of consecutive sorted queries, each
    row attending to its own key block.

    Attends to the key block (through KPerm) and to the sampled keys outside it (through
    SIdx, with log-weights SLogW), in one online softmax. Key rows below ``sinks`` take no part:
    the plan sorts them after every other key of their problem (so the block loop stops
    before them) and gives their samples log-weight -inf (``hyperattn.plan.make_plan``); an
    exact part attends to them, or this one: problem 0 of each batch row attends to its first
    ``exact_keys`` key rows, exactly, in the same softmax, in tiles of ``EXACT_BLOCK_N`` keys
    (0 where exact_keys is 0, which compiles that loop out). With HeavyOut (not None) the heavy
    keys are done (``hyperattn.executors.cudnn.heavy_keys_forward``): the samples given exclude
    them, and each row folds in its result there, HeavyOut (B, rects, Hq, n_q, Dv) and HeavyLse
    (B, rects, Hq, n_q) at rectangle-local rows. ``BLOCK_KEYS``, ``SAMPLES``: powers
    of two, at least block_size and num_samples and at least BLOCK_N (``tiles.index_widths``)."""
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
        q, lse_rows, prev2, k_base, v_base, m_i, l_i, acc = open_query_tile(
            Q, K, V, Lse, batch, h, hk, q_rows, rmask, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
            stride_vb, stride_vh, stride_lb, stride_lh, offs_d, d_mask, MERGE, BLOCK_M, DV_PAD)
        key_row0 = k_start + r * rect_stride
        zk = z * (num_q_heads // group) + hk
        key_limits = None  # with WINDOW: the first key row of each query row's exact window
        if WINDOW:
            key_limits = q_rows + window_edge

        if QBlk is None:  # the rank rule: one key block per tile
            k_lo, n_live, block_rows, sample_rows, sample_bias2 = block_and_sample_rows(
                KPerm, SIdx, SBlk, SLogW, zk, blk, block_size, n_k, num_samples, sinks, key_row0, heavy, BLOCK_KEYS,
                SAMPLES)
            m_i, l_i, acc = _block_keys_fwd(q, block_rows, k_base, v_base, key_row0, k_lo, block_size, n_live,
                                            stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, m_i, l_i, acc,
                                            scale_log2, None, key_limits, BLOCK_N)
            m_i, l_i, acc = _sampled_keys_fwd(q, sample_rows, sample_bias2, num_samples, k_base, v_base, key_row0,
                                              stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, m_i, l_i, acc,
                                              scale_log2, None, None, key_limits, BLOCK_N)
        else:  # the bucket rule: each row's own block, the tile's blocks in turn
            q_blk, n_live, sample_rows, sample_bias2, sample_blocks = bucket_tile_rows(
                QBlk, SIdx, SBlk, SLogW, zh, zk, offs_m, rmask, n_q, n_k, num_samples, sinks, key_row0, heavy, SAMPLES)
            blk = next_query_block(q_blk, -1)
            while blk < NO_BLOCK:
                block_rows = load_sorted_rows(KPerm, zk.to(tl.int64) * n_k, blk * block_size, block_size, n_live,
                                              BLOCK_KEYS)
                m_i, l_i, acc = _block_keys_fwd(q, block_rows, k_base, v_base, key_row0, blk * block_size, block_size,
                                                n_live, stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, m_i,
                                                l_i, acc, scale_log2, q_blk == blk, key_limits, BLOCK_N)
                blk = next_query_block(q_blk, blk)
            m_i, l_i, acc = _sampled_keys_fwd(q, sample_rows, sample_bias2, num_samples, k_base, v_base, key_row0,
                                              stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, m_i, l_i, acc,
                                              scale_log2, q_blk, sample_blocks, key_limits, BLOCK_N)
        if EXACT_BLOCK_N > 0:
            if r == 0:
                m_i, l_i, acc = _dense_fwd_range(q, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, offs_d,
                                                 offs_dv, d_mask, dv_mask, 0, exact_keys, n_q, exact_keys, m_i, l_i,
                                                 acc, scale_log2, 0, False, 0, EXACT_BLOCK_N)

        if HeavyOut is not None:
            local = q_rows - (q_start + r * rect_stride)
            h_out = tl.load(HeavyOut + batch.to(tl.int64) * stride_hob + r.to(tl.int64) * stride_hor
                            + h.to(tl.int64) * stride_hoh + local[:, None] * stride_hon + offs_dv[None, :],
                            mask=rmask[:, None] & dv_mask[None, :], other=0.0).to(tl.float32)
            h_lse2 = tl.load(HeavyLse + batch.to(tl.int64) * stride_hlb + r.to(tl.int64) * stride_hlr
                             + h.to(tl.int64) * stride_hlh + local * stride_hln, mask=rmask,
                             other=float("-inf")) * LOG2E
            m_i, l_i, acc = _fold_rows(m_i, l_i, acc, h_out, h_lse2)

        o_rows = batch.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + q_rows * stride_on
        finish_rows(Out, Lse, o_rows, lse_rows, offs_dv, rmask, acc, m_i, l_i, prev2, MERGE, HEAD_DIM_V)


@triton.jit
def _dense_fwd_range(q, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv, d_mask, dv_mask,
                     lo, hi, n_q, n_k, m_i, l_i, acc, scale_log2, edge0, CAUSAL: tl.constexpr,
                     BAND: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax of the query tile over consecutive keys [lo, hi); ``CAUSAL`` masks
    keys after each query (bottom-right), ``BAND`` those outside or inside its window
    (``load_key_tile``)."""
    for start in range(lo, hi, BLOCK_N):
        k, v, visible = load_key_tile(k_base, v_base, key_row0, start, offs_m, n_q, n_k, stride_kn, stride_vn, offs_d,
                                      offs_dv, d_mask, dv_mask, edge0, CAUSAL, BAND, BLOCK_N)
        s = tl.where(visible, tl.dot(q, tl.trans(k)) * scale_log2, float("-inf"))
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc)
    return m_i, l_i, acc


@triton.jit
def dense_fwd_kernel(
    Q, K, V, Out, Lse,
    scale_log2,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_lb, stride_lh,
    n_q, n_k, num_tiles,
    rects, q_start, k_start, rect_stride, key_rect_stride,
    num_q_heads, group, window_edge,
    CAUSAL: tl.constexpr, BAND: tl.constexpr, MERGE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Exact attention of one tile of consecutive queries of one (problem, head); causal is
    bottom-right aligned (query i sees keys j <= n_k - n_q + i); ``BAND``: only the keys outside
    (1) or inside (2) each query's exact window
    (``window_key_limits``: ``window_edge``). Problem r reads query rows from
    ``q_start + r * rect_stride`` and key rows from ``k_start + r * key_rect_stride``."""
    tile, _, _, h, batch, r = program_coords(num_tiles, num_q_heads, rects)
    hk = h // group
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = offs_m < n_q
    offs_d, offs_dv, d_mask, dv_mask = columns(HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD)

    q_rows = (q_start + r * rect_stride + offs_m).to(tl.int64)
    q, lse_rows, prev2, k_base, v_base, m_i, l_i, acc = open_query_tile(
        Q, K, V, Lse, batch, h, hk, q_rows, rmask, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh,
        stride_vb, stride_vh, stride_lb, stride_lh, offs_d, d_mask, MERGE, BLOCK_M, DV_PAD)
    key_row0 = k_start + r * key_rect_stride

    edge0 = q_start + r * rect_stride + window_edge
    k_full, k_hi = causal_key_split(tile, n_q, n_k, CAUSAL, BLOCK_M, BLOCK_N)
    m_i, l_i, acc = _dense_fwd_range(q, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
                                     d_mask, dv_mask, 0, k_full, n_q, n_k, m_i, l_i, acc, scale_log2, edge0,
                                     False, BAND, BLOCK_N)
    m_i, l_i, acc = _dense_fwd_range(q, k_base, v_base, key_row0, stride_kn, stride_vn, offs_m, offs_d, offs_dv,
                                     d_mask, dv_mask, k_full, k_hi, n_q, n_k, m_i, l_i, acc, scale_log2, edge0,
                                     CAUSAL, BAND, BLOCK_N)

    o_rows = batch.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + q_rows * stride_on
    finish_rows(Out, Lse, o_rows, lse_rows, offs_dv, rmask, acc, m_i, l_i, prev2, MERGE, HEAD_DIM_V)
