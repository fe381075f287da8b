"""What the accuracy options cost: HyperAttention's time with each option against the paper's config.

    python tools/option_cost.py --seq-lens 32768,131072 --json out.json

Times (``hyperattn.bench.attention.time_case``: medians of ``triton.testing.do_bench``, one
process, one card) forward and forward+backward, causal and not, batch 1, 32 heads, head dim
64, bf16, for the paper's config and each option set (the last one is the library's default),
and prints each one's time relative to the paper's. Needs a CUDA GPU; ``tools/gpu_session.sh OUT
options`` runs it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from hyperattn import HyperAttentionConfig
from hyperattn.bench.attention import hyper_attention_runner, time_case

OPTIONS = {
    "paper": dict(exact_sinks=0, exact_tail=0),
    "sinks 16": dict(exact_sinks=16, exact_tail=0),
    "tail 64": dict(exact_sinks=0, exact_tail=64),
    "sinks 16 + tail 64": dict(exact_sinks=16, exact_tail=64),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="32768,131072")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", default="causal,non-causal", help="comma-separated: causal, non-causal")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    rows = []
    print(f"{torch.cuda.get_device_name()}: 32 heads, d {args.head_dim}, bf16; median ms (vs paper)")
    for causal in (name == "causal" for name in args.causal.split(",")):
        for seq_len in map(int, args.seq_lens.split(",")):
            for mode in ("fwd", "fwd_bwd"):
                paper = None
                for name, options in OPTIONS.items():
                    config = HyperAttentionConfig(exact_up_to=0, **options)
                    ms, peak = time_case(hyper_attention_runner(config), seq_len, 32, args.head_dim, causal, mode)
                    paper = paper or ms
                    rows.append(dict(causal=causal, seq_len=seq_len, mode=mode, options=name, config=options, ms=ms,
                                     peak_gib=peak, vs_paper=ms / paper))
                    print(f"{'causal' if causal else 'non-causal':<10} {seq_len:>8} {mode:<8} {name:<20} {ms:9.2f} ms "
                          f" {ms / paper:5.2f}x", flush=True)
    if args.json:
        import triton

        with open(args.json, "w") as f:
            json.dump(dict(benchmark="option_cost", card=torch.cuda.get_device_name(),
                           date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           torch=torch.__version__, triton=triton.__version__, command=" ".join(sys.argv),
                           head_dim=args.head_dim, heads=32, batch=1, dtype="bfloat16", results=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
