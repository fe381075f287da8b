"""Calibrated head plans: per query head, the cheapest treatment a model takes within a budget.

1. ``head_errors``: one exact run of the model over the calibration tokens captures every
   layer's attention inputs; each candidate config runs over them, and each query head's
   relative output error against exact attention is measured (over the positions the
   candidates approximate), beside the paper's hardness measures of the head's attention
   (``head_hardness``: alpha and kappa) and how well they rank the heads' errors.
2. ``plan_at``: a threshold t gives a plan: each head takes the first candidate (list them
   cheapest first) whose error is at most t, or stays exact. A larger threshold approximates
   more heads, with cheaper candidates.
3. ``calibrate``: a bisection over the measured errors for the largest threshold whose plan
   keeps the perplexity of the calibration tokens within ``budget`` (a relative increase)
   of exact attention's; each step is one run of the patched model. With retrieval prompts
   (``tasks``), a plan must also keep each task's mean answer log-likelihood within
   ``task_budget`` nats per token of exact attention's (one more prefill per prompt and step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from hyperattn.api import hyper_attention
from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.attention import (CHUNK_ELEMENTS, CapturedAttention, captured_layers, capturing_attention,
                                     first_approximated, relative_errors)
from hyperattn.eval.perplexity import window_nll
from hyperattn.eval.ruler import Sample, answer_logprob
from hyperattn.heads import EXACT, HeadPlan
from hyperattn.integrations.transformers import patch_model

# head errors: {candidate name: {layer: [error of each query head]}}
HeadErrors = dict[str, dict[int, list[float]]]


@dataclass(frozen=True, kw_only=True)
class HeadErrorRun:
    """What ``head_errors`` measured in one exact run and the candidates' runs over its inputs."""

    errors: HeadErrors  # {candidate: {layer: error of each query head}}
    hardness: dict[str, dict[int, list[float]]]  # {"alpha" and "log_kappa": {layer: per query head}}
    exact_nll: torch.Tensor  # float64 (N - 1,): the exact run's negative log-likelihood of tokens 1..N-1


def head_errors(model, input_ids: torch.Tensor, candidates: dict[str, HyperAttentionConfig], layers="all",
                seed: int = 0, include_sliding: bool = False, progress: bool = True) -> HeadErrorRun:
    """Relative output error of every query head of the chosen layers under each candidate, on the
    attention inputs of one exact run over ``input_ids`` (N,), and each head's hardness
    (``HeadHardness`` with the first candidate's exact sinks and block size). Layer i runs with
    seed ``seed + i`` (as ``patch_model``); both are over the positions from the earliest first
    approximated position of the candidates on."""
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
    with capturing_attention(model, chosen) as captured:
        exact_nll = window_nll(model, input_ids)
    first = next(iter(candidates.values()))
    errors = {name: {} for name in candidates}
    hardness = {"alpha": {}, "log_kappa": {}}
    for layer in tqdm(chosen, desc="head errors", unit="layer", disable=not progress):
        inputs = captured.pop(layer)
        outputs = [hyper_attention(inputs.q, inputs.k, inputs.v, causal=True, scale=inputs.scaling, config=config,
                                   seed=seed + layer) for config in candidates.values()]
        meter = HeadHardness(inputs.q.shape[1], seq_len, start, first.exact_sinks, first.block_size)
        approximated, _ = relative_errors(inputs, outputs, None, 0, start, on_chunk=meter.update)
        for index, name in enumerate(candidates):
            errors[name][layer] = approximated[index].tolist()
        hardness["alpha"][layer], hardness["log_kappa"][layer] = (x.tolist() for x in meter.result())
    return HeadErrorRun(errors=errors, hardness=hardness, exact_nll=exact_nll)


