"""Executors: attention over a plan's pattern, returning (out, lse).

``reference``: plain PyTorch, the ground truth, any device and dtype. ``triton``: fused
kernels for fp16/bf16 (CUDA, or the interpreter). ``cudnn``: the causal diagonal leaves
through PyTorch's cuDNN attention op, used by the Triton executor.
"""

from hyperattn.executors.reference import (
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
    "reference_attention",
]
