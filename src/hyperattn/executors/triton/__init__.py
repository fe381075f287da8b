"""Fused Triton kernels (hashing, attention forward and backward) and their custom ops.

Importing this package does not import Triton; ``hyperattn.executors.triton.interface`` does.
"""

import contextlib
import importlib.util

import torch

TRITON_DTYPES = (torch.float16, torch.bfloat16)


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def has_triton() -> bool:
    """Whether Triton is installed (checked once, at import: a plain function, which
    ``torch.compile`` traces without a warning, unlike a cached one)."""
    return _TRITON_INSTALLED


def on_device(x: torch.Tensor):
    """Context in which kernels launch on x's GPU (Triton launches on the current CUDA device,
    which differs from x's when a model is split over GPUs)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def tile_width(n: int) -> int:
    """The narrowest tile dimension that holds ``n``: a power of two, at least 16 (the
    smallest that ``tl.dot`` accepts)."""
    return max(16, 1 << max(n - 1, 0).bit_length())
