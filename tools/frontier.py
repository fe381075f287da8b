"""The accuracy-speed frontier: each config's output error against its speed-up over cuDNN.

    python tools/frontier.py --times option-cost.json --errors attention-smollm2.json attention-gemma3.json \
        --plot frontier.png --json frontier.json

Joins the times of ``tools/option_cost.py`` (one GPU, one length, head dim and pass) with the
errors of ``hyperattn eval attention`` (the evaluated config and every ``--compare`` config) by
config, on the fields that shape the approximation (``MATCH_FIELDS``: not ``min_seq_len``, which
an evaluation at 8k lowers to reach the levels a 131k call has). Prints one table per error
file, and draws one panel per file: every matched config a point, exact attention at (1, 0),
the exact top-k and streaming references of the same key budget as lines. Configs without a
time (or an error) are listed, not drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from hyperattn import HyperAttentionConfig

MATCH_FIELDS = ("block_size", "sample_size", "lsh_num_projs", "sampling", "exact_sinks", "exact_window", "exact_tail",
                "heavy_keys", "probe_queries", "query_blocks")


def config_key(config: dict) -> tuple:
    """The fields of a full config (``asdict(HyperAttentionConfig)``) that decide its pattern."""
    return tuple(config[name] for name in MATCH_FIELDS)


def timed_configs(times: dict, seq_len: int, head_dim: int, mode: str) -> tuple[float, dict[tuple, tuple[str, float]]]:
    """(cuDNN's ms, {config key: (option name, ms)}) of the causal rows of an ``option_cost`` result."""
    rows = [r for r in times["results"] if r["causal"] and (r["seq_len"], r["head_dim"], r["mode"]) ==
            (seq_len, head_dim, mode)]
    cudnn = [r["ms"] for r in rows if r["options"] == "cudnn"]
    if not cudnn:
        raise SystemExit(f"--times has no causal cuDNN row at {seq_len} tokens, head dim {head_dim}, {mode}")
    configs = {config_key(asdict(HyperAttentionConfig(exact_up_to=0, **r["config"]))): (r["options"], r["ms"])
               for r in rows if r["options"] != "cudnn"}
    return cudnn[0], configs


def evaluated_configs(errors: dict) -> dict[str, tuple[dict, float]]:
    """{label: (full config, mean error over the approximated positions)} of an ``eval attention`` result."""
    configs = {"evaluated": (errors["config"], errors["summary"]["hyper"])}
    for label, other in errors.get("compare", {}).items():
        configs[label] = (other["config"], other["summary"]["hyper"])
    return configs


def frontier(times: dict, errors: dict, seq_len: int, head_dim: int, mode: str) -> dict:
    """The joined points of one error file: label, option name, error, ms and speed-up per config."""
    cudnn_ms, timed = timed_configs(times, seq_len, head_dim, mode)
    points, missing = [], []
    for label, (config, error) in evaluated_configs(errors).items():
        match = timed.get(config_key(config))
        if match is None:
            missing.append(label)
            continue
        name, ms = match
        points.append(dict(label=label, options=name, error=error, ms=ms, speedup=cudnn_ms / ms))
    return dict(model=errors["model"], text=errors["text"], eval_seq_len=errors["seq_len"], cudnn_ms=cudnn_ms,
                topk=errors["summary"]["topk"], streaming=errors["summary"]["streaming"], points=points,
                missing=missing)


def format_table(panel: dict) -> str:
    lines = [f"{panel['model']}, {panel['text']} (errors at {panel['eval_seq_len']} tokens); cuDNN "
             f"{panel['cudnn_ms']:.2f} ms; top-k {panel['topk']:.3f}, streaming {panel['streaming']:.3f}",
             f"  {'config':<24} {'option set':<28} {'error':>7} {'ms':>8} {'vs cuDNN':>9}"]
    for p in sorted(panel["points"], key=lambda p: p["ms"]):
        lines.append(f"  {p['label']:<24} {p['options']:<28} {p['error']:7.3f} {p['ms']:8.2f} {p['speedup']:8.2f}x")
    if panel["missing"]:
        lines.append(f"  no time for: {', '.join(panel['missing'])}")
    return "\n".join(lines)


def plot(panels: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.scatter([1.0], [0.0], marker="s", color="black", label="exact (cuDNN)")
        for p in panel["points"]:
            ax.scatter(p["speedup"], p["error"], color="tab:blue")
            ax.annotate(p["label"], (p["speedup"], p["error"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(panel["topk"], linestyle="--", color="tab:green", label="exact top-k, same key budget")
        ax.axhline(panel["streaming"], linestyle=":", color="tab:red", label="streaming, same key budget")
        ax.set_xscale("log")
        ax.set_xlabel("speed-up against cuDNN")
        ax.set_ylabel("relative output error")
        ax.set_title(f"{panel['model']}, {panel['text']}")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", required=True, help="JSON of tools/option_cost.py")
    parser.add_argument("--errors", required=True, nargs="+", help="JSON files of hyperattn eval attention")
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--mode", default="fwd", choices=("fwd", "fwd_bwd"))
    parser.add_argument("--plot", metavar="PNG")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    with open(args.times) as f:
        times = json.load(f)
    panels = []
    for path in args.errors:
        with open(path) as f:
            panels.append(frontier(times, json.load(f), args.seq_len, args.head_dim, args.mode))
        print(format_table(panels[-1]))
    title = (f"causal {'forward' if args.mode == 'fwd' else 'forward+backward'}, {args.seq_len} tokens, head dim "
             f"{args.head_dim}, {times['card']}")
    if args.plot:
        plot(panels, args.plot, title)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="frontier", title=title, command=" ".join(sys.argv), times=args.times,
                           errors=args.errors, panels=panels), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
