"""``hyperattn calibrate``."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from hyperattn.calibration import GRANULARITIES, calibrate, format_calibration, plot_calibration
from hyperattn.cli.arg_types import named_number, numbers, positive_int, seed
from hyperattn.cli.common import add_pretrained_args, load_pretrained, write_result
from hyperattn.cli.config_args import add_config_args, compared_configs, config_from_args, labelled_overrides
from hyperattn.cli.eval import layer_selection
from hyperattn.cli.ruler import task_list
from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.models import EVAL_CONFIG
from hyperattn.eval.perplexity import token_windows
from hyperattn.eval.ruler import TASKS, build_samples


def add_calibrate_parser(commands) -> None:
    parser = commands.add_parser(
        "calibrate", help="a head plan: per query head, the cheapest candidate config within a perplexity budget",
        description="Measures every query head's output error under each candidate config on the first SEQ_LEN "
        "tokens of the text (one exact run, attention inputs captured), then bisects over the errors for the plan "
        "that approximates the most heads, each by the first candidate it tolerates, while the perplexity of those "
        "tokens stays within BUDGET of exact attention's. Writes the plan for patch_model(model, plan=...).")
    add_pretrained_args(parser)
    parser.add_argument("--seq-len", type=positive_int, default=8192)
    parser.add_argument("--layers", type=layer_selection, default="all",
                        help="layers that may be approximated: all, last:K, first:K or comma-separated indices")
    parser.add_argument("--candidate", type=labelled_overrides, action="append", metavar="NAME:FIELD=VALUE,...",
                        help="a candidate config, cheapest first: the flags' config with these fields changed "
                             "(repeatable; default: the flags' config alone, named 'hyper')")
    parser.add_argument("--budget", type=numbers(float, 0.0, what="number"), default=0.01,
                        help="allowed relative perplexity increase (default: %(default)s, +1%%)")
    parser.add_argument("--steps", type=positive_int, default=6, help="patched model runs of the bisection")
    parser.add_argument("--per", choices=GRANULARITIES, default="head",
                        help="a treatment per query head, or per whole layer (the layer choice the same "
                             "measurements give, to compare with)")
    parser.add_argument("--cost", type=named_number, action="append", metavar="NAME=FRACTION",
                        help="a candidate's attention time relative to exact attention's (e.g. from hyperattn bench "
                             "attention at the length of interest; repeatable): the report gives each plan's "
                             "attention time")
    parser.add_argument("--task-budget", type=numbers(float, 0.0, what="number"), metavar="NATS",
                        help="also keep each retrieval task's mean answer log-likelihood (eval ruler's tasks, built "
                             "from the text at SEQ_LEN tokens with prompts of their own) within NATS per token of "
                             "exact attention's (e.g. 0.05; default: perplexity alone)")
    parser.add_argument("--task-samples", type=positive_int, default=1,
                        help="prompts per task with --task-budget (default: %(default)s)")
    parser.add_argument("--tasks", type=task_list, default=list(TASKS),
                        help="the tasks --task-budget holds, comma-separated (default: all)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--include-sliding", action="store_true", help="sliding-window layers may be approximated")
    parser.add_argument("--out", metavar="PATH", required=True, help="write the head plan (JSON) here")
    add_config_args(parser, EVAL_CONFIG)
    parser.set_defaults(run=run_calibrate)


def candidates_from_args(args: argparse.Namespace) -> dict[str, HyperAttentionConfig]:
    """{name: config} of the ``--candidate`` flags, in order (the flags' config alone without any)."""
    return compared_configs(args, "--candidate") if args.candidate else {"hyper": config_from_args(args)}


def run_calibrate(args: argparse.Namespace) -> int:
    candidates = candidates_from_args(args)  # before the model loads
    unknown = sorted({name for name, _ in args.cost or []} - set(candidates))
    if unknown:
        raise SystemExit(f"hyperattn calibrate: error: --cost names {unknown}, not candidates "
                         f"(candidates: {list(candidates)})")
    model, tokenizer, text, run = load_pretrained(args)
    input_ids = token_windows(tokenizer, text, args.seq_len, 1)[0]
    tasks = ()
    if args.task_budget is not None:  # prompts of their own seed: eval ruler's (seed 0, 1, ...) stay unseen
        tasks = list(build_samples(tokenizer, text, args.tasks, [args.seq_len], args.task_samples,
                                   f"calibration/{args.seed}").values())
    result = calibrate(model, input_ids, candidates, args.budget, args.layers, args.seed, args.steps,
                       args.include_sliding, model_name=args.model, per=args.per,
                       costs=dict(args.cost) if args.cost else None, tasks=tasks,
                       task_budget=args.task_budget or 0.0)
    print(format_calibration(result))
    if args.plot:
        plot_calibration(result, args.plot, f"{args.model}, {args.text}, {args.seq_len} tokens")
    result.plan.save(args.out)
    print(f"wrote {args.out}")
    write_result(dict(run, plan=result.plan.to_dict(), errors={name: {str(layer): heads for layer, heads in
                                                                      per_layer.items()}
                                                               for name, per_layer in result.errors.items()},
                      hardness={name: {str(layer): heads for layer, heads in per_layer.items()}
                                for name, per_layer in result.hardness.items()},
                      predicts=result.predicts, steps=result.steps,
                      candidates={name: asdict(c) for name, c in candidates.items()}),
                 args.json)
    return 0
