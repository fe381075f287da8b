"""Calibrated head plans: per query head, the cheapest treatment a model takes within a budget.

1. ``head_errors``: one exact run of the model over the calibration tokens captures every
   layer's attention inputs; each candidate config runs over them, and each query head's
   relative output error against exact attention is measured (over the positions the
   candidates approximate).
2. ``plan_at``: a threshold t gives a plan: each head takes the first candidate (list them
   cheapest first) whose error is at most t, or stays exact. A larger threshold approximates
   more heads, with cheaper candidates.
3. ``calibrate``: a bisection over the measured errors for the largest threshold whose plan
   keeps the perplexity of the calibration tokens within ``budget`` (a relative increase)
   of exact attention's; each step is one run of the patched model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from hyperattn.api import hyper_attention
from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.attention import capture_attention, captured_layers, first_approximated, relative_errors
from hyperattn.eval.perplexity import window_nll
from hyperattn.heads import EXACT, HeadPlan
from hyperattn.integrations.transformers import patch_model

# head errors: {candidate name: {layer: [error of each query head]}}
HeadErrors = dict[str, dict[int, list[float]]]


def head_errors(model, input_ids: torch.Tensor, candidates: dict[str, HyperAttentionConfig], layers="all",
                seed: int = 0, include_sliding: bool = False, progress: bool = True) -> HeadErrors:
    """Relative output error of every query head of the chosen layers under each candidate, on the
    attention inputs of one exact run over ``input_ids`` (N,). Layer i runs with seed ``seed + i``
    (as ``patch_model``); errors are over the positions from the earliest first approximated
    position of the candidates on."""
    seq_len = input_ids.shape[-1]
    for name, config in candidates.items():
        if config.runs_exact(seq_len, seq_len, True):
            raise ValueError(f"candidate {name!r} runs attention over {seq_len} tokens exactly (min_seq_len="
                             f"{config.min_seq_len}, exact_up_to={config.exact_up_to}); calibrate on more tokens "
                             f"or lower them")
    start = min(first_approximated(seq_len, config) for config in candidates.values())
    chosen = captured_layers(model, layers, include_sliding)
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no layer (sliding-window layers need include_sliding)")
    captured = capture_attention(model, input_ids, chosen)
    errors = {name: {} for name in candidates}
    for layer in tqdm(chosen, desc="head errors", unit="layer", disable=not progress):
        inputs = captured.pop(layer)
        outputs = [hyper_attention(inputs.q, inputs.k, inputs.v, causal=True, scale=inputs.scaling, config=config,
                                   seed=seed + layer) for config in candidates.values()]
        approximated, _ = relative_errors(inputs, outputs, None, 0, start)
        for index, name in enumerate(candidates):
            errors[name][layer] = approximated[index].tolist()
    return errors


def plan_at(errors: HeadErrors, threshold: float) -> dict[int, tuple[str, ...]]:
    """Each head's treatment at ``threshold``: the first candidate (in ``errors``' order) whose
    error is at most ``threshold``, else exact."""
    names = list(errors)
    layers = {}
    for layer in errors[names[0]]:
        heads = len(errors[names[0]][layer])
        layers[layer] = tuple(next((name for name in names if errors[name][layer][h] <= threshold), EXACT)
                              for h in range(heads))
    return layers


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What ``calibrate`` found: the plan, every head's error under every candidate, and each
    bisection step (threshold, perplexity, its change against exact, heads per treatment)."""

    plan: HeadPlan
    errors: HeadErrors
    steps: list[dict]


