"""``hyperattn eval ruler``: RULER-style retrieval tasks, exact vs HyperAttention."""

from __future__ import annotations

import argparse

from hyperattn.cli.arg_types import int_list, positive_int, seed, str_list
from hyperattn.cli.common import add_plan_arg, add_pretrained_args, load_pretrained, settings_with_plan, write_result
from hyperattn.cli.config_args import add_config_args, config_from_args
from hyperattn.eval.models import EVAL_CONFIG
from hyperattn.eval.ruler import TASKS, evaluate_ruler, format_summary


def task_list(text: str) -> list[str]:
    """An argparse type: comma-separated names of ``TASKS``."""
    tasks = str_list(text)
    if not tasks or any(task not in TASKS for task in tasks):
        raise argparse.ArgumentTypeError(f"expected comma-separated tasks of {', '.join(TASKS)}, got {text!r}")
    return tasks


def add_ruler_parser(evals) -> None:
    """Add ``ruler`` to the subcommands of ``hyperattn eval``."""
    parser = evals.add_parser(
        "ruler", help="RULER-style retrieval tasks: exact vs HyperAttention",
        description="Builds prompts of synthetic retrieval tasks (several keys, several values, variable tracking, "
        "common words) from a long text and scores each by the fraction of the answer's items in a greedy reply "
        "and by the answer's teacher-forced log-likelihood, for exact attention and each patched setting.")
    add_pretrained_args(parser)
    parser.add_argument("--tasks", type=task_list, default=list(TASKS), help="comma-separated (default: all)")
    parser.add_argument("--lengths", type=int_list, default=[4096, 8192],
                        help="comma-separated lengths in tokens: a prompt and the reply it leaves room for")
    parser.add_argument("--samples", type=positive_int, default=5, help="prompts per task and length")
    parser.add_argument("--layers", type=str_list, default=["last:0", "all"],
                        help="comma-separated settings; last:0 is exact attention")
    parser.add_argument("--seed", type=seed, default=0, help="of the prompts and of HyperAttention")
    add_plan_arg(parser)
    add_config_args(parser, EVAL_CONFIG)
    parser.set_defaults(run=eval_ruler)


def eval_ruler(args: argparse.Namespace) -> int:
    if args.plot:
        raise ValueError("eval ruler draws no plot; --plot is for eval ppl and eval needle")
    config = config_from_args(args)
    layers, plan = settings_with_plan(args)
    model, tokenizer, text, run = load_pretrained(args)
    result = {**run, **evaluate_ruler(model, tokenizer, text, args.tasks, args.lengths, args.samples, layers,
                                      config, args.seed, plan)}
    print(f"{args.model} on {args.text}, {args.samples} prompt(s) per task and length, seed {args.seed}")
    print(format_summary(result))
    write_result(result, args.json)
    return 0
