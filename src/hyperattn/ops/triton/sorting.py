"""Stable counting sort of rows by LSH bucket: the permutation and its inverse in three passes.

Computes what ``torch.sort(buckets, dim=-1, stable=True)`` and an inverse scatter compute,
for bucket codes of at most ``MAX_COUNTING_SORT_BITS`` bits: a histogram per chunk of rows,
an exclusive prefix sum over (bucket, chunk) per sequence, then each row's place = the
offset of its (bucket, chunk) + the rows of its bucket before it in the chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hyperattn.ops.triton import on_device

MAX_COUNTING_SORT_BITS = 8


@triton.jit
def _chunk_one_hot(Buckets, seq, chunk, n, CHUNK: tl.constexpr, NUM_BUCKETS: tl.constexpr):
    """Rows of one chunk of sequence ``seq``: their offsets (CHUNK,), mask, bucket (CHUNK,) and
    one-hot (CHUNK, NUM_BUCKETS) int32."""
    rows = chunk * CHUNK + tl.arange(0, CHUNK)
    rmask = rows < n
    bucket = tl.load(Buckets + seq.to(tl.int64) * n + rows, mask=rmask, other=0)
    one_hot = (bucket[:, None] == tl.arange(0, NUM_BUCKETS)[None, :]) & rmask[:, None]
    return rows, rmask, bucket, one_hot.to(tl.int32)


@triton.jit
def bucket_histogram_kernel(Buckets, Hist, n, num_chunks, CHUNK: tl.constexpr, NUM_BUCKETS: tl.constexpr):
    """Hist (S, NUM_BUCKETS, num_chunks) int32: rows of each bucket in each chunk of each sequence."""
    seq = tl.program_id(0)
    chunk = tl.program_id(1)
    _, _, _, one_hot = _chunk_one_hot(Buckets, seq, chunk, n, CHUNK, NUM_BUCKETS)
    counts = tl.sum(one_hot, axis=0)
    tl.store(Hist + (seq.to(tl.int64) * NUM_BUCKETS + tl.arange(0, NUM_BUCKETS)) * num_chunks + chunk, counts)


@triton.jit
def bucket_scatter_kernel(Buckets, Offsets, Perm, Rank, n, num_chunks, CHUNK: tl.constexpr,
                          NUM_BUCKETS: tl.constexpr):
    """Perm[seq, place] = row and Rank[seq, row] = place, where place = Offsets[seq, bucket, chunk]
    (rows of earlier buckets and of this bucket in earlier chunks) + this bucket's rows
    before the row in its chunk."""
    seq = tl.program_id(0)
    chunk = tl.program_id(1)
    rows, rmask, bucket, one_hot = _chunk_one_hot(Buckets, seq, chunk, n, CHUNK, NUM_BUCKETS)
    before = tl.sum(tl.where(one_hot != 0, tl.cumsum(one_hot, axis=0), 0), axis=1) - 1
    seq64 = seq.to(tl.int64)
    offset = tl.load(Offsets + (seq64 * NUM_BUCKETS + bucket) * num_chunks + chunk, mask=rmask, other=0)
    place = (offset + before).to(tl.int64)
    tl.store(Perm + seq64 * n + place, rows.to(tl.int64), mask=rmask)
    tl.store(Rank + seq64 * n + rows, place, mask=rmask)


def counting_sort_permutation(buckets: torch.Tensor, num_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of int32 ``buckets`` (..., N) with values in [0, 2**num_bits), num_bits at
    most ``MAX_COUNTING_SORT_BITS``, along the last dim: (perm, rank), both int64 (..., N),
    ``perm[..., p]`` the row at sorted place p and ``rank`` its inverse."""
    if not 1 <= num_bits <= MAX_COUNTING_SORT_BITS:
        raise ValueError(f"counting_sort_permutation: num_bits must be in [1, {MAX_COUNTING_SORT_BITS}], got {num_bits}")
    shape, n = buckets.shape, buckets.shape[-1]
    if buckets.numel() == 0:
        return (torch.empty(shape, dtype=torch.int64, device=buckets.device),) * 2
    flat = buckets.reshape(-1, n).to(torch.int32).contiguous()
    perm = torch.empty(flat.shape, dtype=torch.int64, device=buckets.device)
    rank = torch.empty_like(perm)
    num_buckets = max(16, 1 << num_bits)
    chunk = 16384 // num_buckets  # a (chunk, num_buckets) one-hot tile: 128 int32 registers a thread
    num_chunks = triton.cdiv(n, chunk)
    hist = torch.empty(flat.shape[0], num_buckets, num_chunks, dtype=torch.int32, device=buckets.device)
    grid = (flat.shape[0], num_chunks)
    with on_device(buckets):
        bucket_histogram_kernel[grid](flat, hist, n, num_chunks, CHUNK=chunk, NUM_BUCKETS=num_buckets)
        counts = hist.view(flat.shape[0], -1)
        offsets = torch.cumsum(counts, 1, dtype=torch.int32) - counts
        bucket_scatter_kernel[grid](flat, offsets, perm, rank, n, num_chunks, CHUNK=chunk,
                                    NUM_BUCKETS=num_buckets)
    return perm.view(shape), rank.view(shape)
