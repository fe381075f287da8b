"""Block layout: which sorted queries share which key block.

The rule, written here once: sorted query rank ``p`` of Nq attends to key block
``(p * Nk // Nq) // block_size``. The kernels evaluate the same rule on the device
(``query_block_range`` and ``query_rank_blocks`` in ``hyperattn.executors.triton.common``,
tested against these functions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    """Sorted queries laid out as (num_blocks, max_block_len) with padding.

    ``slot_rank``: int64 (num_blocks, max_block_len), the sorted rank in each slot, -1 for padding.
    ``rank_slot``: int64 (Nq,), the flat slot of each sorted rank.
    ``rank_block``: int64 (Nq,), the key block of each sorted rank.
    """

    slot_rank: torch.Tensor
    rank_slot: torch.Tensor
    rank_block: torch.Tensor


def query_block_layout(num_queries: int, num_keys: int, block_size: int, device=None) -> QueryBlockLayout:
    rank_block = query_block_of_rank(num_queries, num_keys, block_size, device)
    num_blocks = num_key_blocks(num_keys, block_size)
    counts = torch.bincount(rank_block, minlength=num_blocks)
    starts = torch.cumsum(counts, 0) - counts
    max_len = int(counts.max())
    ranks = torch.arange(num_queries, device=device, dtype=torch.int64)
    rank_slot = rank_block * max_len + (ranks - starts[rank_block])
    slot_rank = torch.full((num_blocks * max_len,), -1, device=device, dtype=torch.int64)
    slot_rank[rank_slot] = ranks
    return QueryBlockLayout(slot_rank.view(num_blocks, max_len), rank_slot, rank_block)
