"""``hyperattn eval ppl`` and ``hyperattn eval needle``."""

from __future__ import annotations

import datetime
import json
import platform
import sys

import torch


def pick_device(name: str | None) -> torch.device:
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device, command_line: str) -> dict:
    """Where and how a result was measured."""
    import transformers

    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return dict(device=card, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                command=command_line)


def load(args):
    """(model, tokenizer, text, device) for an eval command's --model, --text, --device."""
    from hyperattn.eval.assets import load_text
    from hyperattn.eval.models import load_model

    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    text = load_text(args.text)
    print(f"loading {args.model} on {device} ({str(dtype)[6:]})", file=sys.stderr)
    model, tokenizer = load_model(args.model, device, dtype)
    return model, tokenizer, text, device


def write_json(result: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")


def main(args) -> int:
    from hyperattn.cli import config_from_args

    config = config_from_args(args)
    model, tokenizer, text, device = load(args)
    meta = dict(model=args.model, text=args.text, **environment(device, args.command_line))
    if args.eval == "ppl":
        from hyperattn.eval.perplexity import evaluate_perplexity, format_summary, plot_perplexity

        seeds = args.seeds
        result = evaluate_perplexity(model, tokenizer, text, args.seq_len, args.layers, args.windows, seeds, config)
        result = {**meta, **result}
        print(f"{args.model} on {args.text}, {args.seq_len} tokens, {args.windows} window(s), seeds {seeds}")
        print(format_summary(result))
        if args.plot:
            plot_perplexity(result, args.plot, f"{args.model}, {args.text}, {args.seq_len} tokens")
    else:
        from hyperattn.eval.needle import evaluate_needle, format_grid, plot_needle

        result = evaluate_needle(model, tokenizer, text, args.lengths, args.depths, args.layers, config, args.seed)
        result = {**meta, **result}
        print(format_grid(result))
        if args.plot:
            plot_needle(result, args.plot, f"needle in {args.text}, {args.model}")
    write_json(result, args.json)
    return 0
