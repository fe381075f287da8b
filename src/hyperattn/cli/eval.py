"""``hyperattn eval ppl`` and ``hyperattn eval needle``."""

from __future__ import annotations

import argparse

from hyperattn.cli.arg_types import float_list, int_list, positive_int, seed, seed_list, str_list
from hyperattn.cli.common import add_pretrained_args, load_pretrained, write_result
from hyperattn.cli.config_args import add_config_args, config_from_args
from hyperattn.eval.models import EVAL_CONFIG
from hyperattn.eval.needle import evaluate_needle, format_grid, plot_needle
from hyperattn.eval.perplexity import evaluate_perplexity, format_summary, plot_perplexity


def add_eval_parser(commands) -> None:
    parser = commands.add_parser("eval", help="quality of pretrained models with HyperAttention")
    evals = parser.add_subparsers(dest="eval", required=True)
    ppl = evals.add_parser(
        "ppl", help="perplexity: exact vs HyperAttention in some layers",
        description="Perplexity of a pretrained causal LM on windows of a long text, exact and with "
        "HyperAttention in the given layers, per quarter of the window, over several windows and seeds.")
    add_pretrained_args(ppl)
    ppl.add_argument("--seq-len", type=positive_int, default=8192)
    ppl.add_argument("--layers", type=str_list, default=["last:0", "last:8", "last:15", "all"],
                     help="comma-separated settings; last:0 is exact attention")
    ppl.add_argument("--windows", type=positive_int, default=1, help="consecutive windows from the start of the text")
    ppl.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated seeds")
    add_config_args(ppl, EVAL_CONFIG)
    ppl.set_defaults(run=eval_ppl)

    needle = evals.add_parser(
        "needle", help="needle in a haystack: exact vs HyperAttention",
        description="Hides a 5-digit number at each depth of a long text and asks for it by greedy decoding; "
        "prints an accuracy grid for exact attention and each patched setting.")
    add_pretrained_args(needle)
    needle.add_argument("--lengths", type=int_list, default=[4096, 8192])
    needle.add_argument("--depths", type=float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    needle.add_argument("--layers", type=str_list, default=["last:0", "last:15"])
    needle.add_argument("--seed", type=seed, default=0)
    add_config_args(needle, EVAL_CONFIG)
    needle.set_defaults(run=eval_needle)


def eval_ppl(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    model, tokenizer, text, run = load_pretrained(args)
    result = {**run, **evaluate_perplexity(model, tokenizer, text, args.seq_len, args.layers, args.windows,
                                           args.seeds, config)}
    print(f"{args.model} on {args.text}, {args.seq_len} tokens, {args.windows} window(s), seeds {args.seeds}")
    print(format_summary(result))
    if args.plot:
        plot_perplexity(result, args.plot, f"{args.model}, {args.text}, {args.seq_len} tokens")
    write_result(result, args.json)
    return 0


def eval_needle(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    model, tokenizer, text, run = load_pretrained(args)
    result = {**run, **evaluate_needle(model, tokenizer, text, args.lengths, args.depths, args.layers, config,
                                       args.seed)}
    print(format_grid(result))
    if args.plot:
        plot_needle(result, args.plot, f"needle in {args.text}, {args.model}")
    write_result(result, args.json)
    return 0
