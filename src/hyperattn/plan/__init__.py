"""The plan: every random or data-dependent choice of HyperAttention, as index tensors.

A plan decides which keys each query attends to and with what weight; executors
(``hyperattn.ops``) compute attention over that pattern. Reference and fused executors
consume the same plan, so they can be compared exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyperattn.config import HyperAttentionConfig
from hyperattn.plan.blocks import num_key_blocks, query_block_layout, query_block_of_rank
from hyperattn.plan.lsh import gray_code_rank, inverse_permutation, lsh_buckets, lsh_directions, sort_lsh_permutation
from hyperattn.plan.sampling import sample_keys
from hyperattn.plan.schedule import CausalSchedule, causal_schedule


@dataclass(frozen=True)
class AttentionPlan:
    """The sparse pattern of one batch of non-causal HyperAttention problems.

    Shapes: Z problems, Hq query heads, Hkv kv heads, Nq queries, Nk keys, m samples.

    - ``q_perm``: int64 (Z, Hq, Nq), original query index at each sorted rank.
    - ``k_perm``: int64 (Z, Hkv, Nk), original key index at each sorted rank.
      Sorted query rank ``p`` attends exactly to sorted keys of block
      ``query_block_of_rank(Nq, Nk, block_size)[p]``, i.e. ranks
      ``[i * block_size, (i + 1) * block_size)``.
    - ``sample_idx``: int64 (Z, Hkv, m), original indices of the sampled keys (shared by the
      query heads of a kv head).
    - ``sample_block``: int64 (Z, Hkv, m), key block of each sampled key; a query skips the
      samples of its own block, which the block part already counts.
    - ``sample_log_weight``: (Z, Hkv, m) float, log importance weight added to the score of
      each sampled term.
    """

    q_perm: torch.Tensor
    k_perm: torch.Tensor
    sample_idx: torch.Tensor
    sample_block: torch.Tensor
    sample_log_weight: torch.Tensor
    block_size: int


def make_plan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: HyperAttentionConfig,
    directions: torch.Tensor,
    generator: torch.Generator,
) -> AttentionPlan:
    """Hash, sort and sample for q (Z, Hq, Nq, D), k (Z, Hkv, Nk, D), v (Z, Hkv, Nk, Dv)."""
    num_kv_heads = k.shape[1]
    q_perm = sort_lsh_permutation(lsh_buckets(q, directions))
    k_perm = sort_lsh_permutation(lsh_buckets(k, directions))
    sample_idx, sample_log_weight = sample_keys(v, num_kv_heads, config.sample_size, config.sampling, generator)
    key_rank = inverse_permutation(k_perm)
    sample_block = key_rank.gather(-1, sample_idx) // config.block_size
    return AttentionPlan(q_perm, k_perm, sample_idx, sample_block, sample_log_weight, config.block_size)


__all__ = [
    "AttentionPlan",
    "CausalSchedule",
    "causal_schedule",
    "gray_code_rank",
    "inverse_permutation",
    "lsh_buckets",
    "lsh_directions",
    "make_plan",
    "num_key_blocks",
    "query_block_layout",
    "query_block_of_rank",
    "sample_keys",
    "sort_lsh_permutation",
]
