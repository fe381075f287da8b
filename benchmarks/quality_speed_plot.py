"""Issue 5's trade-off plot: perplexity increase against attention time, one point per config.

    python benchmarks/quality_speed_plot.py --out benchmarks/results/2026-11-29-quality-speed.png

Reads measured results only (``benchmarks/results``): attention time from
``benchmarks/option_cost.py`` (causal forward at 131k tokens, and cuDNN's exact attention from
``hyperattn bench attention`` in the same session) and perplexities from ``hyperattn eval ppl``
JSONs. A config appears for a model only where its perplexity was measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TIMES = "2026-11-29-option-cost-d64-h200-7e00bb5.json"
EXACT_TIME = "2026-11-29-attention-d64-default-h200-9657c32.json"
# model: (label, {config name: (ppl JSON, layers)}, exact ppl JSON); config names are option_cost's
PERPLEXITIES = {
    "SmolLM2-135M, Paul Graham 8k, last 15 layers (CPU)": (
        {"paper": ("2026-11-27-ppl-smollm2-paul-graham-8k-cpu.json", "last:15"),
         "sinks 16": ("2026-11-27-ablation-smollm2-paul-graham-sinks16-8k-cpu.json", "last:15"),
         "sinks 16 + tail 64": ("2026-11-29-ablation-smollm2-paul-graham-default-8k-cpu.json", "last:15")},
        ("2026-11-27-ppl-smollm2-paul-graham-8k-cpu.json", "last:0")),
    "Gemma-3-270m, Paul Graham 32k, 3 global layers (H200)": (
        {"paper": ("2026-11-29-ppl-gemma3-paul-graham-32k-h200.json", "all"),
         "sinks 16 + tail 64": ("2026-11-29-ablation-gemma3-paul-graham-sinks16-tail64-32k-h200.json", "all")},
        ("2026-11-29-ppl-gemma3-paul-graham-32k-h200.json", "last:0")),
}


def _ppl(name: str, layers: str) -> float:
    summary = json.loads((RESULTS / name).read_text())["summary"]
    return next(row["mean_ppl"] for row in summary if row["layers"] == layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--out", default=str(RESULTS / "2026-11-29-quality-speed.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = {row["options"]: row["ms"] for row in json.loads((RESULTS / TIMES).read_text())["results"]
             if row["seq_len"] == args.seq_len and row["mode"] == "fwd" and row["causal"]}
    exact = json.loads((RESULTS / EXACT_TIME).read_text())
    times["exact (cuDNN)"] = next(row["ms"] for row in exact["results"] if row["seq_len"] == args.seq_len
                                  and row["mode"] == "fwd" and row["causal"] and row["impl"] == "cudnn")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, (configs, exact_ref)), marker, dy in zip(PERPLEXITIES.items(), "os", (4, -12)):
        base = _ppl(*exact_ref)
        points = [("exact (cuDNN)", 0.0)] + [(name, 100 * (_ppl(*ref) / base - 1)) for name, ref in configs.items()]
        xs, ys = [times[name] for name, _ in points], [y for _, y in points]
        ax.plot(xs, ys, marker, label=model)
        for (name, y), x in zip(points, xs):
            if name == "exact (cuDNN)" and marker != "o":
                continue  # one label for the shared point
            # the paper's and the sinks' labels to the left, clear of the slower configs' labels
            left = name in ("paper", "sinks 16")
            label = name + " (default)" if name == "sinks 16 + tail 64" else name
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(-5 if left else 5, dy), fontsize=8,
                        ha="right" if left else "left")
        print(model, [(name, round(times[name], 2), round(y, 1)) for name, y in points])
    ax.set_xscale("log")
    ax.set_xlim(min(times.values()) * 0.7, max(times.values()) * 1.6)
    ax.set_xlabel(f"causal attention forward at {args.seq_len} tokens, 32 heads, d 64, H200 (ms, log)")
    ax.set_ylabel("perplexity increase over exact attention (%)")
    ax.set_title("HyperAttention: quality against speed, one point per config")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
