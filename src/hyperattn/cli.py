"""Command line: ``hyperattn demo``."""

from __future__ import annotations

import argparse
import sys


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperattn", description="HyperAttention: near-linear-time attention.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="time exact attention against HyperAttention on this machine",
        description="Times causal exact attention (PyTorch SDPA) against HyperAttention on synthetic clustered "
        "inputs at a few lengths, on the GPU if there is one, and prints time, speed-up and relative error.",
    )
    demo.add_argument("--seq-lens", type=_positive_int_list, help="comma-separated lengths (default by device)")
    demo.add_argument("--heads", type=int, default=8)
    demo.add_argument("--head-dim", type=int, default=64)
    demo.add_argument("--block-size", type=int, default=256)
    demo.add_argument("--sample-size", type=int, default=256)
    demo.add_argument("--lsh-num-projs", type=int, default=7)
    demo.add_argument("--min-seq-len", type=int, default=4096)
    demo.add_argument("--sampling", choices=["uniform", "value_norm"], default="uniform")
    demo.add_argument("--device", help="torch device, default cuda if available else cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", metavar="PATH", help="also write the results as JSON")

    bench = commands.add_parser("bench", help="speed benchmarks (CUDA)")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    attn = bench_kinds.add_parser(
        "attention",
        help="one attention layer: HyperAttention against PyTorch SDPA (flash, cuDNN)",
        description="Times forward and forward+backward of HyperAttention and PyTorch SDPA (flash and cuDNN "
        "backends) in one process on one CUDA card, batch 1, bf16: medians of triton.testing.do_bench, peak "
        "memory, speed-up against cuDNN. Prints a table; writes JSON and a log-log plot on request.",
    )
    attn.add_argument("--seq-lens", type=_positive_int_list, default=[4096, 8192, 16384, 32768, 65536, 131072],
                      help="lengths timed for every implementation")
    attn.add_argument("--long-seq-lens", type=_positive_int_list, default=[262144, 524288, 1048576],
                      help="lengths timed for HyperAttention alone")
    attn.add_argument("--head-dims", type=_positive_int_list, default=[64, 128])
    attn.add_argument("--heads", type=int, default=32)
    attn.add_argument("--causal", choices=["both", "causal", "non-causal"], default="both")
    attn.add_argument("--modes", type=lambda t: t.split(","), default=["fwd", "fwd_bwd"],
                      help="comma-separated: fwd, fwd_bwd")
    attn.add_argument("--block-size", type=int, default=256)
    attn.add_argument("--sample-size", type=int, default=256)
    attn.add_argument("--lsh-num-projs", type=int, default=7)
    attn.add_argument("--min-seq-len", type=int, default=4096)
    attn.add_argument("--json", metavar="PATH", help="write the results as JSON")
    attn.add_argument("--plot", metavar="PNG", help="write a log-log plot of time against length")
    attn.add_argument("--plot-only", metavar="JSON", help="redraw table and plot from a saved result; no timing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from hyperattn.demo import main as run
    else:
        from hyperattn.bench.attention import main as run
    try:
        return run(args)
    except (TypeError, ValueError) as error:
        print(f"hyperattn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
