"""``hyperattn eval ppl``, ``hyperattn eval needle`` and ``hyperattn eval attention``."""

from __future__ import annotations

import argparse
import re

from hyperattn.cli.arg_types import float_list, int_list, numbers, positive_int, seed, seed_list, str_list
from hyperattn.cli.common import add_plan_arg, add_pretrained_args, load_pretrained, settings_with_plan, write_result
from hyperattn.cli.config_args import add_config_args, compared_configs, config_from_args, labelled_overrides
from hyperattn.cli.ruler import add_ruler_parser
from hyperattn.eval.attention import evaluate_attention, plot_attention_errors
from hyperattn.eval.attention import format_summary as format_attention_summary
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
    add_plan_arg(ppl)
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
    add_ruler_parser(evals)

    attention = evals.add_parser(
        "attention", help="output error of HyperAttention per layer and head, beside top-k and streaming",
        description="Captures the attention inputs (q, k, v after RoPE and norms) of a pretrained causal LM on "
        "windows of a long text, then measures per layer and query head the relative error ||out - exact|| / "
        "||exact|| of HyperAttention's output against exact causal attention, beside two references with the same "
        "key budget per query: top-k (each query attends only to its BUDGET highest-scoring keys, those that keep "
        "the most attention mass) and streaming (the first STREAMING_SINKS keys and a local window). Errors are "
        "given over the positions HyperAttention approximates (after its first diagonal leaf) and over all "
        "positions.")
    add_pretrained_args(attention)
    attention.add_argument("--seq-len", type=positive_int, default=8192)
    attention.add_argument("--layers", type=layer_selection, default="all",
                           help="all, last:K, first:K or comma-separated layer indices (default: all)")
    attention.add_argument("--windows", type=positive_int, default=1,
                           help="consecutive windows from the start of the text")
    attention.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated seeds of HyperAttention")
    attention.add_argument("--budget", type=positive_int,
                           help="keys per query of the references (default: block_size, or selected_blocks * "
                                "selected_block_size, + sample_size + heavy_keys + exact_sinks)")
    attention.add_argument("--streaming-sinks", type=numbers(int, 0), default=16,
                           help="first keys of the streaming reference; the rest of the budget is its local window "
                           "(default: %(default)s)")
    attention.add_argument("--include-sliding", action="store_true",
                           help="also measure sliding-window layers, as full causal attention (default: skipped)")
    attention.add_argument("--compare", type=labelled_overrides, action="append", metavar="LABEL:FIELD=VALUE,...",
                           help="another config measured on the same inputs and references: the flags' config with "
                                "these fields changed, e.g. heavy:heavy_keys=448,block_size=64 (repeatable)")
    add_config_args(attention, EVAL_CONFIG)
    attention.set_defaults(run=eval_attention)


def layer_selection(text: str) -> str | list[int]:
    """``all``, ``last:K`` and ``first:K`` as they are; comma-separated indices as a list."""
    if text == "all" or re.fullmatch(r"(last|first):\d+", text):
        return text
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected all, last:K, first:K or comma-separated layer indices, got {text!r}") from None


def _evaluate(args: argparse.Namespace, evaluate, show, plot, title: str) -> int:
    """Load the model and text, run ``evaluate(model, tokenizer, text, config)``, print ``show(result)``,
    plot and write the result as asked."""
    config = config_from_args(args)
    model, tokenizer, text, run = load_pretrained(args)
    result = {**run, **evaluate(model, tokenizer, text, config)}
    print(show(result))
    if args.plot:
        plot(result, args.plot, title)
    write_result(result, args.json)
    return 0


def _windows_header(args: argparse.Namespace) -> str:
    return f"{args.model} on {args.text}, {args.seq_len} tokens, {args.windows} window(s), seeds {args.seeds}"


def eval_ppl(args: argparse.Namespace) -> int:
    layers, plan = settings_with_plan(args)
    return _evaluate(
        args,
        lambda model, tokenizer, text, config: evaluate_perplexity(model, tokenizer, text, args.seq_len, layers,
                                                                   args.windows, args.seeds, config, plan),
        lambda result: f"{_windows_header(args)}\n{format_summary(result)}",
        plot_perplexity, f"{args.model}, {args.text}, {args.seq_len} tokens")


def eval_needle(args: argparse.Namespace) -> int:
    return _evaluate(
        args,
        lambda model, tokenizer, text, config: evaluate_needle(model, tokenizer, text, args.lengths, args.depths,
                                                               args.layers, config, args.seed),
        format_grid, plot_needle, f"needle in {args.text}, {args.model}")


def eval_attention(args: argparse.Namespace) -> int:
    return _evaluate(
        args,
        lambda model, tokenizer, text, config: evaluate_attention(
            model, tokenizer, text, args.seq_len, args.layers, args.windows, args.seeds, config, args.budget,
            args.streaming_sinks, args.include_sliding, compared_configs(args)),
        lambda result: f"{_windows_header(args)}\n{format_attention_summary(result)}",
        plot_attention_errors, f"{args.model}, {args.text}, {args.seq_len} tokens")
