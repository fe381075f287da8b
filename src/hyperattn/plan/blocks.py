"""Block layout: which sorted queries attend to which key block.

Three rules (``HyperAttentionConfig.query_blocks``), written here once:

- ``"rank"`` (the paper's): sorted query rank ``p`` of Nq attends to key block
  ``(p * Nk // Nq) // block_size``. The kernels evaluate it on the device (``query_block_range``
  and ``query_rank_blocks`` in ``hyperattn.executors.triton.common``; the tests check the
  latter against this rule). A query's rank depends on the other queries of its problem.
- ``"bucket"``: a query attends to the key block where the keys of its own bucket sit
  (``bucket_query_blocks``); the plan carries the result (``AttentionPlan.q_block``).
- ``"centroid"``: the keys keep their order and a query attends to the block whose mean key scores
  highest against it (``centroid_query_blocks``); the queries sort by their block, and the plan
  carries it as under the bucket rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyperattn.plan.selection import select_key_blocks


def num_key_blocks(num_keys: int, block_size: int) -> int:
    return -(-num_keys // block_size)


def query_block_range(block: int, num_queries: int, num_keys: int, block_size: int) -> tuple[int, int]:
    """Sorted query ranks [lo, hi) of key block ``block``."""
    lo = -(-block * block_size * num_queries // num_keys)
    hi = min(-(-(block + 1) * block_size * num_queries // num_keys), num_queries)
    return lo, hi


def max_queries_per_block(num_queries: int, num_keys: int, block_size: int) -> int:
    """The most sorted queries any key block gets: ceil((i + 1) x) - ceil(i x) <= ceil(x) for
    x = block_size * Nq / Nk."""
    return min(-(-block_size * num_queries // num_keys), num_queries)


def query_block_of_rank(num_queries: int, num_keys: int, block_size: int, device=None) -> torch.Tensor:
    """Key block attended by the query of each sorted rank: int64 (num_queries,).

    Query rank ``p`` is mapped onto the key ranks (``p * Nk // Nq``) and takes that key's
    block, so with ``Nq == Nk`` queries and keys are cut at the same ranks and otherwise
    each key block gets about ``block_size * Nq / Nk`` queries. Non-decreasing in ``p``.
    """
    ranks = torch.arange(num_queries, device=device, dtype=torch.int64)
    return (ranks * num_keys // num_queries) // block_size


@dataclass(frozen=True)
class QueryBlockLayout:
    """Sorted queries laid out in tiles of ``tile_rows`` slots, each tile inside one key block:
    a block's queries fill ``ceil(count / tile_rows)`` consecutive tiles, so padding stays below
    one tile per block however unevenly the queries fall (the bucket rule's do).

    ``slot_rank``: int64 (..., num_tiles, tile_rows), the sorted rank in each slot, -1 for padding
    (num_tiles: the most any leading index needs, at least 1).
    ``tile_block``: int64 (..., num_tiles), the key block of each tile (0 for padding tiles).
    ``rank_slot``: int64 (..., Nq), the flat slot of each sorted rank.
    ``rank_block``: int64 (..., Nq), the key block of each sorted rank.
    """

    slot_rank: torch.Tensor
    tile_block: torch.Tensor
    rank_slot: torch.Tensor
    rank_block: torch.Tensor


def query_block_layout(rank_block: torch.Tensor, num_blocks: int, tile_rows: int) -> QueryBlockLayout:
    """The layout of queries whose sorted ranks attend to key blocks ``rank_block`` (..., Nq), int64,
    non-decreasing along the last dim (``query_block_of_rank``, or a plan's ``q_block``), in tiles of
    ``tile_rows`` (under the rank rule, ``max_queries_per_block`` gives one tile per block)."""
    if tile_rows < 1:
        raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
    nq = rank_block.shape[-1]
    counts = torch.zeros(*rank_block.shape[:-1], num_blocks, dtype=torch.int64, device=rank_block.device)
    counts.scatter_add_(-1, rank_block, torch.ones_like(rank_block))
    starts = torch.cumsum(counts, -1) - counts
    tiles = -(-counts // tile_rows)
    first_tile = torch.cumsum(tiles, -1) - tiles
    num_tiles = max(int(tiles.sum(-1).max()) if tiles.numel() else 0, 1)
    offset = torch.arange(nq, device=rank_block.device) - starts.gather(-1, rank_block)
    rank_tile = first_tile.gather(-1, rank_block) + offset // tile_rows
    rank_slot = rank_tile * tile_rows + offset % tile_rows
    slot_rank = torch.full((*rank_block.shape[:-1], num_tiles * tile_rows), -1, dtype=torch.int64,
                           device=rank_block.device)
    slot_rank.scatter_(-1, rank_slot, torch.arange(nq, device=rank_block.device).expand_as(rank_block))
    tile_block = torch.zeros(*rank_block.shape[:-1], num_tiles, dtype=torch.int64, device=rank_block.device)
    tile_block.scatter_(-1, rank_tile, rank_block)
    return QueryBlockLayout(slot_rank.unflatten(-1, (num_tiles, tile_rows)), tile_block, rank_slot, rank_block)


def bucket_query_blocks(q_sorted_buckets: torch.Tensor, k_sorted_buckets: torch.Tensor, num_live_keys: torch.Tensor,
                        block_size: int, num_buckets: int) -> torch.Tensor:
    """Key block of each sorted query under the ``"bucket"`` rule: the block holding the middle of the
    sorted keys of the query's own bucket (or, where its bucket has no key, of the first key after
    it), among the live keys. It depends on the query and the keys alone.

    q_sorted_buckets (Z, Hq, Nq) and k_sorted_buckets (Z, Hkv, Nk): buckets in sorted order (one
    dtype), the queries' below ``num_buckets``; num_live_keys (Z, 1, 1): keys before the sinks, which
    ``make_plan`` sorts last. Returns int64 (Z, Hq, Nq), non-decreasing along the last dim."""
    z, hq, nq = q_sorted_buckets.shape
    hkv = k_sorted_buckets.shape[1]
    grouped = q_sorted_buckets.reshape(z, hkv, (hq // hkv) * nq)
    per_bucket = num_buckets < grouped.shape[-1]  # then each bucket's block is found once and looked up
    values = (torch.arange(num_buckets, device=grouped.device).to(grouped.dtype).expand(z, hkv, -1).contiguous()
              if per_bucket else grouped)
    lo = torch.searchsorted(k_sorted_buckets, values)
    hi = torch.searchsorted(k_sorted_buckets, values, right=True)
    blocks = torch.minimum((lo + hi) // 2, num_live_keys - 1).clamp_(min=0) // block_size
    if per_bucket:
        blocks = blocks.gather(-1, grouped.long())
    return blocks.reshape(z, hq, nq)


def centroid_query_blocks(q: torch.Tensor, k_sorted: torch.Tensor, num_live_keys: torch.Tensor, block_size: int,
                          select_blocks=select_key_blocks) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"centroid"`` rule: each query's key block is the block of ``block_size`` sorted keys whose
    mean key scores highest against it (``select_blocks``: ``select_key_blocks`` or a kernel with its
    contract), among the blocks of live keys. It depends on the query and the keys alone.

    q (Z, Hq, Nq, D) in original order; k_sorted (Z, Hkv, Nk, D) the keys in sorted order, the
    ``num_live_keys`` (Z, 1, 1) live ones first. Returns (q_perm, q_block): int64 (Z, Hq, Nq), the
    queries sorted by their block (stably) and the block of each sorted query, non-decreasing."""
    z, hkv, nk, _ = k_sorted.shape
    live = (torch.arange(nk, device=k_sorted.device) < num_live_keys).expand(z, hkv, nk)
    best = select_blocks(q, k_sorted, live, block_size, 1)[..., 0]
    last_live = (num_live_keys - 1).clamp_(min=0) // block_size  # only with no live key: every block is dead
    blocks = torch.minimum(best, last_live).to(torch.int32)  # a radix sort of 4 bytes, not 8
    q_block, q_perm = torch.sort(blocks, dim=-1, stable=True)
    return q_perm.contiguous(), q_block.long()
