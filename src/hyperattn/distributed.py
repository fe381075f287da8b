"""Context parallelism: HyperAttention over a sequence split across the processes of a
``torch.distributed`` group, each holding a contiguous shard of the positions.

The Ulysses form: one all-to-all turns every rank's positions of all heads into all positions of
its share of the heads; each rank runs ``hyper_attention`` over the whole sequence for its heads
(with ``head_shard``, so it draws what the whole call draws for them), and a second all-to-all
turns the output back into the ranks' positions. The all-to-alls are PyTorch's functional collectives
with autograd (``all_to_all_single_autograd``), so gradients flow back through them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from hyperattn.api import _check_config, _check_inputs, _resolve_seed, exact_attention, hyper_attention
from hyperattn.config import HyperAttentionConfig, check_scale


def _sequence_to_heads(x: torch.Tensor, ranks: int, group) -> torch.Tensor:
    """(B, H, n, D), this rank's positions of every head -> (B, H / P, P * n, D), every position of
    this rank's share of the heads (rank s sent positions [s * n, (s + 1) * n))."""
    b, h, n, d = x.shape
    send = x.reshape(b, ranks, h // ranks, n, d).transpose(0, 1).contiguous()  # block s goes to rank s
    received = funcol.wait_tensor(funcol.all_to_all_single_autograd(send, None, None, group))
    return received.permute(1, 2, 0, 3, 4).reshape(b, h // ranks, ranks * n, d)


def _heads_to_sequence(y: torch.Tensor, ranks: int, group) -> torch.Tensor:
    """Inverse of ``_sequence_to_heads``: (B, H / P, P * n, D) -> (B, H, n, D)."""
    b, h_share, length, d = y.shape
    n = length // ranks
    send = y.reshape(b, h_share, ranks, n, d).permute(2, 0, 1, 3, 4).contiguous()  # rank s's positions
    received = funcol.wait_tensor(funcol.all_to_all_single_autograd(send, None, None, group))  # block s: rank s's heads
    return received.transpose(0, 1).reshape(b, ranks * h_share, n, d)


def _check_same_shapes(q, k, v, ranks: int, group) -> None:
    """Every rank's shards must have one shape (the all-to-alls assume it): one small all-gather."""
    mine = torch.tensor([*q.shape, *k.shape[1:], v.shape[-1]], dtype=torch.int64, device=q.device)
    shapes = [torch.empty_like(mine) for _ in range(ranks)]
    dist.all_gather(shapes, mine, group=group)
    if any(not torch.equal(s, shapes[0]) for s in shapes):
        described = ", ".join(f"rank {r}: q {tuple(s[:4].tolist())}, k/v heads {s[4].item()}, keys {s[5].item()}"
                              for r, s in enumerate(shapes))
        raise ValueError(f"context_parallel_attention needs one shard shape on every rank (each holds n of the "
                         f"P * n positions), got {described}")


def _check_call(q, k, v, causal: bool, scale, group) -> int:
    """Every check before the first collective (a rank that fails alone would hang the rest); returns P."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("context-parallel attention needs an initialized torch.distributed process group; call "
                         "torch.distributed.init_process_group (e.g. under torchrun) first")
    _check_inputs(q, k, v, causal)
    check_scale(scale, q.shape[-1])
    ranks = dist.get_world_size(group)
    if k.shape[1] % ranks:
        raise ValueError(f"context-parallel attention splits the kv heads over the {ranks} ranks of the group, so k's "
                         f"heads (dim 1) must be a multiple of {ranks}, got {k.shape[1]}; use a group whose size "
                         "divides them, or repeat k and v along dim 1 to a multiple of it (exact attention is "
                         "unchanged by that; HyperAttention then draws per repeated head)")
    return ranks


def _across_heads(q, k, v, ranks: int, group, attend, return_lse: bool):
    """The Ulysses form: ``attend(q, k, v, head_shard)`` over every position of this rank's share of
    the heads, between the two all-to-alls. Returns out (and lse) for this rank's positions."""
    if ranks == 1:
        return attend(q, k, v, None)
    _check_same_shapes(q, k, v, ranks, group)
    rank = dist.get_rank(group)
    group = dist.group.WORLD if group is None else group
    share = k.shape[1] // ranks
    result = attend(*(_sequence_to_heads(x, ranks, group) for x in (q, k, v)), (rank * share, k.shape[1]))
    if not return_lse:
        return _heads_to_sequence(result, ranks, group)
    out, lse = result
    return _heads_to_sequence(out, ranks, group), _heads_to_sequence(lse[..., None], ranks, group)[..., 0]


def context_parallel_attention(
    q,
    k,
    v,
    causal: bool = False,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    seed: int | None = None,
    return_lse: bool = False,
    group=None,
):
    """HyperAttention over a sequence whose positions are split across the ranks of ``group``.

    Args:
        q: (B, Hq, n, D), k: (B, Hkv, m, D), v: (B, Hkv, m, Dv): this rank's shard. Rank r of the
            P ranks holds query positions ``[r * n, (r + 1) * n)`` of the P * n queries and key
            positions ``[r * m, (r + 1) * m)`` of the P * m keys, with one shape on every rank.
            Hkv must be a multiple of P (each rank attends for Hkv / P kv heads and their query heads).
        causal, scale, config, return_lse: as in ``hyper_attention``, for the whole sequence
            (``causal``: query position i sees key positions ``j <= P * m - P * n + i``).
        seed: as in ``hyper_attention``; None: rank 0 of the group draws one (from PyTorch's global
            CPU generator) and sends it to the others. Every rank must pass the same config.
        group: a ``torch.distributed`` process group (None: the default group), initialized by the
            caller (e.g. ``torchrun`` and ``torch.distributed.init_process_group``): NCCL for CUDA
            tensors, gloo for CPU tensors.
    Returns:
        This rank's rows of ``hyper_attention`` over the whole sequence with the same seed: out
        (B, Hq, n, Dv), and with ``return_lse`` lse (B, Hq, n). Gradients flow to this rank's q, k
        and v through the all-to-alls.
    """
    ranks = _check_call(q, k, v, causal, scale, group)
    config = _check_config(config)
    if seed is None:
        drawn = torch.tensor([_resolve_seed(None)], dtype=torch.int64, device=q.device)
        dist.broadcast(drawn, dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        seed = int(drawn.item())
    else:
        _resolve_seed(seed)

    def attend(q_heads, k_heads, v_heads, head_shard):
        return hyper_attention(q_heads, k_heads, v_heads, causal=causal, scale=scale, config=config, seed=seed,
                               return_lse=return_lse, head_shard=head_shard)

    return _across_heads(q, k, v, ranks, group, attend, return_lse)


def context_parallel_exact_attention(q, k, v, causal: bool = False, scale: float | None = None,
                                     return_lse: bool = False, group=None):
    """``exact_attention`` over a sequence split across the ranks of ``group``, in the same form and
    with the same arguments as ``context_parallel_attention``: this rank's rows of exact attention
    over the whole sequence (PyTorch SDPA on every position of this rank's share of the heads)."""
    ranks = _check_call(q, k, v, causal, scale, group)

    def attend(q_heads, k_heads, v_heads, head_shard):
        return exact_attention(q_heads, k_heads, v_heads, causal=causal, scale=scale, return_lse=return_lse)

    return _across_heads(q, k, v, ranks, group, attend, return_lse)


__all__ = ["context_parallel_attention", "context_parallel_exact_attention"]
