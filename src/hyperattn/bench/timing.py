"""Wall-clock timing: triton.testing.do_bench on CUDA, perf_counter medians elsewhere."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

# Milliseconds of back-to-back calls before do_bench times any, so that the clocks have ramped
# up after an idle GPU (a compile between cases); do_bench's default is 25. (It did not explain
# the slow 16k and 32k non-causal readings it was added for: those are host time,
# results/2026-11-29-attention-d64-default-h200-0e27b19.)
WARMUP_MS = 250


def median_ms(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds: on CUDA ``triton.testing.do_bench`` after
    ``WARMUP_MS`` of calls; elsewhere ``perf_counter`` over ``reps`` calls after one warm-up call."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=WARMUP_MS, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
