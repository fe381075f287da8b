"""Synthetic attention inputs with structure that an approximation can exploit or miss."""

from __future__ import annotations

import torch


def clustered_qkv(
    batch: int = 1,
    heads: int = 1,
    seq_len: int = 1024,
    head_dim: int = 16,
    num_clusters: int = 128,
    spread: float = 0.002,
    norm: float = 8.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and keys around shared cluster centres, in shuffled order.

    Each position gets a random cluster; its query and key are the cluster's centre (norm
    ``norm``) plus independent Gaussian noise of relative size ``spread``. With a large norm,
    each row of the attention matrix puts its mass on the keys of its own cluster: A has
    large entries. v is standard Gaussian. Returns q, k, v of shape (batch, heads, seq_len, head_dim).
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(heads, num_clusters, head_dim, generator=gen, dtype=torch.float64)
    centres = torch.nn.functional.normalize(centres, dim=-1) * norm
    labels = torch.randint(num_clusters, (batch, heads, seq_len), generator=gen)
    members = centres[torch.arange(heads).view(1, heads, 1), labels]

    def noisy():
        return members + spread * norm * torch.randn(members.shape, generator=gen, dtype=torch.float64)

    q, k = noisy(), noisy()
    v = torch.randn(batch, heads, seq_len, head_dim, generator=gen, dtype=torch.float64)
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v))
