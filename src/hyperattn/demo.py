"""``hyperattn demo``: a pretrained model on a real long text, exact attention vs HyperAttention."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from hyperattn.eval.cli import environment, load, write_json


def format_demo(result: dict) -> str:
    ppl = {s["num_patched"]: s for s in result["perplexity"]["summary"]}
    exact, patched = ppl[0], next(s for n, s in ppl.items() if n)
    needles = result["needle"]["rows"]

    def needle_score(spec):
        cells = [r for r in needles if r["layers"] == spec]
        return f"{sum(r['correct'] for r in cells)}/{len(cells)}"

    def needle_seconds(spec):
        cells = [r["seconds"] for r in needles if r["layers"] == spec]
        return sum(cells) / len(cells)

    label = "HyperAttention " + result["layers"]
    if result["config"]["exact_sinks"]:
        label += f" + {result['config']['exact_sinks']} sinks"
    if result["config"].get("exact_tail"):
        label += f" + tail {result['config']['exact_tail']}"
    width = max(34, len(label))
    return "\n".join([
        f"{result['model']} on {result['text']}, {result['seq_len']} tokens, {result['device']}",
        f"{'attention':<{width}} {'perplexity':>10} {'forward s':>10} {'needles':>8} {'s/needle':>9}",
        f"{'exact':<{width}} {exact['mean_ppl']:>10.2f} {exact['mean_seconds']:>10.1f} "
        f"{needle_score('last:0'):>8} {needle_seconds('last:0'):>9.1f}",
        f"{label:<{width}} {patched['mean_ppl']:>10.2f} {patched['mean_seconds']:>10.1f} "
        f"{needle_score(result['layers']):>8} {needle_seconds(result['layers']):>9.1f}",
        f"perplexity change: {100 * (patched['mean_ppl'] / exact['mean_ppl'] - 1):+.1f}%   "
        f"total {result['seconds']:.0f} s",
    ])


def main(args) -> int:
    from hyperattn.cli import config_from_args
    from hyperattn.eval.needle import evaluate_needle, plot_needle
    from hyperattn.eval.perplexity import evaluate_perplexity, plot_perplexity

    start = time.perf_counter()
    config = config_from_args(args)
    if args.layers in ("last:0", "first:0"):
        raise ValueError(f"--layers {args.layers} patches no layer: the demo compares exact attention with "
                         "HyperAttention in some layers (e.g. last:15)")
    model, tokenizer, text, device = load(args)
    specs = ["last:0", args.layers]
    perplexity = evaluate_perplexity(model, tokenizer, text, args.seq_len, specs, 1, [args.seed], config)
    needle = evaluate_needle(model, tokenizer, text, [args.seq_len], args.depths, specs, config, args.seed)
    result = dict(model=args.model, text=args.text, seq_len=args.seq_len, layers=args.layers, config=asdict(config),
                  **environment(device, args.command_line), perplexity=perplexity, needle=needle,
                  seconds=time.perf_counter() - start)
    print(format_demo(result))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        plot_perplexity(perplexity, os.path.join(args.out, "demo-perplexity.png"),
                        f"{args.model}, {args.text}, {args.seq_len} tokens")
        plot_needle(needle, os.path.join(args.out, "demo-needle.png"), f"needle, {args.model}, {args.seq_len} tokens")
        write_json(result, os.path.join(args.out, "demo.json"))
    write_json(result, args.json)
    return 0
