"""What holds GPU memory at the peak of one HyperAttention call, by the line that allocated it.

    python tools/memory_peak.py --seq-len 262144 --head-dim 128 --causal

Records the caching allocator's history (``torch.cuda.memory._record_memory_history``) over one
forward+backward (or forward, ``--forward-only``) after a warm-up call, replays its alloc and
free events to find the moment the most memory was live, and lists what was live then, summed
by the innermost ``hyperattn`` source line of each allocation (the first frame outside torch
where none is in hyperattn). Tensors made before the call (inputs, dO) are counted apart.
Needs a CUDA GPU; ``tools/gpu_session.sh OUT memory`` runs it at 1M tokens. Run from the repository
root with the package importable (installed, or ``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch

import hyperattn
from hyperattn import HyperAttentionConfig, hyper_attention
from hyperattn.bench.attention import attention_inputs

GIB = 2**30
PACKAGE_DIR = os.path.dirname(os.path.abspath(hyperattn.__file__))


def allocation_site(frames: list[dict]) -> str:
    """The innermost frame of an allocation inside the hyperattn package (its path from the
    package's parent), else the innermost one outside torch (its file name); frames innermost first."""
    for frame in frames:
        if os.path.abspath(frame["filename"]).startswith(PACKAGE_DIR + os.sep):
            short = os.path.relpath(frame["filename"], os.path.dirname(PACKAGE_DIR))
            return f"{short}:{frame['line']} ({frame['name']})"
    for frame in frames:
        name = frame["filename"]
        if "torch/" not in name and "<" not in name:
            return f"{name.rsplit('/', 1)[-1]}:{frame['line']} ({frame['name']})"
    return "(no Python frame)"


def live_at_peak(trace: list[dict]) -> tuple[int, dict[int, dict]]:
    """Replays alloc/free events: the most bytes live at once and the allocations live then."""
    live, total, peak, at_peak = {}, 0, 0, {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, at_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=262144)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    backward = not args.forward_only
    q, k, v = attention_inputs(1, args.heads, args.heads, args.seq_len, args.head_dim, torch.bfloat16, "cuda",
                               requires_grad=backward)
    grad = torch.randn_like(q)
    config = HyperAttentionConfig(exact_up_to=0)

    def step():
        for x in (q, k, v):
            x.grad = None
        out = hyper_attention(q, k, v, causal=args.causal, config=config, seed=0)
        if backward:
            out.backward(grad)
        return out

    step()  # compiles, and leaves the allocator's cache warm
    for x in (q, k, v):
        x.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    out = step()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    del out
    peak, live = live_at_peak(snapshot["device_traces"][0])
    by_site = defaultdict(lambda: [0, 0])
    for event in live.values():
        site = by_site[allocation_site(event.get("frames", []))]
        site[0] += event["size"]
        site[1] += 1
    label = f"{'causal' if args.causal else 'non-causal'} {'fwd+bwd' if backward else 'fwd'}"
    print(f"{torch.cuda.get_device_name()}, {label}, {args.seq_len} tokens, {args.heads} heads, "
          f"head dim {args.head_dim}, bf16")
    print(f"allocated before the call (inputs, dO): {before / GIB:.2f} GiB")
    print(f"peak during the call: {torch.cuda.max_memory_allocated() / GIB:.2f} GiB "
          f"(replayed: {before / GIB:.2f} + {peak / GIB:.2f})")
    print("live at the peak, by allocating line:")
    for site, (size, count) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {size / GIB:8.2f} GiB  {count:4d} blocks  {site}")


if __name__ == "__main__":
    main()
