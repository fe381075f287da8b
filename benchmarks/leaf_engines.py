"""The diagonal leaves of causal HyperAttention run by cuDNN or by the fused dense kernel:
forward and forward+backward time of ``hyper_attention`` with each engine, in one process.

    python benchmarks/leaf_engines.py --seq-lens 8192,32768,131072 --json leaves.json

Also reports whether cuDNN's attention op takes grouped kv heads (fewer k/v heads than q heads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch
import triton

from hyperattn.bench.attention import hyper_attention_runner, time_case
from hyperattn.config import HyperAttentionConfig
from hyperattn.executors.cudnn import cudnn_causal_forward


def cudnn_takes_gqa() -> str:
    q = torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(2, 2, 256, 64, device="cuda", dtype=torch.bfloat16)
    try:
        out, _ = cudnn_causal_forward(q, kv, kv, 0.125)
    except RuntimeError as error:
        return f"no ({str(error).splitlines()[0][:120]})"
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), kv.float(), kv.float(), is_causal=True,
                                                           enable_gqa=True)
    return f"yes (max error {(out.float() - ref).abs().max().item():.2e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="8192,32768,131072")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    run = hyper_attention_runner(HyperAttentionConfig(exact_up_to=0))
    for head_dim in map(int, args.head_dims.split(",")):
        for seq_len in map(int, args.seq_lens.split(",")):
            for mode in ("fwd", "fwd_bwd"):
                row = dict(seq_len=seq_len, head_dim=head_dim, mode=mode)
                for engine in ("triton", "cudnn"):
                    os.environ["HYPERATTN_LEAVES"] = engine
                    row[engine], _ = time_case(run, seq_len, args.heads, head_dim, True, mode)
                rows.append(row)
                print(row, flush=True)
    gqa = cudnn_takes_gqa()
    result = dict(benchmark="leaf_engines", card=torch.cuda.get_device_name(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  torch=torch.__version__, triton=triton.__version__, cudnn_version=torch.backends.cudnn.version(),
                  command=" ".join(["python", *sys.argv]), heads=args.heads, batch=1, dtype="bfloat16", causal=True,
                  cudnn_gqa=gqa, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"{result['card']}, causal, {args.heads} heads, bf16, paper defaults; median ms; "
          f"cuDNN {result['cudnn_version']}")
    print(f"{'len':>8} {'d':>4} {'mode':>8} {'triton':>9} {'cudnn':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['seq_len']:>8} {r['head_dim']:>4} {r['mode']:>8} {r['triton']:>9.3f} {r['cudnn']:>9.3f} "
              f"{r['triton'] / r['cudnn']:>6.2f}")
    print("cuDNN takes grouped kv heads:", gqa)


if __name__ == "__main__":
    main()
