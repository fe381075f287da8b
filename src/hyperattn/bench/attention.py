"""``hyperattn bench attention``: one attention layer, ours against PyTorch's exact kernels.

Times forward and forward+backward of HyperAttention and of PyTorch SDPA (flash and cuDNN
backends) in one process on one card: medians of ``triton.testing.do_bench``, peak memory,
speed-up against cuDNN, with the card, versions, date and command (``hyperattn.runinfo``).
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hyperattn.api import hyper_attention
from hyperattn.bench.timing import median_ms
from hyperattn.config import HyperAttentionConfig
from hyperattn.executors.cudnn import leaf_engine_setting
from hyperattn.runinfo import environment

BASELINES = ("flash", "cudnn")


def _sdpa(backend: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kind = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def run(q, k, v, causal):
        with sdpa_kernel(kind):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def hyper_attention_runner(config: HyperAttentionConfig):
    """``run(q, k, v, causal)``: HyperAttention with ``config`` and seed 0, for ``time_case``."""
    def run(q, k, v, causal):
        return hyper_attention(q, k, v, causal=causal, config=config, seed=0)

    return run


def check_kv_heads(heads: int, kv_heads: int) -> None:
    """ValueError unless ``kv_heads`` divides ``heads`` (whole groups of query heads)."""
    if heads % kv_heads:
        raise ValueError(f"kv_heads must divide heads ({heads}), got {kv_heads}")


def attention_inputs(batch, heads, kv_heads, seq_len, head_dim, dtype, device, requires_grad=False,
                     repeat_kv=False):
    """Standard normal q (B, heads, N, D) and k, v (B, kv_heads, N, D), leaf tensors; with
    ``repeat_kv`` k and v come with every kv head repeated for its ``heads // kv_heads`` query
    heads (B, heads, N, D), as models hand grouped heads to an attention without GQA support."""
    check_kv_heads(heads, kv_heads)
    q, k, v = (torch.randn(batch, h, seq_len, head_dim, device=device, dtype=dtype)
               for h in (heads, kv_heads, kv_heads))
    if repeat_kv:
        k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
    return tuple(x.requires_grad_(requires_grad) for x in (q, k, v))


def time_case(fn, seq_len, heads, head_dim, causal, mode, dtype=torch.bfloat16, batch=1, kv_heads=None,
              repeat_kv=False):
    """(median ms, peak GiB) of ``fn`` forward (mode "fwd") or forward+backward ("fwd_bwd") on
    ``attention_inputs`` (``kv_heads`` default: ``heads``); the peak is the most memory
    allocated in any call, inputs and dO included, each forward+backward starting with no
    .grad (as after ``optimizer.zero_grad()``), plus do_bench's 256 MiB buffer that flushes
    the L2 cache between calls."""
    torch.cuda.empty_cache()
    q, k, v = attention_inputs(batch, heads, kv_heads or heads, seq_len, head_dim, dtype, "cuda",
                               requires_grad=mode == "fwd_bwd", repeat_kv=repeat_kv)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, v, causal)
    else:
        grad = torch.randn(batch, heads, seq_len, head_dim, device="cuda", dtype=dtype)

        def step():
            for x in (q, k, v):
                x.grad = None  # a fresh step: no accumulation into .grad in the time or the peak
            fn(q, k, v, causal).backward(grad)
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = median_ms(step, q.device)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del q, k, v
    return float(ms), peak


def run_benchmark(seq_lens, long_seq_lens, head_dims, causals, modes, heads=32, config=None, command="",
                  kv_heads=None):
    """Every case, each in a fresh set of inputs. With ``kv_heads`` below ``heads`` (GQA), ours
    reads the grouped k, v and SDPA gets them repeated per query head (not timed)."""
    config = config or HyperAttentionConfig()
    kv_heads = kv_heads or heads
    impls = {"ours": hyper_attention_runner(config), **{name: _sdpa(name) for name in BASELINES}}
    cases = [(n, d, c, m, impl) for d in head_dims for c in causals for m in modes
             for n in list(seq_lens) + list(long_seq_lens) for impl in impls
             if impl == "ours" or n in seq_lens]
    results = []
    for seq_len, head_dim, causal, mode, impl in tqdm(cases, desc="bench attention", file=sys.stderr):
        row = dict(seq_len=seq_len, head_dim=head_dim, causal=causal, mode=mode, impl=impl)
        try:
            row["ms"], row["peak_gib"] = time_case(impls[impl], seq_len, heads, head_dim, causal, mode,
                                                   kv_heads=kv_heads, repeat_kv=impl != "ours")
        except torch.OutOfMemoryError:
            row["ms"], row["peak_gib"], row["error"] = None, None, "out of memory"
            torch.cuda.empty_cache()
        results.append(row)
    return dict(
        benchmark="attention", **environment(torch.device("cuda"), command),
        batch=1, heads=heads, kv_heads=kv_heads, dtype="bfloat16", config=asdict(config),
        diagonal_leaves=leaf_engine_setting(),  # HYPERATTN_LEAVES: see hyperattn.executors.cudnn
        results=results,
    )


def _heads(result: dict) -> str:
    """"32 heads", or "32 query heads on 8 kv heads" (results before kv_heads: all heads)."""
    heads, kv_heads = result["heads"], result.get("kv_heads", result["heads"])
    if kv_heads == heads:
        return f"{heads} heads"
    return f"{heads} query heads on {kv_heads} kv heads (SDPA: kv repeated)"


def format_table(result: dict) -> str:
    by_key = {(r["seq_len"], r["head_dim"], r["causal"], r["mode"], r["impl"]): r for r in result["results"]}
    groups = sorted({(r["head_dim"], r["causal"], r["mode"]) for r in result["results"]})
    lines = [f"{result['card']}, batch {result['batch']}, {_heads(result)}, {result['dtype']}; median ms"]
    # results written before exact_up_to existed ran the paper's rule
    config = HyperAttentionConfig(**{"exact_up_to": 0, **result["config"]})
    lines.append("'exact': our call ran exact attention (HyperAttentionConfig.runs_exact)")
    for head_dim, causal, mode in groups:
        lines.append(f"\nhead dim {head_dim}, {'causal' if causal else 'non-causal'}, {mode.replace('_', '+')}")
        lines.append(f"{'seq_len':>8} {'flash':>9} {'cudnn':>9} {'ours':>9} {'vs cudnn':>9} {'ours GiB':>9}")
        for seq_len in sorted({r["seq_len"] for r in result["results"]}):
            cells = [by_key.get((seq_len, head_dim, causal, mode, impl)) for impl in ("flash", "cudnn", "ours")]
            if cells[2] is None:
                continue
            times = [c["ms"] if c and c["ms"] is not None else None for c in cells]
            ratio = f"{times[1] / times[2]:.2f}x" if times[1] and times[2] else "-"
            fmt = [f"{t:9.2f}" if t is not None else f"{'-':>9}" for t in times]
            peak = cells[2]["peak_gib"]
            peak = f"{peak:.2f}" if peak is not None else cells[2].get("error", "-")
            exact = "  exact" if config.runs_exact(seq_len, seq_len, causal) else ""
            lines.append(f"{seq_len:>8} {' '.join(fmt)} {ratio:>9} {peak:>9}{exact}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Log-log plot of time against length, one panel per (head dim, causal, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["head_dim"], r["causal"], r["mode"]) for r in result["results"]})
    cols = 2
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax, (head_dim, causal, mode) in zip(axes.flat, groups):
        for impl, style in (("flash", "s--"), ("cudnn", "^--"), ("ours", "o-")):
            points = sorted((r["seq_len"], r["ms"]) for r in result["results"]
                            if (r["head_dim"], r["causal"], r["mode"], r["impl"]) == (head_dim, causal, mode, impl)
                            and r["ms"] is not None)
            if points:
                ax.plot(*zip(*points), style, label="HyperAttention" if impl == "ours" else f"SDPA {impl}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="median ms",
               title=f"d={head_dim}, {'causal' if causal else 'non-causal'}, {mode.replace('_', '+')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"{result['card']}: batch 1, {_heads(result)}, bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)

