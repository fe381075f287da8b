"""``hyperattn bench attention``, ``hyperattn bench model`` and ``hyperattn bench distributed``."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from hyperattn.bench import attention, distributed, model
from hyperattn.cli.arg_types import int_list, numbers, positive_int, seed, str_list
from hyperattn.cli.common import pick_device, write_result
from hyperattn.cli.config_args import add_config_args, config_from_args

CAUSALS = {"both": (False, True), "causal": (True,), "non-causal": (False,)}


def add_bench_parser(commands) -> None:
    parser = commands.add_parser("bench", help="speed benchmarks (CUDA)")
    kinds = parser.add_subparsers(dest="bench", required=True)
    attn = kinds.add_parser(
        "attention",
        help="one attention layer: HyperAttention against PyTorch SDPA (flash, cuDNN)",
        description="Times forward and forward+backward of HyperAttention and PyTorch SDPA (flash and cuDNN "
        "backends) in one process on one CUDA card, batch 1, bf16: medians of triton.testing.do_bench, peak "
        "memory, speed-up against cuDNN. Prints a table; writes JSON and a log-log plot on request.",
    )
    attn.add_argument("--seq-lens", type=int_list, default=[4096, 8192, 16384, 32768, 65536, 131072],
                      help="lengths timed for every implementation")
    attn.add_argument("--long-seq-lens", type=int_list, default=[262144, 524288, 1048576],
                      help="lengths timed for HyperAttention alone")
    attn.add_argument("--head-dims", type=int_list, default=[64, 128])
    attn.add_argument("--heads", type=positive_int, default=32)
    attn.add_argument("--kv-heads", type=positive_int,
                      help="key/value heads (GQA; a divisor of --heads; default: --heads); SDPA gets them repeated")
    attn.add_argument("--causal", choices=list(CAUSALS), default="both")
    attn.add_argument("--modes", type=str_list, default=["fwd", "fwd_bwd"], help="comma-separated: fwd, fwd_bwd")
    attn.add_argument("--json", metavar="PATH", help="write the results as JSON")
    attn.add_argument("--plot", metavar="PNG", help="write a log-log plot of time against length")
    attn.add_argument("--plot-only", metavar="JSON", help="redraw table and plot from a saved result; no timing")
    add_config_args(attn)
    attn.set_defaults(run=bench_attention)

    prefill = kinds.add_parser(
        "model",
        help="prefill of a 7B/8B-class model (random weights, a few layers): exact vs HyperAttention",
        description="Builds a model with random weights and the dimensions of a real checkpoint ("
        + ", ".join(f"{arch}: {name}" for arch, (_, name, _) in model.ARCHS.items())
        + ") and times one prefill (batch 1, bf16, last-token logits) with exact SDPA attention and with "
        "HyperAttention in some layers, at each length: medians of triton.testing.do_bench on one CUDA card.",
    )
    prefill.add_argument("--arch", choices=sorted(model.ARCHS), default="llama")
    prefill.add_argument("--seq-len", "--seq-lens", dest="seq_lens", type=int_list, default=[32768, 65536, 131072],
                         help="comma-separated lengths")
    prefill.add_argument("--num-layers", type=positive_int, default=4, help="decoder layers built")
    prefill.add_argument("--layers", type=str_list, default=["exact", "half", "all"],
                         help="comma-separated settings: exact, half (the last half), all, last:K, first:K, "
                              "heads:F (in every layer, its first share F of query heads approximated, the rest "
                              "exact) or plan:PATH (in every layer, a calibrated head plan's shares of heads per "
                              "treatment)")
    prefill.add_argument("--seed", type=seed, default=0)
    prefill.add_argument("--device", help="torch device (default: cuda; another device only for smoke runs)")
    prefill.add_argument("--json", metavar="PATH", help="write the results as JSON")
    prefill.add_argument("--plot", metavar="PNG", help="write a log-log plot of prefill time against length")
    add_config_args(prefill)
    prefill.set_defaults(run=bench_model)

    spread = kinds.add_parser(
        "distributed",
        help="context-parallel attention over several GPUs of this host against one GPU and exact attention",
        description="Starts one process per GPU (NCCL) for each GPU count and times context_parallel_attention "
        "(Ulysses form) and context_parallel_exact_attention (the same over SDPA) on each rank's shard of a "
        "random sequence (batch 1), with the all-to-alls and one rank's attention alone: the median over fixed "
        "calls of the slowest rank's time, the peak memory of any rank. --device cpu runs gloo processes on "
        "the CPU (smoke runs, small lengths).",
    )
    spread.add_argument("--gpus", type=int_list,
                        help="comma-separated process counts, one GPU each (default: 1 and every power of two up "
                             "to the GPUs of this host)")
    spread.add_argument("--seq-lens", type=int_list, default=[1 << 20, 1 << 21, 1 << 22, 1 << 23],
                        help="whole-sequence lengths (each split evenly over the processes)")
    spread.add_argument("--heads", type=positive_int, default=32)
    spread.add_argument("--kv-heads", type=positive_int, help="key/value heads (default: --heads); a multiple of "
                        "every GPU count")
    spread.add_argument("--head-dim", type=positive_int, default=64)
    spread.add_argument("--causal", choices=["causal", "non-causal"], default="causal")
    spread.add_argument("--modes", type=str_list, default=list(distributed.MODES),
                        help="comma-separated: fwd, fwd_bwd")
    spread.add_argument("--impls", type=str_list, default=list(distributed.IMPLS),
                        help="comma-separated: hyper (HyperAttention), exact (SDPA)")
    spread.add_argument("--exact-max-len", type=positive_int, default=1 << 20,
                        help="exact attention is timed up to this length (its time grows as the square)")
    spread.add_argument("--warmup", type=numbers(int, 0), default=1, help="untimed calls before timing")
    spread.add_argument("--reps", type=positive_int, default=5, help="timed calls per case")
    spread.add_argument("--seed", type=seed, default=0)
    spread.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda (NCCL, bf16) or cpu (gloo, float32: smoke runs)")
    spread.add_argument("--json", metavar="PATH", help="write the results as JSON")
    spread.add_argument("--plot", metavar="PNG", help="write a log-log plot of time against length")
    add_config_args(spread)
    spread.set_defaults(run=bench_distributed)


def bench_attention(args: argparse.Namespace) -> int:
    if args.plot_only:
        with open(args.plot_only) as f:
            result = json.load(f)
        print(attention.format_table(result))
        attention.plot(result, args.plot or args.plot_only.removesuffix(".json") + ".png")
        return 0
    if args.kv_heads:
        attention.check_kv_heads(args.heads, args.kv_heads)
    if not torch.cuda.is_available():
        print("hyperattn bench attention: error: needs a CUDA device (use --plot-only to redraw a result)",
              file=sys.stderr)
        return 2
    result = attention.run_benchmark(args.seq_lens, args.long_seq_lens, args.head_dims, CAUSALS[args.causal],
                                     args.modes, heads=args.heads, config=config_from_args(args),
                                     command=args.command_line, kv_heads=args.kv_heads)
    write_result(result, args.json)  # first, so that no later failure loses the measurements
    print(attention.format_table(result))
    if args.plot:
        try:
            attention.plot(result, args.plot)
        except ImportError:
            print("matplotlib is not installed: no plot (redraw with --plot-only JSON)", file=sys.stderr)
    return 0


def bench_model(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    if device.type != "cuda" and args.device is None:
        print("hyperattn bench model: error: needs a CUDA device (or an explicit --device for a smoke run)",
              file=sys.stderr)
        return 2
    result = model.benchmark_model(args.arch, args.num_layers, args.seq_lens, args.layers, config_from_args(args),
                                   device, args.seed, args.command_line)
    write_result(result, args.json)  # first, so that no later failure loses the measurements
    print(model.format_table(result))
    if args.plot:
        model.plot(result, args.plot)
    return 0


def bench_distributed(args: argparse.Namespace) -> int:
    bad = [m for m in args.modes if m not in distributed.MODES] + [i for i in args.impls if i not in distributed.IMPLS]
    if bad:
        print(f"hyperattn bench distributed: error: unknown --modes/--impls {bad} (modes: {', '.join(distributed.MODES)};"
              f" impls: {', '.join(distributed.IMPLS)})", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("hyperattn bench distributed: error: needs CUDA GPUs (or --device cpu for a smoke run)", file=sys.stderr)
        return 2
    available = torch.cuda.device_count() if args.device == "cuda" else 2
    gpus = args.gpus or [1] + [1 << i for i in range(1, available.bit_length()) if 1 << i <= available]
    try:
        result = distributed.run_benchmark(
            gpus, args.seq_lens, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
            causal=args.causal == "causal", modes=args.modes, impls=args.impls, exact_max_len=args.exact_max_len,
            config=config_from_args(args), device=args.device,
            dtype="bfloat16" if args.device == "cuda" else "float32", warmup=args.warmup, reps=args.reps,
            seed=args.seed, command=args.command_line,
            progress=lambda text: print(f"bench distributed: {text}", file=sys.stderr))
    except ValueError as error:
        print(f"hyperattn bench distributed: error: {error}", file=sys.stderr)
        return 2
    distributed.report(result, args.json, args.plot)
    return 0
