"""Log-sum-exp merge of partial attention results over disjoint key sets."""

from __future__ import annotations

import torch


def masked_softmax_lse(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax and log-sum-exp over the last dim, where rows may be entirely ``-inf``.

    A row with no finite score gets probabilities 0 and lse ``-inf``; values and gradients
    stay free of NaN (the ``torch.where`` guards keep infinities out of the backward too).
    Returns (probs, lse): probs like ``scores``, lse ``scores.shape[:-1]``. An empty last
    dim (no keys at all) counts as rows with no finite score.
    """
    if scores.shape[-1] == 0:
        return scores, scores.new_full(scores.shape[:-1], -torch.inf)
    row_max = scores.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exps = torch.exp(scores - row_max)
    sums = exps.sum(-1, keepdim=True)
    has_mass = sums > 0
    safe_sums = torch.where(has_mass, sums, torch.ones_like(sums))
    probs = exps / safe_sums
    lse = torch.where(has_mass, torch.log(safe_sums) + row_max, torch.full_like(sums, -torch.inf))
    return probs, lse.squeeze(-1)


def merge_attention(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over key set A with attention over a disjoint key set B.

    ``out = (e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b)``, ``lse = logaddexp``.
    out_*: (..., N, Dv); lse_*: (..., N). Either side may be ``-inf`` (an empty key set);
    differentiable in all four inputs, so gradients flow through the lse of every part.
    """
    return merge_attention_stack(torch.stack((out_a, out_b)), torch.stack((lse_a, lse_b)), dim=0)


def merge_attention_stack(out: torch.Tensor, lse: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over C disjoint key sets, stacked along ``dim`` (``merge_attention`` for C = 2).

    out: (..., C, ..., N, Dv) and lse: (..., C, ..., N), with ``dim`` counted on lse (a
    negative ``dim`` counts from lse's end). Returns out (..., N, Dv) and lse (..., N) without
    that dim; parts with lse ``-inf`` count for nothing and rows without any get out 0, lse -inf.
    """
    dim = dim % lse.dim()
    top = lse.amax(dim, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(lse - top)
    total = weights.sum(dim, keepdim=True)
    has_mass = total > 0
    safe_total = torch.where(has_mass, total, torch.ones_like(total))
    merged = ((weights / safe_total).unsqueeze(-1) * out).sum(dim)
    merged_lse = torch.where(has_mass, torch.log(safe_total) + top, torch.full_like(total, -torch.inf)).squeeze(dim)
    return merged, merged_lse