class HeadHardness:
    """The paper's two hardness measures of each query head's causal attention, estimated over
    the query rows from ``start`` on (those HyperAttention approximates) and accumulated over
    chunks of rows (``update``, the ``on_chunk`` of ``relative_errors``). With P the
    row-normalized attention (softmax) matrix:

    - ``alpha`` = N * max_j sum_i P_ij^2: the largest squared column norm, over key columns
      from ``sinks`` on (the exact sinks are computed exactly, whatever their weight);
    - ``log_kappa``: the spread of the rows' sums of exp(scores) once each row's ``heavy``
      largest entries (what its LSH block is meant to catch) are removed, as the log of the
      ratio of the 99th to the 1st percentile over rows (the paper's max/min ratio, made
      robust to single rows); rows with nothing left are left out."""

    def __init__(self, num_heads: int, seq_len: int, start: int, sinks: int, heavy: int):
        self.start, self.sinks, self.heavy, self.seq_len = start, sinks, heavy, seq_len
        self.col_sq = torch.zeros(num_heads, seq_len, dtype=torch.float64)
        self.light = []

    def update(self, begin: int, end: int, scores: torch.Tensor, probs: torch.Tensor) -> None:
        """The queries begin..end-1: their scores (Hq, C, end) (future entries included) and exact
        causal attention probs (Hq, C, end)."""
        skip = max(self.start - begin, 0)
        if skip >= end - begin:
            return
        scores, probs = scores[:, skip:], probs[:, skip:]
        self.col_sq[:, :end] += probs.square().sum(1).double().cpu()
        top = probs.topk(min(self.heavy, end), dim=-1).indices
        # a row's light sum of exp(scores): its light share of P times exp(lse), with the lse read
        # off its largest entry (lse = s - log p there); the share summed directly, not by subtraction
        light_share = probs.scatter(-1, top, 0.0).sum(-1)
        first = top[..., :1]
        lse = (scores.gather(-1, first) - probs.gather(-1, first).log()).squeeze(-1)
        light = light_share.log() + lse
        seen = torch.arange(begin + skip, end, device=probs.device) + 1  # keys each row sees
        light = light.masked_fill(seen <= self.heavy, -torch.inf)  # nothing left
        # shares near the bottom of P's range lose their smallest entries: those rows from the scores
        underflow = (light_share < torch.finfo(probs.dtype).tiny * 1e8) & (seen > self.heavy)
        if underflow.any():
            future = torch.arange(end, device=probs.device) >= seen[:, None]
            visible = scores.masked_fill(future, -torch.inf)
            top = visible.topk(min(self.heavy, end), dim=-1).indices  # P's ties at zero hide the order
            exact = torch.logsumexp(visible.scatter(-1, top, -torch.inf), -1)
            light = torch.where(underflow, exact, light)
        self.light.append(light.double().cpu())

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (Hq,) and log_kappa (Hq,), float64 CPU tensors."""
        alpha = self.seq_len * self.col_sq[:, self.sinks:].max(-1).values
        light = torch.cat(self.light, 1)
        log_kappa = torch.stack([row[torch.isfinite(row)].quantile(0.99) - row[torch.isfinite(row)].quantile(0.01)
                                 if torch.isfinite(row).sum() > 1 else torch.tensor(0.0, dtype=torch.float64)
                                 for row in light])
        return alpha, log_kappa


def head_hardness(captured: CapturedAttention, start: int, sinks: int, heavy: int,
                  chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``HeadHardness`` of the captured attention inputs (q (1, Hq, N, D), k (1, Hkv, N, D)), over
    the query rows from ``start`` on, in float32 chunks of about ``chunk_elements`` scores.
    Returns float64 CPU tensors alpha (Hq,), log_kappa (Hq,)."""
    hardness = HeadHardness(captured.q.shape[1], captured.q.shape[2], start, sinks, heavy)
    relative_errors(captured, [], None, 0, start, on_chunk=hardness.update, chunk_elements=chunk_elements)
    return hardness.result()


def rank_correlation(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (ties broken by order)."""
    rx = torch.tensor(x, dtype=torch.float64).argsort().argsort().double()
    ry = torch.tensor(y, dtype=torch.float64).argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-300))


GRANULARITIES = ("head", "layer")


def plan_at(errors: HeadErrors, threshold: float, per: str = "head") -> dict[int, tuple[str, ...]]:
    """Each head's treatment at ``threshold``: the first candidate (in ``errors``' order) whose
    error is at most ``threshold``, else exact. ``per="layer"``: one treatment for all the heads
    of a layer, judged by its largest head error (a choice of whole layers)."""
    names = list(errors)
    layers = {}
    for layer in errors[names[0]]:
        heads = len(errors[names[0]][layer])
        if per == "layer":
            layers[layer] = (next((name for name in names if max(errors[name][layer]) <= threshold), EXACT),) * heads
        else:
            layers[layer] = tuple(next((name for name in names if errors[name][layer][h] <= threshold), EXACT)
                                  for h in range(heads))
    return layers


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What ``calibrate`` found: the plan, every head's error under every candidate, each head's
    hardness (``head_hardness``: "alpha", "log_kappa") with the rank correlation of each with the
    first candidate's errors over all heads ("predicts"), and each bisection step (threshold,
    perplexity, its change against exact, heads per treatment; with tasks, each task's mean change
    of the answer log-likelihood where the perplexity kept its budget, else None)."""

    plan: HeadPlan
    errors: HeadErrors
    hardness: dict[str, dict[int, list[float]]]
    predicts: dict[str, float]
    steps: list[dict]


