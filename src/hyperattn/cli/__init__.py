"""Command line: ``hyperattn demo | eval ppl | needle | attention | ruler | calibrate | bench attention | model``.

Each command parses its flags, builds a ``HyperAttentionConfig``, calls the library and
prints or writes what it returns.
"""

from __future__ import annotations

import argparse
import sys

from hyperattn.cli.bench import add_bench_parser
from hyperattn.cli.calibrate import add_calibrate_parser
from hyperattn.cli.demo import add_demo_parser
from hyperattn.cli.eval import add_eval_parser
from hyperattn.eval.assets import AssetError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``run``, the function that runs it on the parsed args."""
    parser = argparse.ArgumentParser(prog="hyperattn", description="HyperAttention: near-linear-time attention.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(commands)
    add_eval_parser(commands)
    add_calibrate_parser(commands)
    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["hyperattn", *argv])  # recorded with every result
    try:
        return args.run(args)
    except (TypeError, ValueError, AssetError) as error:
        print(f"hyperattn {args.command}: error: {error}", file=sys.stderr)
        return 2
