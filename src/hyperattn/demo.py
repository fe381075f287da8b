"""``hyperattn demo``: exact attention against HyperAttention on this machine's device."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hyperattn.api import hyper_attention
from hyperattn.bench.inputs import clustered_qkv
from hyperattn.bench.timing import median_ms
from hyperattn.config import HyperAttentionConfig


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_demo(seq_lens, heads=8, head_dim=64, config=None, device=None, seed=0, reps=3) -> dict:
    """Time causal exact attention (PyTorch SDPA) and HyperAttention on clustered inputs.

    Returns a dict with the settings and one row per length: times (ms), speed-up and the
    relative Frobenius error of HyperAttention against the exact output.
    """
    config = config or HyperAttentionConfig()
    device = device or default_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for seq_len in tqdm(seq_lens, desc="demo", unit="length"):
        q, k, v = clustered_qkv(1, heads, seq_len, head_dim, num_clusters=max(1, seq_len // 32), spread=0.1,
                                norm=4.0, seed=seed, dtype=dtype, device=device)

        def exact():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def hyper():
            return hyper_attention(q, k, v, causal=True, config=config, seed=seed)

        ref, out = exact().float(), hyper().float()
        exact_ms, hyper_ms = median_ms(exact, device, reps), median_ms(hyper, device, reps)
        rows.append(dict(seq_len=seq_len, exact_ms=exact_ms, hyper_ms=hyper_ms, speedup=exact_ms / hyper_ms,
                         rel_error=((out - ref).norm() / ref.norm()).item()))
    return dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                dtype=str(dtype).removeprefix("torch."), torch=torch.__version__, heads=heads, head_dim=head_dim,
                causal=True, config=asdict(config), rows=rows)


def format_table(result: dict) -> str:
    lines = [f"causal attention, batch 1, {result['heads']} heads, head dim {result['head_dim']}, "
             f"{result['dtype']} on {result['device']}; exact = PyTorch SDPA",
             f"HyperAttention {result['config']}",
             f"{'seq_len':>8} {'exact ms':>10} {'hyper ms':>10} {'speed-up':>9} {'rel. error':>11}"]
    for row in result["rows"]:
        lines.append(f"{row['seq_len']:>8} {row['exact_ms']:>10.1f} {row['hyper_ms']:>10.1f} "
                     f"{row['speedup']:>8.2f}x {row['rel_error']:>11.4f}")
    return "\n".join(lines)


def main(args) -> int:
    config = HyperAttentionConfig(block_size=args.block_size, sample_size=args.sample_size,
                                  lsh_num_projs=args.lsh_num_projs, min_seq_len=args.min_seq_len,
                                  sampling=args.sampling)
    device = torch.device(args.device) if args.device else default_device()
    seq_lens = args.seq_lens or ([8192, 16384, 32768, 65536] if device.type == "cuda" else [4096, 8192, 16384])
    result = run_demo(seq_lens, heads=args.heads, head_dim=args.head_dim, config=config, device=device,
                      seed=args.seed)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0
