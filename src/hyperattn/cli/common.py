"""What several commands share: the device, the pretrained model and text flags and their
loading, and results written on request."""

from __future__ import annotations

import argparse
import sys

import torch

from hyperattn.eval.assets import load_text
from hyperattn.eval.models import PLAN_SETTING, load_model
from hyperattn.heads import HeadPlan
from hyperattn.runinfo import environment, write_json


def pick_device(name: str | None) -> torch.device:
    """``name``, or cuda if available, else cpu."""
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def add_pretrained_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2",
                        help="smollm2 (SmolLM2-135M-Instruct), gemma3 (Gemma-3-270m), a .gguf file or a model folder")
    parser.add_argument("--text", default="paul-graham",
                        help="paul-graham (the essays of the needle test), stdlib (Python source) or a text file")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="write a plot")


def add_plan_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", metavar="PATH",
                        help="also a head plan (hyperattn calibrate): its layers and heads as planned, the rest exact")


def settings_with_plan(args: argparse.Namespace) -> tuple[list[str], HeadPlan | None]:
    """The ``--layers`` settings, with ``PLAN_SETTING`` added when ``--plan`` is given, and the
    plan it loads (read before the model loads, so a bad file fails early)."""
    plan = HeadPlan.load(args.plan) if args.plan else None
    return args.layers + ([PLAN_SETTING] if plan else []), plan


def load_pretrained(args: argparse.Namespace):
    """(model, tokenizer, text, run) for the flags of ``add_pretrained_args``; ``run``: the
    model, the text and the ``environment``, recorded with the results."""
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    text = load_text(args.text)
    print(f"loading {args.model} on {device} ({str(dtype)[6:]})", file=sys.stderr)
    model, tokenizer = load_model(args.model, device, dtype)
    run = dict(model=args.model, text=args.text, **environment(device, args.command_line))
    return model, tokenizer, text, run


def write_result(result: dict, path: str | None) -> None:
    """Write ``result`` as JSON to ``path``, if given, and say so."""
    if path:
        write_json(result, path)
        print(f"wrote {path}")
