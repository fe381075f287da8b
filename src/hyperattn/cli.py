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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from hyperattn.demo import main as demo_main

        try:
            return demo_main(args)
        except (TypeError, ValueError) as error:
            print(f"hyperattn demo: error: {error}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
