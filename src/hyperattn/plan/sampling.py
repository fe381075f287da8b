"""Column sampling for the residual: sampled key indices and their importance weights."""

from __future__ import annotations

import math

import torch


def value_sq_norms(v: torch.Tensor) -> torch.Tensor:
    """Squared row norms of v (..., Nk, Dv) in float64, detached: (..., Nk)."""
    return v.detach().to(torch.float64).pow(2).sum(-1)


def sample_keys(
    shape: tuple[int, int],
    num_keys: int,
    sample_size: int,
    generator: torch.Generator,
    sq_norms: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``sample_size`` key indices per (problem, kv head), with replacement.

    Args:
        shape: (Z, Hkv).
        sq_norms: None for uniform sampling (each key with probability 1/Nk, log-weight
            ``log(Nk / m)``); else (Z, Hkv, Nk) squared value norms for ``value_norm``
            sampling (key j with probability ``p_j = ||v_j||^2 / ||V||_F^2``, uniform where
            all values are zero; log-weight ``-log(m p_j)``).
        generator: decides the draws, made on its device and moved to ``device``.
    Returns:
        indices int64 (Z, Hkv, m) and log-weights (Z, Hkv, m) of ``dtype``. Both are
        constants of the backward pass: gradients never flow through the sampling.
    """
    full_shape = (*shape, sample_size)
    if sample_size == 0:
        return (torch.empty(full_shape, dtype=torch.int64, device=device),
                torch.empty(full_shape, dtype=dtype, device=device))
    if sq_norms is None:
        indices = torch.randint(num_keys, full_shape, generator=generator, device=generator.device).to(device)
        log_weights = torch.full(full_shape, math.log(num_keys / sample_size), dtype=dtype, device=device)
        return indices, log_weights
    uniforms = torch.rand(full_shape, generator=generator, dtype=torch.float64, device=generator.device).to(device)
    totals = sq_norms.sum(-1, keepdim=True)
    masses = torch.where(totals > 0, sq_norms, torch.ones_like(sq_norms))
    cdf = torch.cumsum(masses, -1)
    # first key whose cumulative mass exceeds u * total: never a key of zero mass
    indices = torch.searchsorted(cdf, uniforms * cdf[..., -1:], right=True).clamp_(max=num_keys - 1)
    probs = masses.gather(-1, indices) / cdf[..., -1:]
    return indices, (-torch.log(sample_size * probs)).to(dtype)
