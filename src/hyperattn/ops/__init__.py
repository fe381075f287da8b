"""Executors: attention over a planned pattern, returning (out, lse), and their merge."""

from hyperattn.ops.merge import masked_softmax_lse, merge_attention
from hyperattn.ops.reference import exact_attention_reference, hyper_attention_reference

__all__ = ["exact_attention_reference", "hyper_attention_reference", "masked_softmax_lse", "merge_attention"]
