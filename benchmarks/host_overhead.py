"""Host cost of one HyperAttention call against its GPU time: is a length launch-bound?

    python benchmarks/host_overhead.py --seq-lens 8192,16384
    python benchmarks/host_overhead.py --seq-lens 16384,32768 --non-causal --cprofile 10
    python benchmarks/host_overhead.py --seq-lens 16384,32768 --compile-mode reduce-overhead

For each length (causal unless --non-causal, bf16): the median time per call
(``hyperattn.bench.timing.median_ms``), the host time of one call measured with the GPU kept busy
(calls are queued without synchronizing), cuDNN's exact attention for comparison, and the
operations of one call that make the host wait for the GPU
(``torch.cuda.set_sync_debug_mode``): each one serializes host and GPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import warnings

import torch

from hyperattn import HyperAttentionConfig, hyper_attention
from hyperattn.bench.timing import median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="8192,16384")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--cprofile", type=int, default=0, metavar="CALLS",
                        help="also profile the host side of this many calls per length (cProfile, top functions)")
    parser.add_argument("--non-causal", action="store_true", help="time non-causal attention")
    parser.add_argument("--compile-mode", default=None, metavar="MODE",
                        help="also time the call under torch.compile(mode=MODE), e.g. reduce-overhead (CUDA graphs "
                        "around the fused op; the plan runs eagerly)")
    args = parser.parse_args()
    causal = not args.non_causal
    config = HyperAttentionConfig(exact_up_to=0)  # time the HyperAttention path at every length
    print(f"{'len':>8} {'ours ms':>9} {'host ms/call':>13} {'cudnn ms':>9} {'syncs/call':>11}")
    for seq_len in map(int, args.seq_lens.split(",")):
        q, k, v = (torch.randn(1, args.heads, seq_len, args.head_dim, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        ours = median_ms(lambda: hyper_attention(q, k, v, causal=causal, config=config, seed=0), q.device)
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            cudnn = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal),
                              q.device)
        torch.cuda.synchronize()
        calls = 10  # few enough that the launch queue never fills
        start = time.perf_counter()
        for _ in range(calls):
            hyper_attention(q, k, v, causal=causal, config=config, seed=0)
        host = (time.perf_counter() - start) / calls * 1e3
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                hyper_attention(q, k, v, causal=causal, config=config, seed=0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # c10's warning; not torch's one-time notice that the debug mode is a prototype
        syncs = [w for w in caught if "called a synchronizing CUDA operation" in str(w.message)]
        print(f"{seq_len:>8} {ours:>9.3f} {host:>13.3f} {cudnn:>9.3f} {len(syncs):>11}")
        for sync in syncs:
            print(f"    sync: {sync.filename}:{sync.lineno}: {str(sync.message)[:100]}")
        if args.compile_mode:
            compiled = torch.compile(lambda q, k, v: hyper_attention(q, k, v, causal=causal, config=config, seed=0),
                                     mode=args.compile_mode)
            try:
                for _ in range(3):  # compile, record
                    compiled(q, k, v)
                timed = f"{median_ms(lambda: compiled(q, k, v), q.device):.3f} ms"
            except Exception as error:  # reported; the eager numbers above stand
                timed = f"{type(error).__name__}: {str(error).splitlines()[0][:150] if str(error) else ''}"
            print(f"    torch.compile(mode={args.compile_mode!r}): {timed}")
        if args.cprofile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.cprofile):
                hyper_attention(q, k, v, causal=causal, config=config, seed=0)
            torch.cuda.synchronize()
            profiler.disable()
            for key in ("tottime", "cumulative"):
                pstats.Stats(profiler).sort_stats(key).print_stats(30)


if __name__ == "__main__":
    main()
