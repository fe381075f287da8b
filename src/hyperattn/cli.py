"""Command line: ``hyperattn demo | eval ppl | eval needle | bench attention | bench model``."""

from __future__ import annotations

import argparse
import sys


def _numbers(kind, low, high=None, many=False, what="integer"):
    """An argparse type: one number (or a comma-separated list) of ``kind`` in [low, high]."""
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    article = "an " if what[0] in "aeiou" else "a "
    expected = f"{'comma-separated ' if many else article}{what}{'s' if many else ''} {bounds}"

    def parse(text: str):
        try:
            values = [kind(part) for part in text.split(",") if part] if many else [kind(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not values or min(values) < low or (high is not None and max(values) > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return values if many else values[0]

    return parse


_positive_int = _numbers(int, 1)
_seed = _numbers(int, 0, what="seed")
_seed_list = _numbers(int, 0, many=True, what="seed")
_int_list = _numbers(int, 1, many=True)
_float_list = _numbers(float, 0, 1, many=True, what="number")


def _str_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def _add_config_args(parser: argparse.ArgumentParser, measures_quality: bool = False) -> None:
    """Config flags, defaulting to the library's config. Quality commands default to
    --exact-up-to 0, so that every input above --min-seq-len is approximated; speed commands keep
    the library default. The paper's algorithm: --exact-sinks 0 --exact-tail 0."""
    from hyperattn.config import HyperAttentionConfig
    from hyperattn.eval.models import EVAL_CONFIG

    paper = "the paper's: --exact-sinks 0 --exact-tail 0"
    group = parser.add_argument_group(f"HyperAttention (defaults: the library's, with --exact-up-to 0; {paper})"
                                      if measures_quality else f"HyperAttention (defaults: the library's; {paper})")
    group.add_argument("--block-size", type=int, default=256)
    group.add_argument("--sample-size", type=int, default=256)
    group.add_argument("--lsh-num-projs", type=int, default=7)
    group.add_argument("--min-seq-len", type=int, default=4096)
    group.add_argument("--sampling", choices=["uniform", "value_norm"], default="uniform")
    group.add_argument("--exact-sinks", type=int, default=HyperAttentionConfig.exact_sinks, metavar="S",
                       help="every query attends exactly to the first S keys (default %(default)s)")
    group.add_argument("--exact-window", type=int, default=0, metavar="W",
                       help="causal: every query attends exactly to the W keys before it (reference executor only)")
    group.add_argument("--exact-tail", type=int, default=HyperAttentionConfig.exact_tail, metavar="T",
                       help="the last T queries attend exactly to every key they see (default %(default)s)")
    default_up_to = (EVAL_CONFIG if measures_quality else HyperAttentionConfig).exact_up_to
    group.add_argument("--exact-up-to", type=int, default=default_up_to, metavar="N",
                       help="attention costing no more than causal attention over N tokens runs exactly "
                       f"(default %(default)s; the library's is {HyperAttentionConfig.exact_up_to}, below which cuDNN "
                       "is faster on H100/H200); 0: only --min-seq-len decides, as in the paper")


def config_from_args(args):
    from hyperattn.config import HyperAttentionConfig

    return HyperAttentionConfig(block_size=args.block_size, sample_size=args.sample_size,
                                lsh_num_projs=args.lsh_num_projs, min_seq_len=args.min_seq_len, sampling=args.sampling,
                                exact_sinks=args.exact_sinks, exact_window=args.exact_window,
                                exact_tail=args.exact_tail, exact_up_to=args.exact_up_to,
                                impl="reference" if args.exact_window else "auto")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2",
                        help="smollm2 (SmolLM2-135M-Instruct), gemma3 (Gemma-3-270m), a .gguf file or a model folder")
    parser.add_argument("--text", default="paul-graham",
                        help="paul-graham (the essays of the needle test), stdlib (Python source) or a text file")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="write a plot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperattn", description="HyperAttention: near-linear-time attention.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="SmolLM2 on Paul Graham's essays: perplexity and needle tests, exact vs HyperAttention",
        description="Loads SmolLM2-135M-Instruct (from PyPI, cached), measures perplexity on the first SEQ_LEN "
        "tokens of Paul Graham's essays with exact attention and with HyperAttention in the last 15 layers, hides "
        "a needle at a few depths and asks for it, and prints a table with timings (and plots with --out).")
    _add_model_args(demo)
    demo.add_argument("--seq-len", type=_positive_int, default=8192)
    demo.add_argument("--layers", default="last:15", help="layers patched: all, last:K, first:K")
    demo.add_argument("--depths", type=_float_list, default=[0.1, 0.5, 0.9], help="needle depths in [0, 1]")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.add_argument("--out", metavar="DIR", help="write demo.json and plots to this folder")
    _add_config_args(demo, measures_quality=True)

    evaluate = commands.add_parser("eval", help="quality of pretrained models with HyperAttention")
    evals = evaluate.add_subparsers(dest="eval", required=True)
    ppl = evals.add_parser(
        "ppl", help="perplexity: exact vs HyperAttention in some layers",
        description="Perplexity of a pretrained causal LM on windows of a long text, exact and with "
        "HyperAttention in the given layers, per quarter of the window, over several windows and seeds.")
    _add_model_args(ppl)
    ppl.add_argument("--seq-len", type=_positive_int, default=8192)
    ppl.add_argument("--layers", type=_str_list, default=["last:0", "last:8", "last:15", "all"],
                     help="comma-separated settings; last:0 is exact attention")
    ppl.add_argument("--windows", type=_positive_int, default=1, help="consecutive windows from the start of the text")
    ppl.add_argument("--seeds", type=_seed_list, default=[0], help="comma-separated seeds")
    _add_config_args(ppl, measures_quality=True)
    needle = evals.add_parser(
        "needle", help="needle in a haystack: exact vs HyperAttention",
        description="Hides a 5-digit number at each depth of a long text and asks for it by greedy decoding; "
        "prints an accuracy grid for exact attention and each patched setting.")
    _add_model_args(needle)
    needle.add_argument("--lengths", type=_int_list, default=[4096, 8192])
    needle.add_argument("--depths", type=_float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    needle.add_argument("--layers", type=_str_list, default=["last:0", "last:15"])
    needle.add_argument("--seed", type=_seed, default=0)
    _add_config_args(needle, measures_quality=True)

    bench = commands.add_parser("bench", help="speed benchmarks (CUDA)")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    attn = bench_kinds.add_parser(
        "attention",
        help="one attention layer: HyperAttention against PyTorch SDPA (flash, cuDNN)",
        description="Times forward and forward+backward of HyperAttention and PyTorch SDPA (flash and cuDNN "
        "backends) in one process on one CUDA card, batch 1, bf16: medians of triton.testing.do_bench, peak "
        "memory, speed-up against cuDNN. Prints a table; writes JSON and a log-log plot on request.",
    )
    attn.add_argument("--seq-lens", type=_int_list, default=[4096, 8192, 16384, 32768, 65536, 131072],
                      help="lengths timed for every implementation")
    attn.add_argument("--long-seq-lens", type=_int_list, default=[262144, 524288, 1048576],
                      help="lengths timed for HyperAttention alone")
    attn.add_argument("--head-dims", type=_int_list, default=[64, 128])
    attn.add_argument("--heads", type=_positive_int, default=32)
    attn.add_argument("--kv-heads", type=_positive_int,
                      help="key/value heads (GQA; a divisor of --heads; default: --heads); SDPA gets them repeated")
    attn.add_argument("--causal", choices=["both", "causal", "non-causal"], default="both")
    attn.add_argument("--modes", type=_str_list, default=["fwd", "fwd_bwd"], help="comma-separated: fwd, fwd_bwd")
    attn.add_argument("--json", metavar="PATH", help="write the results as JSON")
    attn.add_argument("--plot", metavar="PNG", help="write a log-log plot of time against length")
    attn.add_argument("--plot-only", metavar="JSON", help="redraw table and plot from a saved result; no timing")
    _add_config_args(attn)
    from hyperattn.bench.model import ARCHS

    model = bench_kinds.add_parser(
        "model",
        help="prefill of a 7B/8B-class model (random weights, a few layers): exact vs HyperAttention",
        description="Builds a model with random weights and the dimensions of a real checkpoint ("
        + ", ".join(f"{arch}: {name}" for arch, (_, name, _) in ARCHS.items())
        + ") and times one prefill (batch 1, bf16, last-token logits) with exact SDPA attention and with "
        "HyperAttention in some layers, at each length: medians of triton.testing.do_bench on one CUDA card.",
    )
    model.add_argument("--arch", choices=sorted(ARCHS), default="llama")
    model.add_argument("--seq-len", "--seq-lens", dest="seq_lens", type=_int_list, default=[32768, 65536, 131072],
                       help="comma-separated lengths")
    model.add_argument("--num-layers", type=_positive_int, default=4, help="decoder layers built")
    model.add_argument("--layers", type=_str_list, default=["exact", "half", "all"],
                       help="comma-separated settings: exact, half (the last half), all, last:K, first:K")
    model.add_argument("--seed", type=_seed, default=0)
    model.add_argument("--device", help="torch device (default: cuda; another device only for smoke runs)")
    model.add_argument("--json", metavar="PATH", help="write the results as JSON")
    model.add_argument("--plot", metavar="PNG", help="write a log-log plot of prefill time against length")
    _add_config_args(model)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["hyperattn", *argv])  # recorded with every result
    if args.command == "demo":
        from hyperattn.demo import main as run
    elif args.command == "eval":
        from hyperattn.eval.cli import main as run
    elif args.bench == "attention":
        from hyperattn.bench.attention import main as run
    else:
        from hyperattn.bench.model import main as run
    from hyperattn.eval.assets import AssetError

    try:
        return run(args)
    except (TypeError, ValueError, AssetError) as error:
        print(f"hyperattn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
