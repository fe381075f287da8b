"""Exact-attention perplexity of a model as this machine's transformers loads it: a check that
two machines (or two transformers releases) build the same function from one checkpoint.

    python benchmarks/model_load_check.py --model gemma3 --seq-len 1024 --dtypes float32
    PYTHONPATH=/path/to/other/transformers python benchmarks/model_load_check.py ...   # another release

Prints the transformers version, then perplexity on the first window of the text per dtype.
"""

from __future__ import annotations

import argparse
import math

import torch
import transformers

from hyperattn.eval.assets import load_text
from hyperattn.eval.models import load_model
from hyperattn.eval.perplexity import token_windows, window_nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3")
    parser.add_argument("--text", default="paul-graham")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for name in args.dtypes.split(","):
        model, tokenizer = load_model(args.model, args.device, getattr(torch, name))
        ids = token_windows(tokenizer, load_text(args.text), args.seq_len, 1)[0]
        ppl = math.exp(window_nll(model, ids).mean().item())
        print(f"transformers {transformers.__version__} {args.model} {args.text} {args.seq_len} {name}: ppl {ppl:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
