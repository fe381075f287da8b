"""Which SDPA backend our exact path gets, and what each backend costs, at lengths we run exactly.

    python benchmarks/exact_backends.py --head-dims 64,128 --seq-lens 4096,8192,16384

For each head dim, length and causal flag (batch 1, bf16, forward): PyTorch's own choice for
``scaled_dot_product_attention`` (``torch._fused_sdp_choice``), the median time
(``hyperattn.bench.timing.median_ms``) of SDPA under each backend alone and with its default priority,
and of ``hyper_attention`` with the default config (which runs SDPA exactly at these lengths),
plain and inside ``sdpa_kernel(..., set_priority=True)`` with cuDNN first.
"""

from __future__ import annotations

import argparse

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention as sdpa

from hyperattn import hyper_attention
from hyperattn.bench.timing import median_ms

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
               SDPBackend.MATH]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--seq-lens", default="4096,8192,16384")
    parser.add_argument("--heads", type=int, default=32)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    names = ["default", *BACKENDS, "ours", "ours cudnn-first"]
    print(f"{'d':>4} {'len':>6} {'causal':>6} {'choice':>20} " + " ".join(f"{n:>16}" for n in names))
    for head_dim in map(int, args.head_dims.split(",")):
        for seq_len in map(int, args.seq_lens.split(",")):
            q, k, v = (torch.randn(1, args.heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))
            for causal in (False, True):
                choice = SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=causal)).name
                times = [median_ms(lambda: sdpa(q, k, v, is_causal=causal), q.device)]
                for backend in BACKENDS.values():
                    with sdpa_kernel(backend):
                        times.append(median_ms(lambda: sdpa(q, k, v, is_causal=causal), q.device))
                times.append(median_ms(lambda: hyper_attention(q, k, v, causal=causal, seed=0), q.device))
                with sdpa_kernel(CUDNN_FIRST, set_priority=True):
                    times.append(median_ms(lambda: hyper_attention(q, k, v, causal=causal, seed=0), q.device))
                print(f"{head_dim:>4} {seq_len:>6} {causal!s:>6} {choice:>20} "
                      + " ".join(f"{t:>16.3f}" for t in times))


if __name__ == "__main__":
    main()
