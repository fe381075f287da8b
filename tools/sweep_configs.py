"""Kernel time of each Triton kernel family under candidate tile configurations.

    python tools/sweep_configs.py --seq-len 131072 --head-dim 64
    python tools/sweep_configs.py --family dense_dkdv --configs 64,128,8,3 32,128,4,3

For each family (``hyperattn.executors.triton.tiles.KERNEL_FAMILIES``) and candidate
``BLOCK_M,BLOCK_N,warps,stages``, profiles forward+backward (causal, and non-causal for the
hyper kernels) with HYPERATTN_TRITON_CONFIG set for that family alone, and prints the CUDA
time of the family's kernel, so each family's best configuration can be read off one table.
For tile tuning on a new card or head dim; screen candidates first on a CPU machine with
``tools/kernel_resources.py`` (registers, spills). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from hyperattn import HyperAttentionConfig, hyper_attention
from hyperattn.executors.triton.tiles import KERNEL_FAMILIES

# The hyper forward and dq kernels take BLOCK_M <= 2 * BLOCK_N (tiles.parse_override says why).
CANDIDATES = {
    "hyper_fwd": ["128,64,4,3", "128,64,8,3", "64,64,4,3", "128,64,4,4", "128,128,8,3", "64,32,4,3"],
    "dense_fwd": ["128,64,4,3", "128,64,8,3", "128,128,8,3", "64,64,4,3", "128,32,4,4"],
    "hyper_dq": ["128,64,4,3", "128,64,8,3", "64,64,4,3", "64,32,4,3", "128,64,4,4", "64,64,4,2"],
    "dense_dq": ["128,64,4,3", "128,64,8,3", "64,64,4,3", "128,32,4,3", "64,32,4,3"],
    # 64,32,4,3 and 64,64,8,2: the head-dim-128 key-side kernels spill a fifth as much there
    # (tools/kernel_resources.py); not yet timed
    "hyper_dkdv": ["128,64,4,3", "64,128,4,3", "32,128,4,3", "64,64,4,3", "64,64,8,3", "64,32,4,3", "64,64,8,2",
                   "64,64,4,4"],
    "dense_dkdv": ["128,64,4,3", "64,128,4,3", "64,64,4,3", "64,64,4,2", "64,64,8,3", "32,64,4,3", "64,64,8,2"],
    "hyper_samples": ["128,64,4,3", "64,128,4,3", "64,64,4,3", "64,64,4,2", "64,32,4,3", "64,64,8,2", "64,64,4,4"],
}


def kernel_times(seq_len, heads, head_dim, causal) -> dict[str, float]:
    """CUDA ms per kernel name of one forward+backward (after warm-up)."""
    q, k, v = (torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)

    def step():
        hyper_attention(q, k, v, causal=causal, config=HyperAttentionConfig(exact_up_to=0), seed=0).backward(grad)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    totals = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.device_time_total / 3e3  # us over 3 steps -> ms per step
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--family", choices=KERNEL_FAMILIES, nargs="+", default=list(KERNEL_FAMILIES))
    parser.add_argument("--configs", nargs="+", help="candidates (default: a list per family)")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}: {args.seq_len} tokens, {args.heads} heads, d {args.head_dim}; "
          f"CUDA ms per forward+backward")
    for family in args.family:
        kind, stage = family.split("_")
        kernel = f"{kind}_{'fwd' if stage == 'fwd' else 'bwd_' + stage}_kernel"
        causals = (True,) if kind == "dense" else (False, True)  # dense kernels run the causal leaves only
        labels = " ".join(f"{'causal' if c else 'non-causal':>12}" for c in causals)
        print(f"\n{family:>14} {'BM,BN,W,S':>12} {labels}")
        for config in args.configs or CANDIDATES[family]:
            os.environ["HYPERATTN_TRITON_CONFIG"] = f"{family}={config}"
            try:
                row = " ".join(f"{kernel_times(args.seq_len, args.heads, args.head_dim, c).get(kernel, 0.0):12.3f}"
                               for c in causals)
            except Exception as error:  # a configuration the compiler rejects (shared memory, registers)
                row = f"{type(error).__name__}: {str(error)[:80]}"
            print(f"{'':>14} {config:>12} {row}", flush=True)
    os.environ.pop("HYPERATTN_TRITON_CONFIG", None)


if __name__ == "__main__":
    main()