def calibrate(model, input_ids: torch.Tensor, candidates: dict[str, HyperAttentionConfig], budget: float = 0.01,
              layers="all", seed: int = 0, steps: int = 6, include_sliding: bool = False, model_name: str = "",
              progress: bool = True) -> Calibration:
    """A head plan for ``model``: as many heads approximated, each by the cheapest candidate
    it can take, as keep the perplexity of ``input_ids`` (N,) within ``budget`` (relative
    increase, 0.01 = +1%) of exact attention's.

    ``candidates``: {name: config}, cheapest first (the plan prefers earlier ones); ``steps``:
    patched runs of the bisection (it stops early when the threshold is pinned down); the plan
    is that of the largest threshold tried that kept the budget (all exact if none did).
    ``layers``: the layers that may be approximated (as ``patch_model``). Leaves the model exact.
    """
    if not candidates:
        raise ValueError("candidates: give at least one HyperAttentionConfig to calibrate")
    if EXACT in candidates:
        raise ValueError(f"candidates: the name {EXACT!r} is reserved for exact attention")
    if not (isinstance(budget, (int, float)) and budget >= 0):
        raise ValueError(f"budget must be a relative perplexity increase >= 0 (0.01 = +1%), got {budget!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    started = time.perf_counter()
    patch_model(model, "last:0")  # exact everywhere while measuring
    errors = head_errors(model, input_ids, candidates, layers, seed, include_sliding, progress)
    exact_ppl = math.exp(window_nll(model, input_ids).mean().item())
    thresholds = sorted({e for per_layer in errors.values() for heads in per_layer.values() for e in heads})
    history = []

    def perplexity_at(index: int) -> float:
        plan = HeadPlan(model=model_name, seq_len=input_ids.shape[-1], configs=candidates,
                        layers=plan_at(errors, thresholds[index]))
        patch_model(model, plan=plan, seed=seed, include_sliding=include_sliding)
        ppl = math.exp(window_nll(model, input_ids).mean().item())
        history.append(dict(threshold=thresholds[index], ppl=ppl, change=ppl / exact_ppl - 1,
                            heads=plan.head_counts()))
        return ppl

    low, high = -1, len(thresholds) - 1  # low: a threshold within budget (-1: all exact); high: the largest left
    for _ in tqdm(range(steps), desc="calibration", unit="run", disable=not progress):
        if low == high:
            break
        middle = high if not history else (low + high + 1) // 2  # first: every head at its cheapest
        if perplexity_at(middle) / exact_ppl - 1 <= budget:
            low = middle
        else:
            high = middle - 1
    patch_model(model, "last:0")
    chosen = plan_at(errors, thresholds[low]) if low >= 0 else {}
    kept = next((h for h in history if low >= 0 and h["threshold"] == thresholds[low]), None)
    measured = dict(metric="perplexity", budget=budget, exact_ppl=exact_ppl,
                    ppl=kept["ppl"] if kept else exact_ppl, change=kept["change"] if kept else 0.0,
                    threshold=thresholds[low] if low >= 0 else None, tokens=int(input_ids.shape[-1]), seed=seed,
                    seconds=time.perf_counter() - started)
    plan = HeadPlan(model=model_name, seq_len=input_ids.shape[-1], configs=candidates, layers=chosen,
                    measured=measured)
    return Calibration(plan=plan, errors=errors, steps=history)


def format_calibration(calibration: Calibration) -> str:
    """The bisection's steps, then the plan: heads per treatment and the perplexity it keeps."""
    plan, m = calibration.plan, calibration.plan.measured
    lines = [f"{'threshold':>10} {'ppl':>8} {'change':>8}  heads per treatment"]
    for step in calibration.steps:
        counts = ", ".join(f"{name} {n}" for name, n in step["heads"].items())
        lines.append(f"{step['threshold']:10.4f} {step['ppl']:8.3f} {100 * step['change']:+7.2f}%  {counts}")
    counts = plan.head_counts()
    total = sum(len(heads) for heads in calibration.errors[next(iter(calibration.errors))].values())
    approximated = total - counts[EXACT] if plan.layers else 0
    lines.append(f"plan: {approximated} of {total} heads approximated ("
                 + ", ".join(f"{name} {n}" for name, n in counts.items() if name != EXACT)
                 + f"); perplexity {m['ppl']:.3f} against exact {m['exact_ppl']:.3f} ({100 * m['change']:+.2f}%, "
                 f"budget {100 * m['budget']:+.2f}%)")
    return "\n".join(lines)


def plot_calibration(calibration: Calibration, path: str, title: str) -> None:
    """Each head's error under the first candidate (layers by heads), heads the plan approximates
    outlined, the plan's threshold in the colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(calibration.errors))
    layers = sorted(calibration.errors[first])
    grid = torch.tensor([calibration.errors[first][layer] for layer in layers])
    fig, ax = plt.subplots(figsize=(1.5 + 0.4 * grid.shape[1], 1.5 + 0.25 * len(layers)))
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis")
    bar = fig.colorbar(image, ax=ax, label=f"relative output error, {first}")
    threshold = calibration.plan.measured.get("threshold")
    if threshold is not None:
        bar.ax.axhline(threshold, color="red")
    for row, layer in enumerate(layers):
        for head, name in enumerate(calibration.plan.layers.get(layer, ())):
            if name != EXACT:
                ax.add_patch(plt.Rectangle((head - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1))
    ax.set(xlabel="query head (red: approximated)", ylabel="layer", yticks=range(len(layers)), yticklabels=layers,
           title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
