"""Perplexity of a causal LM with HyperAttention in some layers, against exact attention."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.models import (EVAL_CONFIG, PLAN_SETTING, check_length, check_plan_setting, count_attention_layers,
                                   patch_setting)
from hyperattn.heads import HeadPlan
from hyperattn.integrations.transformers import patch_model

QUARTERS = 4


def token_windows(tokenizer, text: str, seq_len: int, num_windows: int) -> torch.Tensor:
    """(num_windows, seq_len) consecutive, non-overlapping windows from the start of ``text``."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    needed = seq_len * num_windows
    if ids.numel() < needed:
        raise ValueError(f"the text has {ids.numel()} tokens; {num_windows} windows of {seq_len} need {needed}")
    return ids[:needed].view(num_windows, seq_len)


LOGIT_CHUNK = 1024  # positions whose logits exist at once (Gemma-3's vocabulary has 262k entries)


@torch.no_grad()
def window_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of tokens 1..L-1 of one window (L,), float64 (L-1,).

    The decoder runs once; the output projection runs in chunks of positions, so the
    (L, vocabulary) logits never exist at once."""
    device = next(model.parameters()).device
    hidden = model.get_decoder()(input_ids=ids[None].to(device)).last_hidden_state[0, :-1]
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    targets = ids[1:].to(device)
    nll = []
    for start in range(0, hidden.shape[0], LOGIT_CHUNK):
        logits = head(hidden[start:start + LOGIT_CHUNK]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        nll.append(F.cross_entropy(logits, targets[start:start + LOGIT_CHUNK], reduction="none"))
    return torch.cat(nll).double().cpu()


def summarize(nll: torch.Tensor) -> dict:
    """Perplexity of a window and of each quarter of its predictions."""
    quarters = nll.tensor_split(QUARTERS)
    return dict(ppl=math.exp(nll.mean().item()), quarter_ppl=[math.exp(q.mean().item()) for q in quarters])


def evaluate_perplexity(model, tokenizer, text: str, seq_len: int, layer_specs: list[str], num_windows: int = 1,
                        seeds: list[int] = (0,), config: HyperAttentionConfig | None = None,
                        plan: HeadPlan | None = None) -> dict:
    """Perplexity per layer setting (``"last:0"`` = exact; ``"plan"``: the head plan ``plan``),
    window and seed.

    Returns {"runs": one row per (setting, seed, window), "summary": one row per setting
    with the mean, spread (min, max, std over seeds and windows) and mean quarter ppl}.
    """
    config = config or EVAL_CONFIG
    check_plan_setting(layer_specs, plan)
    check_length(model, seq_len)
    windows = token_windows(tokenizer, text, seq_len, num_windows)
    num_layers = count_attention_layers(model)

    jobs = []
    for spec in layer_specs:
        patched = len(patch_setting(model, spec, config, plan))  # sliding-window layers stay exact
        for seed in (seeds if patched else seeds[:1]):  # exact attention has no randomness
            jobs += [(spec, patched, seed, w) for w in range(num_windows)]
    runs = []
    for spec, patched, seed, window in tqdm(jobs, desc="perplexity", unit="window"):
        patch_setting(model, spec, config, plan, seed)
        start = time.perf_counter()
        nll = window_nll(model, windows[window])
        runs.append(dict(layers=spec, num_patched=patched, seed=seed, window=window,
                         seconds=time.perf_counter() - start, **summarize(nll)))
    patch_model(model, "last:0", config)  # leave the model exact
    summary = []
    for spec in layer_specs:
        rows = [r for r in runs if r["layers"] == spec]
        ppls = [r["ppl"] for r in rows]
        summary.append(dict(
            layers=spec, num_patched=rows[0]["num_patched"], mean_ppl=statistics.fmean(ppls), min_ppl=min(ppls),
            max_ppl=max(ppls), std_ppl=statistics.pstdev(ppls), runs=len(rows),
            mean_quarter_ppl=[statistics.fmean(r["quarter_ppl"][q] for r in rows) for q in range(QUARTERS)],
            mean_seconds=statistics.fmean(r["seconds"] for r in rows),
        ))
    return dict(seq_len=seq_len, num_windows=num_windows, seeds=list(seeds), num_layers=num_layers,
                config=asdict(config), runs=runs, summary=summary)


def format_summary(result: dict) -> str:
    exact = next((s["mean_ppl"] for s in result["summary"] if s["num_patched"] == 0), None)
    lines = [f"{'layers':>8} {'patched':>8} {'ppl':>8} {'min':>8} {'max':>8} {'vs exact':>9} "
             + " ".join(f"{f'Q{q + 1}':>7}" for q in range(QUARTERS)) + f" {'s/window':>9}"]
    for s in result["summary"]:
        change = f"{100 * (s['mean_ppl'] / exact - 1):+.1f}%" if exact else "-"
        lines.append(f"{s['layers']:>8} {s['num_patched']:>8} {s['mean_ppl']:8.2f} {s['min_ppl']:8.2f} "
                     f"{s['max_ppl']:8.2f} {change:>9} "
                     + " ".join(f"{q:7.2f}" for q in s["mean_quarter_ppl"]) + f" {s['mean_seconds']:9.1f}")
    return "\n".join(lines)


def plot_perplexity(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planned = [s for s in result["summary"] if s["layers"] == PLAN_SETTING]
    rows = sorted((s for s in result["summary"] if s["layers"] != PLAN_SETTING), key=lambda s: s["num_patched"])
    x = [s["num_patched"] for s in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(x, [s["mean_ppl"] for s in rows],
                yerr=[[s["mean_ppl"] - s["min_ppl"] for s in rows], [s["max_ppl"] - s["mean_ppl"] for s in rows]],
                fmt="o-", capsize=4, label="HyperAttention (mean, min-max)")
    exact = next((s["mean_ppl"] for s in rows if s["num_patched"] == 0), None)
    if exact is not None:
        ax.axhline(exact, color="gray", linestyle="--", label="exact attention")
    for s in planned:
        ax.plot([s["num_patched"]], [s["mean_ppl"]], "r*", markersize=12, label="head plan (layers it approximates)")
    ax.set(xlabel="layers with HyperAttention (counted from the last)", ylabel="perplexity", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
