"""Where the time goes: CUDA kernel time per stage of one HyperAttention call.

    python tools/profile_attention.py --seq-len 131072 --heads 32 --head-dim 64
    python tools/profile_attention.py --head-dim 128 --kv-heads 8 --causal-only --set heavy_keys=448

Prints, for causal and non-causal, forward and forward+backward, the total CUDA time of
each kernel (torch.profiler), largest first, and the host's self CPU time. The config is the
library's default with ``exact_up_to=0`` (``--exact-sinks 0 --exact-tail 0 --set query_blocks=rank``: the
paper's; ``--set FIELD=VALUE``: any other field). Use it to
see which kernel a change should speed up, and to A/B two source trees (``tools/gpu_session.sh``,
step ``ab``). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from hyperattn import HyperAttentionConfig, hyper_attention


def profile_case(seq_len, heads, head_dim, causal, backward, top, config, launches_over=None, kv_heads=None):
    q, k, v = (torch.randn(1, h, seq_len, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
               for h in (heads, kv_heads or heads, kv_heads or heads))
    grad = torch.randn_like(q)

    def step():
        for x in (q, k, v):
            x.grad = None  # time the backward alone, not the accumulation into .grad
        out = hyper_attention(q, k, v, causal=causal, config=config, seed=0)
        if backward:
            out.backward(grad)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    totals, launches = defaultdict(float), 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:70]] += event.device_time_total / 1e3  # us -> ms
            launches += 1
    total = sum(totals.values())
    if launches_over is not None:  # every launch of at least that many ms, in launch order
        kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda e: e.time_range.start)
        print(f"\nlaunches of at least {launches_over} ms, in order:")
        for event in kernels:
            if event.device_time_total / 1e3 >= launches_over:
                print(f"  {event.device_time_total / 1e3:8.3f} ms  {event.name[:70]}")
    label = f"{'causal' if causal else 'non-causal'} {'fwd+bwd' if backward else 'fwd'} {seq_len} tokens"
    print(f"\n{label}: {total:.2f} ms of kernels in {launches} launches")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:8.3f} ms  {name}")
    cpu = defaultdict(float)
    for event in prof.key_averages():
        if event.self_cpu_time_total > 0:
            cpu[event.key[:70]] += event.self_cpu_time_total / 1e3
    print(f"  host: {sum(cpu.values()):.2f} ms of self CPU time; largest:")
    for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:8.3f} ms  {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--launches-over", type=float, default=None,
                        help="also list every launch of at least this many ms, in launch order")
    parser.add_argument("--causal-only", action="store_true")
    parser.add_argument("--exact-sinks", type=int, default=HyperAttentionConfig.exact_sinks,
                        help="HyperAttentionConfig.exact_sinks (default %(default)s; the paper's: 0)")
    parser.add_argument("--exact-tail", type=int, default=HyperAttentionConfig.exact_tail,
                        help="HyperAttentionConfig.exact_tail (default %(default)s; the paper's: 0)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="another HyperAttentionConfig field, e.g. --set heavy_keys=448 (repeatable)")
    args = parser.parse_args()
    fields = {f.name: f.type for f in dataclasses.fields(HyperAttentionConfig)}
    extra = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            parser.error(f"--set {item!r}: no HyperAttentionConfig field {name!r}; fields: {sorted(fields)}")
        extra[name] = int(value) if fields[name] in ("int", int) else value
    print(torch.cuda.get_device_name())
    for causal in (True,) if args.causal_only else (False, True):
        config = HyperAttentionConfig(exact_up_to=0, exact_sinks=args.exact_sinks, exact_tail=args.exact_tail, **extra)
        for backward in (False,) if args.forward_only else (False, True):
            profile_case(args.seq_len, args.heads, args.head_dim, causal, backward, args.top, config,
                         args.launches_over, args.kv_heads)


if __name__ == "__main__":
    main()
