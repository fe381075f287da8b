"""The accuracy-speed frontier: each config's output error against its speed-up over cuDNN.

    python tools/frontier.py --times option-cost.json [more.json ...] --errors attention-smollm2.json attention-gemma3.json \
        --plot frontier.png --json frontier.json

Joins the times of ``tools/option_cost.py`` (one GPU, one length, head dim and pass) with the
errors of ``hyperattn eval attention`` (the evaluated config and every ``--compare`` config) by
config, on the fields that shape the approximation (``MATCH_FIELDS``: not ``min_seq_len``, which
an evaluation at 8k lowers to reach the levels a 131k call has). Prints one table per model and
text (error files of the same model, text and length share one) and draws one panel per table:
every matched config a point, exact attention at (1, 0), the exact top-k and streaming references
of each evaluated key budget as lines. Each speed-up is against the cuDNN time of its own times
file (one process); a config in several times files takes the last one's. Configs without a time
are listed, not drawn.
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


def timed_configs(times_docs: list[dict], seq_len: int, head_dim: int, mode: str) -> dict[tuple, dict]:
    """{config key: dict(options, ms, speedup)} of the causal rows of ``option_cost`` results at one
    case; each speed-up is against the cuDNN row of its own file (same process), and a config in
    several files takes the last file's row."""
    configs = {}
    for times in times_docs:
        rows = [r for r in times["results"] if r["causal"] and (r["seq_len"], r["head_dim"], r["mode"]) ==
                (seq_len, head_dim, mode)]
        cudnn = [r["ms"] for r in rows if r["options"] == "cudnn"]
        for r in rows if cudnn else ():
            if r["options"] != "cudnn":
                key = config_key(asdict(HyperAttentionConfig(exact_up_to=0, **r["config"])))
                configs[key] = dict(options=r["options"], ms=r["ms"], speedup=cudnn[0] / r["ms"])
    if not configs:
        raise SystemExit(f"--times has no causal cuDNN row at {seq_len} tokens, head dim {head_dim}, {mode}")
    return configs


def evaluated_configs(errors: dict) -> dict[str, tuple[dict, float]]:
    """{label: (full config, mean error over the approximated positions)} of an ``eval attention`` result."""
    configs = {"evaluated": (errors["config"], errors["summary"]["hyper"])}
    for label, other in errors.get("compare", {}).items():
        configs[label] = (other["config"], other["summary"]["hyper"])
    return configs


def frontier(times_docs: list[dict], error_docs: list[dict], seq_len: int, head_dim: int, mode: str) -> list[dict]:
    """One panel per (model, text, evaluated length) of the error files: each config's error (the
    first file that has it), option name, ms and speed-up, and the exact top-k and streaming
    references of each key budget evaluated."""
    timed = timed_configs(times_docs, seq_len, head_dim, mode)
    panels = {}
    for errors in error_docs:
        panel = panels.setdefault((errors["model"], errors["text"], errors["seq_len"]), dict(
            model=errors["model"], text=errors["text"], eval_seq_len=errors["seq_len"], references=[], points=[],
            missing=[], seen=set()))
        summary = errors["summary"]
        if all(ref["budget"] != errors["budget"] for ref in panel["references"]):
            panel["references"].append(dict(budget=errors["budget"], topk=summary["topk"],
                                            streaming=summary["streaming"]))
        for label, (config, error) in evaluated_configs(errors).items():
            key = config_key(config)
            if key in panel["seen"]:
                continue
            panel["seen"].add(key)
            match = timed.get(key)
            if match is None:
                panel["missing"].append(label)
            else:
                panel["points"].append(dict(label=match["options"], error=error, ms=match["ms"],
                                            speedup=match["speedup"]))
    for panel in panels.values():
        del panel["seen"]
    return list(panels.values())


def format_table(panel: dict) -> str:
    references = "; ".join(f"{r['budget']} keys: top-k {r['topk']:.3f}, streaming {r['streaming']:.3f}"
                           for r in panel["references"])
    lines = [f"{panel['model']}, {panel['text']} (errors at {panel['eval_seq_len']} tokens); {references}",
             f"  {'option set':<28} {'error':>7} {'ms':>8} {'vs cuDNN':>9}"]
    for p in sorted(panel["points"], key=lambda p: p["ms"]):
        lines.append(f"  {p['label']:<28} {p['error']:7.3f} {p['ms']:8.2f} {p['speedup']:8.2f}x")
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
        for i, p in enumerate(sorted(panel["points"], key=lambda p: p["error"])):
            default = p["label"] == "default"
            ax.scatter(p["speedup"], p["error"], color="tab:orange" if default else "tab:blue",
                       marker="*" if default else "o", s=120 if default else 30,
                       label="the library's default" if default else None)
            ax.annotate(p["label"], (p["speedup"], p["error"]), textcoords="offset points",
                        xytext=(-8, 6 + 9 * (i % 2)), ha="right", fontsize=7)
        for i, ref in enumerate(panel["references"]):
            shade = 1.0 - 0.4 * i
            ax.axhline(ref["topk"], linestyle="--", color="tab:green", alpha=shade,
                       label=f"exact top-{ref['budget']} keys")
            ax.axhline(ref["streaming"], linestyle=":", color="tab:red", alpha=shade,
                       label=f"streaming, {ref['budget']} keys")
        ax.set_xlim(0, 1.1 * max([p["speedup"] for p in panel["points"]] + [1.0]))
        ax.set_xlabel("speed-up against cuDNN")
        ax.set_ylabel("relative output error")
        ax.set_title(f"{panel['model']}, {panel['text']}")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", required=True, nargs="+",
                        help="JSON files of tools/option_cost.py (a config in several: the last file's row)")
    parser.add_argument("--errors", required=True, nargs="+", help="JSON files of hyperattn eval attention")
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--mode", default="fwd", choices=("fwd", "fwd_bwd"))
    parser.add_argument("--plot", metavar="PNG")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    times_docs, error_docs = [], []
    for paths, docs in ((args.times, times_docs), (args.errors, error_docs)):
        for path in paths:
            with open(path) as f:
                docs.append(json.load(f))
    panels = frontier(times_docs, error_docs, args.seq_len, args.head_dim, args.mode)
    for panel in panels:
        print(format_table(panel))
    cards = ", ".join(sorted({times["card"] for times in times_docs}))
    title = (f"causal {'forward' if args.mode == 'fwd' else 'forward+backward'}, {args.seq_len} tokens, head dim "
             f"{args.head_dim}, {cards}")
    if args.plot:
        plot(panels, args.plot, title)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="frontier", title=title, command=" ".join(sys.argv), times=args.times,
                           errors=args.errors, panels=panels), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
