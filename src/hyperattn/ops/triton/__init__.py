"""Fused Triton kernels (hashing, attention forward and backward) and their custom ops.

Importing this package does not import Triton; ``hyperattn.ops.triton.interface`` does.
"""

import functools
import importlib.util


@functools.cache
def has_triton() -> bool:
    """Whether Triton is installed (checked once)."""
    return importlib.util.find_spec("triton") is not None
