"""Column sampling for the residual: sampled key indices and their importance weights."""

from __future__ import annotations

import math

import torch


def sample_keys(
    v: torch.Tensor, num_kv_heads: int, sample_size: int, method: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``sample_size`` key indices per (problem, kv head), with replacement.

    Args:
        v: (Z, Hkv, Nk, Dv) values; read only for ``method="value_norm"``.
        method: ``"uniform"``: every key with probability 1/Nk, log-weight ``log(Nk / m)``.
            ``"value_norm"``: key j with probability ``p_j = ||v_j||^2 / ||V||_F^2``
            (uniform where all values are zero), log-weight ``-log(m p_j)``.
        generator: a CPU generator; draws are made on the CPU and moved to ``v.device``,
            so a seed decides the sample on every device.
    Returns:
        indices int64 (Z, Hkv, m) and log-weights (Z, Hkv, m), float32 (float64 for float64 ``v``).
        Both are constants of the backward pass: gradients never flow through the sampling.
    """
    z, _, num_keys, _ = v.shape
    shape = (z, num_kv_heads, sample_size)
    weight_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    if sample_size == 0:
        return (torch.empty(shape, dtype=torch.int64, device=v.device),
                torch.empty(shape, dtype=weight_dtype, device=v.device))
    if method == "uniform":
        indices = torch.randint(num_keys, shape, generator=generator).to(v.device)
        log_weights = torch.full(shape, math.log(num_keys / sample_size), dtype=weight_dtype, device=v.device)
        return indices, log_weights
    if method != "value_norm":
        raise ValueError(f"unknown sampling method {method!r}")
    uniforms = torch.rand(shape, generator=generator, dtype=torch.float64).to(v.device)
    sq_norms = v.detach().to(torch.float64).pow(2).sum(-1)  # (Z, Hkv, Nk)
    totals = sq_norms.sum(-1, keepdim=True)
    sq_norms = torch.where(totals > 0, sq_norms, torch.ones_like(sq_norms))
    cdf = torch.cumsum(sq_norms, -1)
    # first key whose cumulative mass exceeds u * total: never a key of zero mass
    indices = torch.searchsorted(cdf, uniforms * cdf[..., -1:], right=True).clamp_(max=num_keys - 1)
    probs = sq_norms.gather(-1, indices) / cdf[..., -1:]
    log_weights = -torch.log(sample_size * probs)
    return indices, log_weights.to(weight_dtype)
