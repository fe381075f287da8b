"""Executors: attention over a planned pattern, returning (out, lse), and their merge."""

from hyperattn.ops.merge import masked_softmax_lse, merge_attention
from hyperattn.ops.reference import (
    causal_hyper_attention_reference,
    compute_dtype,
    exact_attention_reference,
    hyper_attention_reference,
    reference_attention,
)

__all__ = [
    "causal_hyper_attention_reference",
    "compute_dtype",
    "exact_attention_reference",
    "hyper_attention_reference",
    "masked_softmax_lse",
    "merge_attention",
    "reference_attention",
]
