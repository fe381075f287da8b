"""sortLSH hashing kernel: projections, sign bits and Gray-code rank in one pass over the rows.

Computes what ``hyperattn.plan.lsh.lsh_buckets`` computes while reading each row once in its
own dtype and writing one bucket per row (``bucket_dtype``: one byte at the default 7
projections). The projections run on the tensor cores (directions rounded to the input dtype,
float32 accumulation), so a row whose projection is within rounding distance of a hyperplane
may land on the other side: harmless for a hash.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hyperattn.executors.triton import on_device
from hyperattn.executors.triton.tiles import tile_width
from hyperattn.plan.lsh import bucket_dtype


@triton.jit
def lsh_bucket_kernel(
    X, Dirs, Out,
    stride_xz, stride_xh, stride_xn,
    n, num_heads, group, num_tiles,
    HEAD_DIM: tl.constexpr, NUM_PROJS: tl.constexpr, D_PAD: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    zh = pid // num_tiles
    tile = pid % num_tiles
    z = zh // num_heads
    h = zh % num_heads
    offs_n = tile * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    offs_r = tl.arange(0, R_PAD)
    rmask = offs_n < n
    x = tl.load(X + z.to(tl.int64) * stride_xz + h.to(tl.int64) * stride_xh
                + offs_n.to(tl.int64)[:, None] * stride_xn + offs_d[None, :],
                mask=rmask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    dirs = tl.load(Dirs + (h // group) * HEAD_DIM * NUM_PROJS + offs_d[:, None] * NUM_PROJS + offs_r[None, :],
                   mask=(offs_d[:, None] < HEAD_DIM) & (offs_r[None, :] < NUM_PROJS), other=0.0)
    proj = tl.dot(x, dirs.to(x.dtype))
    bits = tl.where((proj > 0) & (offs_r[None, :] < NUM_PROJS), 1 << offs_r[None, :], 0)
    rank = tl.sum(bits, axis=1)
    rank ^= rank >> 1
    rank ^= rank >> 2
    rank ^= rank >> 4
    rank ^= rank >> 8
    tl.store(Out + zh.to(tl.int64) * n + offs_n, rank.to(Out.dtype.element_ty), mask=rmask)


def lsh_buckets_triton(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``hyperattn.plan.lsh_buckets`` in one kernel: x (Z, H, N, D) fp16/bf16 on CUDA (or under
    the interpreter), directions float32 (Hkv, D, r) -> (Z, H, N) of ``bucket_dtype(r)``."""
    z, heads, n, d = x.shape
    num_kv_heads, _, num_projs = directions.shape
    x = x.detach()
    if x.stride(-1) != 1:
        x = x.contiguous()
    directions = directions.to(x.device)
    out = torch.empty(z, heads, n, dtype=bucket_dtype(num_projs), device=x.device)
    block = 128
    tiles = triton.cdiv(n, block)
    with on_device(x):
        lsh_bucket_kernel[(z * heads * tiles,)](
            x, directions.contiguous(), out, x.stride(0), x.stride(1), x.stride(2), n, heads, heads // num_kv_heads,
            tiles, HEAD_DIM=d, NUM_PROJS=num_projs, D_PAD=tile_width(d), R_PAD=16, BLOCK=block)
    return out
