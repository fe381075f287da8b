"""The fused Triton executor: kernels (``hashing``, ``forward``, ``backward``, their shared
pieces in ``common``), tile sizes (``tiles``), the launch-list executor (``executor``) and
the custom ops with autograd (``op``).

Importing this package does not import Triton; its modules do.
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
