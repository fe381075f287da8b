"""Column sampling for the residual: sampled key indices and their importance weights."""

from __future__ import annotations

import math

import torch

from hyperattn.plan.schedule import Rows


def value_sq_norms(v: torch.Tensor) -> torch.Tensor:
    """Squared row norms of v (..., Nk, Dv) in float64, detached: (..., Nk)."""
    return v.detach().to(torch.float64).pow(2).sum(-1)


# Scores of probe_key_mass materialized at once (elements): its keys are taken in chunks.
PROBE_CHUNK_ELEMENTS = 1 << 26


# A probe's weight on one key is at most 2**PROBE_MAX_LOG2_WEIGHT: with ``norm_keys`` a far key can score
# far above the keys that normalize the probe, and its mass must stay finite
PROBE_MAX_LOG2_WEIGHT = 64.0


def probe_key_mass(probes: torch.Tensor, k: torch.Tensor, keys: Rows, count: int, scale: float,
                   probe_pos: torch.Tensor | None, sinks: int, norm_keys: int = 0) -> torch.Tensor:
    """Estimated attention mass of each key of each problem: the softmax of each probe query over
    the keys it sees, summed over the probes and over the query heads of each kv head. With
    ``norm_keys`` each probe is normalized over only the keys it sees among its problem's last
    ``norm_keys`` (one short pass, not one over every key), and its weight on a key is capped at
    ``2**PROBE_MAX_LOG2_WEIGHT``.

    Problem z (batch ``z // count``, rectangle ``r = z % count``) holds the probes
    ``probes[z]`` (Hq, P, D) and the key rows ``keys.start + r * keys.stride + [0, keys.length)``
    of k (B, Hkv, N, D). A probe sees the key rows from ``sinks`` on up to its position
    (``probe_pos`` int64 (count, P), in key rows), or all of them where ``probe_pos`` is None.
    Returns float32 (B * count, Hkv, keys.length) (float64 for float64 inputs); a probe that sees
    no key adds nothing. Keys are taken in chunks of at most ``PROBE_CHUNK_ELEMENTS`` scores
    (two passes: each probe's log-sum-exp, then the masses). The Triton executor computes the
    same in two kernels (``hyperattn.executors.triton.probes``)."""
    dtype = torch.float64 if probes.dtype == torch.float64 else torch.float32
    z, hq, p, d = probes.shape
    hkv, nk = k.shape[1], keys.length
    grouped = probes.detach().to(dtype).reshape(z, hkv, (hq // hkv) * p, d)
    key_keys = keys.take(k.detach(), count)  # (Z, Hkv, Nk, D)
    key_pos = keys.index(count, device=k.device).view(count, 1, nk)
    visible = key_pos >= sinks  # (count, 1 or P, Nk)
    if probe_pos is not None:
        visible = visible & (key_pos <= probe_pos.to(k.device)[..., None])
    visible = visible.repeat(z // count, 1, 1)[:, None, None]  # (Z, 1, 1, P or 1, Nk): batch-major
    chunk = max(1, PROBE_CHUNK_ELEMENTS // max(1, z * hq * p))

    def scores(lo: int) -> torch.Tensor:  # (Z, Hkv, G, P, chunk), -inf where not visible
        block = grouped @ key_keys[:, :, lo:lo + chunk].to(dtype).transpose(-1, -2) * scale
        return block.view(z, hkv, hq // hkv, p, -1).masked_fill(~visible[..., lo:lo + chunk], -torch.inf)

    first = max(0, nk - norm_keys) if norm_keys else 0
    lse = torch.stack([torch.logsumexp(scores(lo), -1) for lo in range(first, nk, chunk)], -1).logsumexp(-1)
    lse = lse.masked_fill(torch.isneginf(lse), torch.inf)[..., None]  # probes that see nothing: mass 0
    cap = PROBE_MAX_LOG2_WEIGHT * math.log(2)
    return torch.cat([torch.exp((scores(lo) - lse).clamp_max(cap)).sum((2, 3)) for lo in range(0, nk, chunk)], -1)


def sample_keys(
    shape: tuple[int, int],
    num_keys: int,
    sample_size: int,
    generator: torch.Generator,
    masses: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    head_shard: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``sample_size`` key indices per (problem, kv head), with replacement.

    Args:
        shape: (Z, Hkv).
        masses: None for uniform sampling (each key with probability 1/Nk, log-weight
            ``log(Nk / m)``); else (Z, Hkv, Nk) non-negative masses: key j is drawn with
            probability ``p_j = masses_j / sum(masses)`` (uniform where all are zero) and its
            term weighted by ``1 / (m p_j)`` (log-weight ``-log(m p_j)``). ``value_norm``
            sampling passes squared value norms, ``mass`` sampling estimated attention masses.
        generator: decides the draws, made on its device and moved to ``device``.
        head_shard: (first, total): the Hkv kv heads are kv heads ``first, first + 1, ...`` of ``total``;
            the draws are made for all ``total`` and theirs kept, so a call over a shard of the heads
            draws what the call over every head draws for them. None: (0, Hkv).
    Returns:
        indices int64 (Z, Hkv, m) and log-weights (Z, Hkv, m) of ``dtype``. Both are
        constants of the backward pass: gradients never flow through the sampling.
    """
    full_shape = (*shape, sample_size)
    if sample_size == 0:
        return (torch.empty(full_shape, dtype=torch.int64, device=device),
                torch.empty(full_shape, dtype=dtype, device=device))
    first, total = head_shard or (0, shape[1])
    drawn_shape = (shape[0], total, sample_size)

    def own(drawn: torch.Tensor) -> torch.Tensor:  # this call's heads of the draws for every head
        return drawn[:, first:first + shape[1]].contiguous().to(device)

    if masses is None:
        indices = own(torch.randint(num_keys, drawn_shape, generator=generator, device=generator.device))
        log_weights = torch.full(full_shape, math.log(num_keys / sample_size), dtype=dtype, device=device)
        return indices, log_weights
    uniforms = own(torch.rand(drawn_shape, generator=generator, dtype=torch.float64, device=generator.device))
    totals = masses.sum(-1, keepdim=True)
    masses = torch.where(totals > 0, masses, torch.ones_like(masses))
    cdf = torch.cumsum(masses, -1)
    # first key whose cumulative mass exceeds u * total: never a key of zero mass
    indices = torch.searchsorted(cdf, uniforms * cdf[..., -1:], right=True).clamp_(max=num_keys - 1)
    probs = masses.gather(-1, indices) / cdf[..., -1:]
    return indices, (-torch.log(sample_size * probs)).to(dtype)
