"""What the accuracy options cost: HyperAttention's time with each option set, against cuDNN and the default.

    python tools/option_cost.py --seq-lens 131072 --head-dims 64,128 --kv-heads 32,8 --json out.json

Times (``hyperattn.bench.attention.time_case``: medians of ``triton.testing.do_bench``, one
process, one card) cuDNN's fused attention and HyperAttention with each option set in ``OPTIONS``
(``exact_up_to=0``, so every length runs the approximation), forward and forward+backward, batch
1, 32 query heads, bf16, and prints each one's time with its speed-up against cuDNN and its cost
against the library's default. Needs a CUDA GPU; ``tools/gpu_session.sh OUT options`` runs it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from hyperattn import HyperAttentionConfig
from hyperattn.bench.attention import _sdpa, hyper_attention_runner, time_case

HEAVY_NO_SAMPLES = dict(sample_size=0, sampling="mass")
OPTIONS = {
    "paper": dict(exact_sinks=0, exact_tail=0),
    "default": dict(),
    "mass": dict(sampling="mass"),
    "heavy256": dict(heavy_keys=256, sampling="mass"),
    "heavy448-b64": dict(heavy_keys=448, block_size=64, **HEAVY_NO_SAMPLES),
    "heavy384-b128": dict(heavy_keys=384, block_size=128, **HEAVY_NO_SAMPLES),
    "heavy256-b256": dict(heavy_keys=256, block_size=256, **HEAVY_NO_SAMPLES),
    "bucket": dict(query_blocks="bucket"),
    "bucket-heavy448-b64": dict(query_blocks="bucket", heavy_keys=448, block_size=64, **HEAVY_NO_SAMPLES),
    "bucket-heavy384-b128": dict(query_blocks="bucket", heavy_keys=384, block_size=128, **HEAVY_NO_SAMPLES),
    "bucket-heavy256-b64": dict(query_blocks="bucket", heavy_keys=256, block_size=64, **HEAVY_NO_SAMPLES),
    "bucket-heavy448-b64-w1024": dict(query_blocks="bucket", heavy_keys=448, block_size=64, exact_window=1024,
                                      **HEAVY_NO_SAMPLES),
    "window1024": dict(exact_window=1024),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="131072")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--kv-heads", default="32,8", help="key/value heads, one per head dim")
    parser.add_argument("--causal", default="causal", help="comma-separated: causal, non-causal")
    parser.add_argument("--modes", default="fwd,fwd_bwd")
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated names of OPTIONS")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    head_dims = [int(d) for d in args.head_dims.split(",")]
    kv_heads = [int(h) for h in args.kv_heads.split(",")]
    if len(kv_heads) != len(head_dims):
        parser.error(f"--kv-heads needs one value per head dim ({len(head_dims)}), got {args.kv_heads!r}")
    names = args.options.split(",")
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        parser.error(f"--options: unknown {unknown}; known: {list(OPTIONS)}")
    rows = []
    print(f"{torch.cuda.get_device_name()}: 32 query heads, bf16; median ms, speed-up against cuDNN, cost against"
          " the default")
    for head_dim, kv in zip(head_dims, kv_heads):
        for causal in (name == "causal" for name in args.causal.split(",")):
            for seq_len in map(int, args.seq_lens.split(",")):
                for mode in args.modes.split(","):
                    case = dict(head_dim=head_dim, kv_heads=kv, causal=causal, seq_len=seq_len, mode=mode)
                    cudnn, _ = time_case(_sdpa("cudnn"), seq_len, 32, head_dim, causal, mode, kv_heads=kv,
                                         repeat_kv=True)
                    rows.append(dict(case, options="cudnn", config=None, ms=cudnn, vs_cudnn=1.0))
                    default = None
                    for name in names:
                        config = HyperAttentionConfig(exact_up_to=0, **OPTIONS[name])
                        ms, peak = time_case(hyper_attention_runner(config), seq_len, 32, head_dim, causal, mode,
                                             kv_heads=kv)
                        default = ms if name == "default" else default
                        rows.append(dict(case, options=name, config=OPTIONS[name], ms=ms, peak_gib=peak,
                                         vs_cudnn=cudnn / ms))
                    for row in rows[-len(names):]:
                        row["vs_default"] = row["ms"] / default if default else None
                        print(f"d{head_dim} kv{kv:<3} {'causal' if causal else 'non-causal':<10} {seq_len:>8} "
                              f"{mode:<8} {row['options']:<22} {row['ms']:9.2f} ms {row['vs_cudnn']:6.2f}x cuDNN"
                              + (f"  {row['vs_default']:5.2f}x default" if default else ""), flush=True)
    if args.json:
        import triton

        with open(args.json, "w") as f:
            json.dump(dict(benchmark="option_cost", card=torch.cuda.get_device_name(),
                           date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           torch=torch.__version__, triton=triton.__version__, command=" ".join(sys.argv),
                           heads=32, batch=1, dtype="bfloat16", results=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
