"""Wall-clock timing: triton.testing.do_bench on CUDA, perf_counter medians elsewhere."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
