"""Needle in a haystack: a fact hidden at a depth of a long text, answered by greedy decoding."""

from __future__ import annotations

import random
import time

import torch
from tqdm import tqdm

from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.models import EVAL_CONFIG, PLAN_SETTING, check_length
from hyperattn.integrations.transformers import patch_model

NEEDLE = "The special magic number is {number}."
ANSWER_TOKENS = 8
QUESTION = ("\n\nQuestion: What is the special magic number mentioned in the text above?\n"
            "Answer: The special magic number is")


def build_prompt(tokenizer, haystack_ids: list[int], length: int, depth: float, number: int) -> list[int]:
    """``length`` tokens: the haystack with the needle at ``depth`` (0 = start, 1 = end), then the question."""
    needle = tokenizer(" " + NEEDLE.format(number=number) + " ", add_special_tokens=False).input_ids
    question = tokenizer(QUESTION, add_special_tokens=False).input_ids
    body = length - len(needle) - len(question)
    if body <= 0 or len(haystack_ids) < body:
        raise ValueError(f"cannot build a {length}-token prompt from a haystack of {len(haystack_ids)} tokens")
    position = round(depth * body)
    return haystack_ids[:position] + needle + haystack_ids[position:body] + question


@torch.no_grad()
def answer(model, tokenizer, prompt: list[int], max_new_tokens: int = 8) -> str:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def evaluate_needle(model, tokenizer, text: str, lengths: list[int], depths: list[float], layer_specs: list[str],
                    config: HyperAttentionConfig | None = None, seed: int = 0) -> dict:
    """Accuracy of every (layer setting, length, depth): one hidden 5-digit number per cell, a
    prompt of ``length - ANSWER_TOKENS`` tokens and up to ``ANSWER_TOKENS`` greedy tokens."""
    config = config or EVAL_CONFIG
    for length in lengths:
        check_length(model, length)
    haystack = tokenizer(text, add_special_tokens=False).input_ids
    rng = random.Random(seed)
    numbers = {(length, depth): rng.randrange(10000, 100000) for length in lengths for depth in depths}
    jobs = [(spec, length, depth) for spec in layer_specs for length in lengths for depth in depths]
    rows = []
    for spec, length, depth in tqdm(jobs, desc="needle", unit="prompt"):
        patched = patch_model(model, spec, config, seed=seed)
        number = numbers[(length, depth)]
        start = time.perf_counter()
        prompt = build_prompt(tokenizer, haystack, length - ANSWER_TOKENS, depth, number)  # answer fits the context
        reply = answer(model, tokenizer, prompt, ANSWER_TOKENS)
        rows.append(dict(layers=spec, num_patched=len(patched), length=length, depth=depth,
                         number=number, answer=reply.strip(), correct=str(number) in reply,
                         seconds=time.perf_counter() - start))
    patch_model(model, "last:0", config)
    return dict(lengths=lengths, depths=depths, layer_specs=layer_specs, seed=seed, rows=rows)


def setting_label(spec: str) -> str:
    if spec == "last:0":
        return "exact attention"
    return "HyperAttention, head plan" if spec == PLAN_SETTING else f"HyperAttention, layers {spec}"


def format_grid(result: dict) -> str:
    lines = []
    for spec in result["layer_specs"]:
        cells = {(r["length"], r["depth"]): r["correct"] for r in result["rows"] if r["layers"] == spec}
        lines.append(f"{setting_label(spec)}: {sum(cells.values())}/{len(cells)} found")
        lines.append(f"{'depth':>7} " + " ".join(f"{n:>7}" for n in result["lengths"]))
        for depth in result["depths"]:
            lines.append(f"{depth:>7.2f} " + " ".join(f"{'yes' if cells[(n, depth)] else 'no':>7}"
                                                       for n in result["lengths"]))
    return "\n".join(lines)


def plot_needle(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = result["layer_specs"]
    fig, axes = plt.subplots(1, len(specs), figsize=(3 + 2.2 * len(specs) * max(1, len(result["lengths"]) / 3), 3.5),
                             squeeze=False)
    for ax, spec in zip(axes[0], specs):
        cells = {(r["length"], r["depth"]): r["correct"] for r in result["rows"] if r["layers"] == spec}
        grid = [[float(cells[(n, d)]) for n in result["lengths"]] for d in result["depths"]]
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for row, depth_cells in enumerate(grid):
            for col, correct in enumerate(depth_cells):
                ax.text(col, row, "found" if correct else "missed", ha="center", va="center")
        ax.set_xticks(range(len(result["lengths"])), [str(n) for n in result["lengths"]])
        ax.set_yticks(range(len(result["depths"])), [f"{d:.0%}" for d in result["depths"]])
        ax.set(xlabel="context length", ylabel="needle depth", title=setting_label(spec))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
