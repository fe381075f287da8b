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
                  dv_mask, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """k (BN, D) and v (BN, Dv) of the consecutive keys from ``start``, and which of them each
    query of ``offs_m`` sees (BM, BN): none past ``n_k``; with ``CAUSAL`` none after the query
    (bottom-right: query i sees keys j <= n_k - n_q + i)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    kmask = offs_n < n_k
    k_rows = (key_row0 + offs_n).to(tl.int64)
    k = load_rows(k_base, k_rows, stride_kn, offs_d, kmask, d_mask)
    v = load_rows(v_base, k_rows, stride_vn, offs_dv, kmask, dv_mask)
    visible = kmask[None, :]
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= (n_k - n_q + offs_m)[:, None])
    return k, v, visible


@triton.jit
def live_key_ranks(n_k, sinks, key_row0):
    """Sorted key ranks below which a problem's keys are not sinks: ``make_plan`` sorts the
    problem's key rows below ``sinks`` (its rows start at ``key_row0``) after every other key."""
    return n_k - tl.minimum(tl.maximum(sinks - key_row0, 0), n_k)


@triton.jit
def load_block_key_tile(KPerm, perm_offset, k_base, v_base, key_row0, k_lo, start, block_size, n_live, stride_kn,
                        stride_vn, offs_d, offs_dv, d_mask, dv_mask, BLOCK_N: tl.constexpr):
    """k (BN, D), v (BN, Dv) and which are keys (BN,) of sorted key ranks ``k_lo + start + [0, BN)``
    of a key block (through KPerm at ``perm_offset``): ranks inside the block and below ``n_live``
    (the plan sorts the sinks after every other key)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    ranks = k_lo + offs_n
    kmask = (offs_n < block_size) & (ranks < n_live)
    k_local = tl.load(KPerm + perm_offset + ranks, mask=kmask, other=0)
    k_rows = (key_row0 + k_local).to(tl.int64)
    k = load_rows(k_base, k_rows, stride_kn, offs_d, kmask, d_mask)
    v = load_rows(v_base, k_rows, stride_vn, offs_dv, kmask, dv_mask)
    return k, v, kmask


@triton.jit
def load_sampled_key_tile(SIdx, SBlk, SLogW, sample_offset, start, num_samples, blk, k_base, v_base, key_row0,
                          stride_kn, stride_vn, offs_d, offs_dv, d_mask, dv_mask, BLOCK_N: tl.constexpr):
    """k (BN, D), v (BN, Dv), which count (BN,) and their log2 weights (BN,) of sampled keys
    ``start + [0, BN)`` for queries of key block ``blk``: samples of that block do not count
    (the block part has them); sampled sinks carry weight -inf."""
    offs_n = start + tl.arange(0, BLOCK_N)
    smask = offs_n < num_samples
    s_local = tl.load(SIdx + sample_offset + offs_n, mask=smask, other=0)
    s_blk = tl.load(SBlk + sample_offset + offs_n, mask=smask, other=-1)
    bias2 = tl.load(SLogW + sample_offset + offs_n, mask=smask, other=0.0) * LOG2E
    k_rows = (key_row0 + s_local).to(tl.int64)
    live = smask & (s_blk != blk)
    k = load_rows(k_base, k_rows, stride_kn, offs_d, live, d_mask)
    v = load_rows(v_base, k_rows, stride_vn, offs_dv, live, dv_mask)
    return k, v, live, bias2


@triton.jit
def query_block_range(blk, block_size, n_q, n_k):
    """Sorted query ranks [lo, hi) of key block ``blk``: p with (p * n_k // n_q) // block_size == blk.
    64-bit: blk * block_size * n_q passes 2**31 from about 64k tokens on."""
    lo = (blk.to(tl.int64) * block_size * n_q + n_k - 1) // n_k
    hi = tl.minimum(((blk.to(tl.int64) + 1) * block_size * n_q + n_k - 1) // n_k, n_q)
    return lo, hi


@triton.jit
def write_rows(Acc, Final, rows, row_stride, cols, row_mask, col_mask, value, WRITE: tl.constexpr):
    """Write a gradient tile.

    ``WRITE``: "add" does ``Acc += value`` (fp32) on rows this program alone owns; "atomic"
    does it with atomics (rows other programs add to as well); "finish" writes ``Acc + value``
    to Final in Final's dtype; "store" writes ``value`` to Final. Acc and Final share the layout."""
    offsets = rows[:, None] * row_stride + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    if WRITE == "atomic":
        tl.atomic_add(Acc + offsets, value, mask=mask)
    elif WRITE == "store":
        tl.store(Final + offsets, value.to(Final.dtype.element_ty), mask=mask)
    else:
        total = tl.load(Acc + offsets, mask=mask, other=0.0) + value
        if WRITE == "finish":
            tl.store(Final + offsets, total.to(Final.dtype.element_ty), mask=mask)
        else:
            tl.store(Acc + offsets, total, mask=mask)
