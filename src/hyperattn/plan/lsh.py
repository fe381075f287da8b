"""sortLSH: angular LSH codes in Gray-code bucket order, and the permutations that sort by them."""

from __future__ import annotations

import torch


def lsh_directions(num_kv_heads: int, head_dim: int, num_projs: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian hyperplane normals, one set per kv head.

    Returns float32 (num_kv_heads, head_dim, num_projs) on the generator's device.
    """
    return torch.randn(num_kv_heads, head_dim, num_projs, generator=generator, dtype=torch.float32,
                       device=generator.device)


def bucket_dtype(num_projs: int) -> torch.dtype:
    """The narrowest integer dtype for the 2**num_projs buckets of ``lsh_buckets`` whose
    largest value stays free (``make_plan`` sorts exact sinks last under it): uint8 up to 7
    projections, int16 up to 14, else int32. A sort's radix passes scale with the key's bytes,
    so narrow buckets sort up to 4x faster."""
    return torch.uint8 if num_projs <= 7 else torch.int16 if num_projs <= 14 else torch.int32


def gray_code_rank(codes: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Position of each code in the reflected Gray-code sequence ``i ^ (i >> 1)``.

    Neighbouring positions differ in one bit, i.e. one hyperplane, so buckets that are
    close in this order are close in angle. ``codes``: integer tensor with values in
    ``[0, 2**num_bits)``; returns the same shape and dtype.
    """
    rank = codes.clone()
    shift = 1
    while shift < num_bits:
        rank ^= rank >> shift
        shift <<= 1
    return rank


def lsh_buckets(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Bucket of every row of ``x`` in Gray-code order.

    Args:
        x: (Z, H, N, D) floating; head ``h`` uses the directions of kv head
            ``h // (H // Hkv)``, so grouped query heads hash like their kv head.
        directions: float32 (Hkv, D, r).
    Returns:
        (Z, H, N) of ``bucket_dtype(r)`` with values in ``[0, 2**r)``. Projections are computed in
        float32 (float64 for float64 inputs) whatever the input dtype; no gradient flows.
        ``hyperattn.executors.triton.hashing.lsh_buckets_triton`` computes the same in one kernel.
    """
    z, h, n, d = x.shape
    hkv, _, r = directions.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    grouped = x.detach().to(dtype).reshape(z, hkv, h // hkv, n, d)
    projections = torch.einsum("zhgnd,hdr->zhgnr", grouped, directions.to(x.device, dtype))
    powers = 2 ** torch.arange(r, device=x.device, dtype=torch.int32)
    codes = ((projections > 0).to(torch.int32) * powers).sum(-1, dtype=torch.int32)
    return gray_code_rank(codes, r).reshape(z, h, n).to(bucket_dtype(r))


def sort_lsh(buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of rows by bucket along the last dim: (the sorted buckets, ``perm``), where
    ``perm[..., rank]`` (int64) is the row at that rank."""
    return torch.sort(buckets, dim=-1, stable=True)


def sort_lsh_permutation(buckets: torch.Tensor) -> torch.Tensor:
    """``perm`` of ``sort_lsh``: int64, same shape as ``buckets``."""
    return sort_lsh(buckets)[1]


def ranks_in_sort(buckets: torch.Tensor, sorted_buckets: torch.Tensor, perm: torch.Tensor,
                  rows: torch.Tensor) -> torch.Tensor:
    """Rank in ``sort_lsh(buckets)`` of each row in ``rows`` (integer (..., m)), without inverting
    ``perm``: the stable sort orders rows by (bucket, row), so a row's rank is where its pair
    falls among the sorted pairs (a binary search per row, no scatter over all N rows).
    int64 (..., m). Contiguous inputs (as ``make_plan``'s) spare searchsorted a copy."""
    n = perm.shape[-1]
    rows = rows.to(torch.int64)
    sorted_pairs = torch.add(perm, sorted_buckets, alpha=n)  # int64 pairs, one kernel on CUDA
    pairs = torch.add(rows, buckets.gather(-1, rows), alpha=n)
    return torch.searchsorted(sorted_pairs, pairs)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv[..., perm[..., i]] = i`` along the last dim."""
    ranks = torch.arange(perm.shape[-1], device=perm.device, dtype=perm.dtype).expand_as(perm)
    return torch.empty_like(perm).scatter_(-1, perm, ranks)
