"""Time HyperAttention under several kernel tile configurations (HYPERATTN_TRITON_CONFIG).

    python benchmarks/sweep_configs.py --seq-len 131072 --head-dim 64 --configs 64,64,4,3 128,64,8,3
"""

from __future__ import annotations

import argparse
import os

import torch

from hyperattn.bench.attention import _ours, time_case
from hyperattn.config import HyperAttentionConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--configs", nargs="+", default=["64,64,4,3", "128,64,8,3", "128,64,4,3", "128,32,4,3",
                                                         "64,64,4,2", "128,128,8,3"])
    args = parser.parse_args()
    fn = _ours(HyperAttentionConfig())
    print(f"{torch.cuda.get_device_name()}: {args.seq_len} tokens, {args.heads} heads, d {args.head_dim}; median ms")
    print(f"{'BM,BN,warps,stages':>20} {'nc fwd':>8} {'nc f+b':>8} {'c fwd':>8} {'c f+b':>8}")
    for config in args.configs:
        os.environ["HYPERATTN_TRITON_CONFIG"] = config
        times = []
        for causal in (False, True):
            for mode in ("fwd", "fwd_bwd"):
                try:
                    times.append(f"{time_case(fn, args.seq_len, args.heads, args.head_dim, causal, mode)[0]:8.2f}")
                except Exception as error:  # a config the compiler rejects (shared memory, registers)
                    times.append(f"{type(error).__name__[:8]:>8}")
        print(f"{config:>20} {' '.join(times)}", flush=True)


if __name__ == "__main__":
    main()