def calibrate(model, input_ids: torch.Tensor, candidates: dict[str, HyperAttentionConfig], budget: float = 0.01,
              layers="all", seed: int = 0, steps: int = 6, include_sliding: bool = False, model_name: str = "",
              per: str = "head", costs: dict[str, float] | None = None, tasks: Sequence[Sample] = (),
              task_budget: float = 0.05, progress: bool = True) -> Calibration:
    """A head plan for ``model``: as many heads approximated, each by the cheapest candidate
    it can take, as keep the perplexity of ``input_ids`` (N,) within ``budget`` (relative
    increase, 0.01 = +1%) of exact attention's.

    ``candidates``: {name: config}, cheapest first (the plan prefers earlier ones); ``steps``:
    patched runs of the bisection (it stops early when the threshold is pinned down); the plan
    is that of the largest threshold tried that kept the budget (all exact if none did).
    ``layers``: the layers that may be approximated (as ``patch_model``). ``per="layer"``: one
    treatment per layer, for all its heads (``plan_at``): the best choice of whole layers the same
    measurements give, to compare per-head plans with. ``costs``: each candidate's attention time
    relative to exact attention's (``HeadPlan.attention_cost``), for the report of each plan's
    attention time. ``tasks``: retrieval prompts (``hyperattn.eval.ruler.build_samples``; build them
    from another seed than the prompts you test on): a plan must also keep each task's mean answer
    log-likelihood per token within ``task_budget`` nats of exact attention's. Leaves the model exact.
    """
    if not candidates:
        raise ValueError("candidates: give at least one HyperAttentionConfig to calibrate")
    if EXACT in candidates:
        raise ValueError(f"candidates: the name {EXACT!r} is reserved for exact attention")
    if not (isinstance(budget, (int, float)) and budget >= 0):
        raise ValueError(f"budget must be a relative perplexity increase >= 0 (0.01 = +1%), got {budget!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if per not in GRANULARITIES:
        raise ValueError(f"per must be one of {GRANULARITIES} (a treatment per head, or per whole layer), got {per!r}")
    if costs is not None:
        missing = sorted(set(candidates) - set(costs))
        if missing or any(not (isinstance(c, (int, float)) and c > 0) for c in costs.values()):
            raise ValueError(f"costs: give each candidate's time relative to exact attention (> 0); missing "
                             f"{missing}, got {costs!r}")
    if not (isinstance(task_budget, (int, float)) and task_budget >= 0):
        raise ValueError(f"task_budget must be nats per answer token >= 0, got {task_budget!r}")
    if any(not isinstance(sample, Sample) for sample in tasks):
        raise TypeError("tasks: give hyperattn.eval.ruler.Sample prompts (from build_samples)")
    started = time.perf_counter()
    patch_model(model, "last:0")  # exact everywhere while measuring
    exact_logprobs = [answer_logprob(model, sample) for sample in tasks]
    run = head_errors(model, input_ids, candidates, layers, seed, include_sliding, progress)
    errors, hardness = run.errors, run.hardness
    first_errors = [e for heads in next(iter(errors.values())).values() for e in heads]
    predicts = {name: rank_correlation([v for heads in per_layer.values() for v in heads], first_errors)
                for name, per_layer in hardness.items()}
    exact_ppl = math.exp(run.exact_nll.mean().item())
    thresholds = sorted({e for per_layer in errors.values() for heads in per_layer.values()
                         for e in (heads if per == "head" else [max(heads)])})
    history = []

    def within_budget(index: int) -> bool:
        plan = HeadPlan(model=model_name, seq_len=input_ids.shape[-1], configs=candidates,
                        layers=plan_at(errors, thresholds[index], per))
        patch_model(model, plan=plan, seed=seed, include_sliding=include_sliding)
        ppl = math.exp(window_nll(model, input_ids).mean().item())
        ok = ppl / exact_ppl - 1 <= budget
        task_changes = None
        if ok and tasks:  # the prompts only where the perplexity allows the plan
            changes = {}
            for sample, exact in zip(tasks, exact_logprobs):
                changes.setdefault(sample.task, []).append(answer_logprob(model, sample) - exact)
            task_changes = {task: sum(c) / len(c) for task, c in changes.items()}
            ok = min(task_changes.values()) >= -task_budget
        history.append(dict(threshold=thresholds[index], ppl=ppl, change=ppl / exact_ppl - 1,
                            heads=plan.head_counts(), attention_cost=plan.attention_cost(costs) if costs else None,
                            task_changes=task_changes, kept=ok))
        return ok

    low, high = -1, len(thresholds) - 1  # low: a threshold within budget (-1: all exact); high: the largest left
    for _ in tqdm(range(steps), desc="calibration", unit="run", disable=not progress):
        if low == high:
            break
        middle = high if not history else (low + high + 1) // 2  # first: every head at its cheapest
        if within_budget(middle):
            low = middle
        else:
            high = middle - 1
    patch_model(model, "last:0")
    chosen = plan_at(errors, thresholds[low], per) if low >= 0 else {}
    kept = next((h for h in history if low >= 0 and h["threshold"] == thresholds[low]), None)
    measured = dict(metric="perplexity", budget=budget, exact_ppl=exact_ppl,
                    ppl=kept["ppl"] if kept else exact_ppl, change=kept["change"] if kept else 0.0,
                    threshold=thresholds[low] if low >= 0 else None, per=per, tokens=int(input_ids.shape[-1]), seed=seed,
                    seconds=time.perf_counter() - started)
    if tasks:
        measured.update(task_budget=task_budget, task_prompts=len(tasks),
                        task_changes=kept["task_changes"] if kept else {sample.task: 0.0 for sample in tasks})
    plan = HeadPlan(model=model_name, seq_len=input_ids.shape[-1], configs=candidates, layers=chosen,
                    measured=measured)
    if costs:
        measured.update(costs=dict(costs), attention_cost=plan.attention_cost(costs) if chosen else 1.0)
    return Calibration(plan=plan, errors=errors, hardness=hardness, predicts=predicts, steps=history)


def format_calibration(calibration: Calibration) -> str:
    """The bisection's steps, then the plan: heads per treatment and the perplexity it keeps (and,
    with tasks, the answer log-likelihood: each step's worst task change)."""
    plan, m = calibration.plan, calibration.plan.measured
    costs = "costs" in m
    tasks = "task_budget" in m
    lines = [f"{'threshold':>10} {'ppl':>8} {'change':>8}" + (f" {'attention':>9}" if costs else "")
             + (f" {'worst task':>10}" if tasks else "") + "  heads per treatment"]
    for step in calibration.steps:
        counts = ", ".join(f"{name} {n}" for name, n in step["heads"].items())
        cost = f" {100 * step['attention_cost']:8.1f}%" if costs else ""
        changes = step.get("task_changes")
        task = (f" {min(changes.values()):+10.3f}" if changes else f" {'-':>10}") if tasks else ""
        lines.append(f"{step['threshold']:10.4f} {step['ppl']:8.3f} {100 * step['change']:+7.2f}%{cost}{task}  {counts}")
    counts = plan.head_counts()
    total = sum(len(heads) for heads in calibration.errors[next(iter(calibration.errors))].values())
    approximated = total - counts[EXACT] if plan.layers else 0
    first = next(iter(calibration.errors))
    lines.append(f"rank correlation with the heads' errors under {first}: "
                 + ", ".join(f"{name} {value:+.2f}" for name, value in calibration.predicts.items()))
    lines.append(f"plan: {approximated} of {total} heads approximated ("
                 + ", ".join(f"{name} {n}" for name, n in counts.items() if name != EXACT)
                 + f"); perplexity {m['ppl']:.3f} against exact {m['exact_ppl']:.3f} ({100 * m['change']:+.2f}%, "
                 f"budget {100 * m['budget']:+.2f}%)")
    if tasks:
        lines.append(f"answer log-likelihood against exact, nats per token ({m['task_prompts']} prompts, budget "
                     f"-{m['task_budget']:g} per task): "
                     + ", ".join(f"{task} {change:+.3f}" for task, change in m["task_changes"].items()))
    if costs:
        lines.append(f"attention time: {100 * m['attention_cost']:.1f}% of exact attention's (costs relative to "
                     "exact: " + ", ".join(f"{name} {c:g}" for name, c in m["costs"].items()) + ")")
    return "\n".join(lines)


def plot_calibration(calibration: Calibration, path: str, title: str) -> None:
    """Each head's error under the first candidate (layers by heads), each cell marked with the
    plan's treatment (E: exact, else the candidate's number), the plan's threshold in the colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(calibration.errors))
    layers = sorted(calibration.errors[first])
    grid = torch.tensor([calibration.errors[first][layer] for layer in layers])
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 0.4 * grid.shape[1]), max(3.5, 1.5 + 0.25 * len(layers))))
    image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis")
    bar = fig.colorbar(image, ax=ax, label=f"relative output error, {first}")
    threshold = calibration.plan.measured.get("threshold")
    if threshold is not None:
        bar.ax.axhline(threshold, color="red")
    names = list(calibration.errors)
    for row, layer in enumerate(layers):
        for head, name in enumerate(calibration.plan.layers.get(layer, (EXACT,) * grid.shape[1])):
            exact = name == EXACT
            ax.text(head, row, "E" if exact else str(names.index(name) + 1), ha="center", va="center", fontsize=7,
                    color="red" if exact else "white", fontweight="bold" if exact else "normal")
    legend = ", ".join(f"{i + 1}: {name}" for i, name in enumerate(names))
    ax.set(xlabel=f"query head (E: exact; {legend})", ylabel="layer", xticks=range(grid.shape[1]),
           yticks=range(len(layers)), yticklabels=layers, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
