"""The demo: a pretrained model on a real long text, exact attention against HyperAttention
in some layers, by perplexity and needle tests."""

from __future__ import annotations

from dataclasses import asdict

from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.needle import evaluate_needle
from hyperattn.eval.perplexity import evaluate_perplexity

EXACT = "last:0"


def check_layers(layers: str) -> None:
    """ValueError if the layer setting ``layers`` patches no layer: the demo compares exact
    attention with HyperAttention in some layers."""
    if layers in (EXACT, "first:0"):
        raise ValueError(f"layers {layers} patches no layer: the demo compares exact attention with "
                         "HyperAttention in some layers (e.g. last:15)")


def run_demo(model, tokenizer, text: str, seq_len: int, layers: str, depths: list[float],
             config: HyperAttentionConfig, seed: int = 0) -> dict:
    """Perplexity of the first ``seq_len`` tokens of ``text`` and needle tests at ``depths``,
    with exact attention and with HyperAttention in ``layers``."""
    check_layers(layers)
    specs = [EXACT, layers]
    return dict(seq_len=seq_len, layers=layers, config=asdict(config),
                perplexity=evaluate_perplexity(model, tokenizer, text, seq_len, specs, 1, [seed], config),
                needle=evaluate_needle(model, tokenizer, text, [seq_len], depths, specs, config, seed))


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
    if result["config"].get("query_blocks") == "rank":
        label += " (rank rule)"
    width = max(34, len(label))
    return "\n".join([
        f"{result['model']} on {result['text']}, {result['seq_len']} tokens, {result['card']}",
        f"{'attention':<{width}} {'perplexity':>10} {'forward s':>10} {'needles':>8} {'s/needle':>9}",
        f"{'exact':<{width}} {exact['mean_ppl']:>10.2f} {exact['mean_seconds']:>10.1f} "
        f"{needle_score(EXACT):>8} {needle_seconds(EXACT):>9.1f}",
        f"{label:<{width}} {patched['mean_ppl']:>10.2f} {patched['mean_seconds']:>10.1f} "
        f"{needle_score(result['layers']):>8} {needle_seconds(result['layers']):>9.1f}",
        f"perplexity change: {100 * (patched['mean_ppl'] / exact['mean_ppl'] - 1):+.1f}%   "
        f"total {result['seconds']:.0f} s",
    ])

