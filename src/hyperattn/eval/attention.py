"""Output error of HyperAttention per layer and head, on attention inputs captured from a
real model on a real text, beside two sparse references with the same key budget.

For every captured layer, query head, window and seed it measures the relative Frobenius
error ``||out - exact||`` / ``||exact||`` over query positions of

- ``hyper``: ``hyper_attention`` with the config (seed ``seed + layer``, as ``patch_model``);
- ``topk``: every query attends (softmax) only to its ``budget`` highest-scoring visible
  keys, the set of ``budget`` keys that keeps the most attention mass;
- ``streaming``: every query attends to the first ``sinks`` keys and the ``budget - sinks``
  keys up to itself (attention sinks plus a local window).

Queries that see at most ``budget`` keys are exact in both references. Each error is given
over the positions HyperAttention approximates (``hyper``, ``topk``, ``streaming``: from the
end of its first diagonal leaf on; HyperAttention is exact before it) and over all positions
(the same names with ``_all``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from hyperattn.api import hyper_attention
from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.models import EVAL_CONFIG, check_length
from hyperattn.eval.perplexity import token_windows
from hyperattn.integrations.transformers import attention_modules, select_layers
from hyperattn.plan import causal_schedule

CAPTURE_IMPLEMENTATION = "hyperattn_capture"
MEASURES = ("hyper", "topk", "streaming", "hyper_all", "topk_all", "streaming_all")
# Score-matrix entries of one chunk of queries (all heads): 2**25 fp32 entries are 128 MiB,
# and a chunk holds a few tensors of that size.
CHUNK_ELEMENTS = 1 << 25
# The label of the evaluated config among the compared ones.
BASE_LABEL = "config"


@dataclass(frozen=True)
class CapturedAttention:
    """The inputs of one layer's attention function: q (1, Hq, N, D), k and v (1, Hkv, N, D)
    after RoPE and norms (float32 on CPU, the model's dtype on CUDA), and the softmax scale."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scaling: float


def default_budget(config: HyperAttentionConfig) -> int:
    """Keys a query of an approximated rectangle computes: its LSH block (or its selected blocks,
    ``selected_blocks * selected_block_size``), the samples, the heavy keys and the exact sinks.
    Its exact diagonal leaf and the other levels' rectangles come on top, so this understates
    what HyperAttention reads."""
    own = config.selected_blocks * config.selected_block_size if config.selected_blocks else config.block_size
    return own + config.sample_size + config.heavy_keys + config.exact_sinks


def captured_layers(model, layers="all", include_sliding: bool = False) -> list[int]:
    """Indices of the attention layers ``layers`` selects (``select_layers``), without the
    sliding-window ones unless ``include_sliding``."""
    modules = attention_modules(model)
    return [index for index in select_layers(layers, len(modules))
            if include_sliding or getattr(modules[index], "sliding_window", None) is None]


def _stored(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached: float32 on CPU, as it is on CUDA (where HyperAttention runs its fused
    kernels on the model's dtype)."""
    return x.detach().float() if x.device.type == "cpu" else x.detach()


@contextmanager
def capturing_attention(model, layers: list[int]) -> Iterator[dict[int, CapturedAttention]]:
    """While the context is open, every forward of ``model`` runs exact (SDPA) attention and
    records the attention inputs of the layers ``layers`` (indices into ``attention_modules``)
    into the dict it yields (the last forward's).

    The capturing function is registered with transformers' ``AttentionInterface`` under
    ``CAPTURE_IMPLEMENTATION`` and runs ``sdpa_attention_forward`` after recording; the model's
    attention implementation is restored on exit."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    modules = attention_modules(model)
    layer_of = {modules[index]: index for index in layers}
    captured = {}

    def capture(module, query, key, value, attention_mask, scaling=None, **kwargs):
        if module in layer_of:
            captured[layer_of[module]] = CapturedAttention(
                _stored(query), _stored(key), _stored(value),
                query.shape[-1] ** -0.5 if scaling is None else float(scaling))
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, capture)
    AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    try:
        yield captured
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def capture_attention(model, input_ids: torch.Tensor, layers: list[int]) -> dict[int, CapturedAttention]:
    """Run the decoder once with exact (SDPA) attention on ``input_ids`` (N,) and return the
    attention inputs of the layers ``layers`` (``capturing_attention``)."""
    with capturing_attention(model, layers) as captured:
        device = next(model.parameters()).device
        model.get_decoder()(input_ids=input_ids[None].to(device), use_cache=False)
    return captured


def first_approximated(seq_len: int, config: HyperAttentionConfig) -> int:
    """The first query position causal HyperAttention approximates over ``seq_len`` tokens:
    the end of its first diagonal leaf (the positions before it are exact)."""
    if config.runs_exact(seq_len, seq_len, True):
        raise ValueError(f"the config runs attention over {seq_len} tokens exactly (min_seq_len={config.min_seq_len}, "
                         f"exact_up_to={config.exact_up_to}): there is nothing to measure")
    return causal_schedule(seq_len, seq_len, config.min_seq_len).first_approximated


def reference_masks(scores: torch.Tensor, positions: torch.Tensor, budget: int, sinks: int):
    """Boolean masks (..., C, Nk) of the keys that the queries at ``positions`` (C,) attend to,
    given their scores (..., C, Nk): every visible key (causal), the ``budget`` highest-scoring
    visible keys (top-k), and the first ``sinks`` keys with the ``budget - sinks`` keys up to
    the query (streaming)."""
    keys = torch.arange(scores.shape[-1], device=scores.device)
    visible = keys <= positions[:, None]
    streaming = visible & ((keys < sinks) | (keys > positions[:, None] - (budget - sinks)))
    scores = scores.masked_fill(~visible, -torch.inf)
    top = scores.topk(min(budget, scores.shape[-1]), dim=-1).indices
    topk = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True) & visible
    return visible, topk, streaming


@torch.no_grad()
def relative_errors(captured: CapturedAttention, outputs: list[torch.Tensor], budget: int | None, sinks: int,
                    start: int, dtype: torch.dtype = torch.float32, on_chunk: Callable | None = None,
                    chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative Frobenius errors per query head against exact causal attention, computed in
    ``dtype`` over chunks of queries (about ``chunk_elements`` scores each), of ``outputs``
    (approximations (1, Hq, N, Dv)) and then of the top-k and streaming references (none where
    ``budget`` is None). ``on_chunk(begin, end, scores, probs)``, if given, sees each chunk of
    queries begin..end-1: their scores (Hq, C, end) (future entries included) and exact causal
    attention probabilities (Hq, C, end).

    Returns float64 CPU tensors (len(outputs) + 2, Hq) (len(outputs) without references): the
    errors over positions ``start`` to N, and over all positions."""
    q, k, v = (x[0].to(dtype) for x in (captured.q, captured.k, captured.v))
    num_heads, seq_len, num_kv = q.shape[0], q.shape[1], k.shape[0]
    q = q.unflatten(0, (num_kv, -1))  # (Hkv, G, N, D): the query heads of each kv head
    k, v = k[:, None], v[:, None]
    chunk = max(1, chunk_elements // (num_heads * seq_len))
    # squared norms (exact output, then the error of each output and reference) per head, before and from start
    sums = torch.zeros(len(outputs) + (1 if budget is None else 3), num_heads, 2, dtype=torch.float64,
                       device=q.device)
    for begin in range(0, seq_len, chunk):
        end = min(begin + chunk, seq_len)
        positions = torch.arange(begin, end, device=q.device)
        scores = (q[:, :, begin:end] @ k[:, :, :end].transpose(-1, -2)) * captured.scaling  # (Hkv, G, C, end)
        if budget is None:
            masks = [torch.arange(end, device=q.device) <= positions[:, None]]
        else:
            masks = reference_masks(scores, positions, budget, sinks)
        probs = [torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=-1) for mask in masks]
        if on_chunk is not None:
            on_chunk(begin, end, scores.flatten(0, 1), probs[0].flatten(0, 1))
        exact, *references = ((p @ v[:, :, :end]).flatten(0, 1) for p in probs)  # each (Hq, C, Dv)
        terms = [exact] + [out[0, :, begin:end].to(dtype) - exact for out in outputs]
        terms += [reference - exact for reference in references]
        split = min(max(start - begin, 0), end - begin)
        for index, term in enumerate(terms):
            squares = term.double().square().sum(-1)  # (Hq, C)
            sums[index, :, 0] += squares[:, :split].sum(-1)
            sums[index, :, 1] += squares[:, split:].sum(-1)
    approximated = (sums[1:, :, 1] / sums[0, :, 1]).sqrt()
    everywhere = (sums[1:].sum(-1) / sums[0].sum(-1)).sqrt()
    return approximated.cpu(), everywhere.cpu()


def layer_rows(layer: int, window: int, captured: CapturedAttention, config: HyperAttentionConfig | dict,
               seeds: list[int], budget: int, sinks: int, start: int) -> list[dict]:
    """One row per (config, seed, query head) of one captured layer: the errors of HyperAttention
    and of the references (``relative_errors``, computed once for every config). ``config``:
    one config, or {label: config} (rows then name their ``config``)."""
    configs = config if isinstance(config, dict) else {None: config}
    runs = [(label, seed) for label in configs for seed in seeds]
    outputs = [hyper_attention(captured.q, captured.k, captured.v, causal=True, scale=captured.scaling,
                               config=configs[label], seed=seed + layer) for label, seed in runs]
    approximated, everywhere = relative_errors(captured, outputs, budget, sinks, start)
    rows = []
    for r, (label, seed) in enumerate(runs):
        for head in range(captured.q.shape[1]):
            errors = {}
            for suffix, table in (("", approximated), ("_all", everywhere)):
                errors.update({f"hyper{suffix}": table[r, head].item(), f"topk{suffix}": table[-2, head].item(),
                               f"streaming{suffix}": table[-1, head].item()})
            labels = {} if label is None else {"config": label}
            rows.append(dict(layer=layer, head=head, window=window, seed=seed, **labels, **errors))
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means of every measure over ``rows``; the spread of the hyper error over (window, seed)
    (min and max of the mean over the rows of each); ratio of hyper to top-k error."""
    means = {measure: statistics.fmean(r[measure] for r in rows) for measure in MEASURES}
    runs = {}
    for r in rows:
        runs.setdefault((r["window"], r["seed"]), []).append(r["hyper"])
    per_run = [statistics.fmean(errors) for errors in runs.values()]
    return dict(**means, hyper_min=min(per_run), hyper_max=max(per_run), hyper_over_topk=means["hyper"] / means["topk"])


def evaluate_attention(model, tokenizer, text: str, seq_len: int, layers="all", num_windows: int = 1,
                       seeds: list[int] = (0,), config: HyperAttentionConfig | None = None, budget: int | None = None,
                       streaming_sinks: int = 16, include_sliding: bool = False,
                       compare: dict[str, HyperAttentionConfig] | None = None) -> dict:
    """Errors of HyperAttention and of the top-k and streaming references per layer, head,
    window and seed, on ``num_windows`` consecutive windows of ``seq_len`` tokens of ``text``.

    ``budget``: keys per query of the references (default ``default_budget(config)``), of
    which ``streaming_sinks`` are the streaming reference's sinks. ``layers``: as
    ``select_layers``; sliding-window layers are skipped unless ``include_sliding`` (then
    measured as full causal attention, which HyperAttention computes there). ``compare``:
    more configs {label: config} measured on the same inputs, positions and references (the
    positions ``config`` approximates).

    Returns {seq_len, config, budget, streaming_sinks, seeds, num_windows, layers, include_sliding,
    first_approximated, seconds, "rows": one per (layer, head, window, seed) of ``config``,
    "layer_summary": one ``summarize`` per layer, "summary": ``summarize`` of all rows}, and with
    ``compare``: "compare": {label: {"config", "summary", "rows"}}."""
    config = config or EVAL_CONFIG
    check_length(model, seq_len)
    budget = default_budget(config) if budget is None else budget
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if not 0 <= streaming_sinks <= budget:
        raise ValueError(f"streaming_sinks must be in [0, budget={budget}], got {streaming_sinks}")
    start = first_approximated(seq_len, config)
    chosen = captured_layers(model, layers, include_sliding)
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no layer (sliding-window layers need include_sliding)")
    compare = dict(compare or {})
    if BASE_LABEL in compare:
        raise ValueError(f"compare: the label {BASE_LABEL!r} names the evaluated config; choose another")
    configs = {BASE_LABEL: config, **compare}
    windows = token_windows(tokenizer, text, seq_len, num_windows)
    started = time.perf_counter()
    rows = []
    for window in range(num_windows):
        captured = capture_attention(model, windows[window], chosen)
        for layer in tqdm(chosen, desc=f"attention error, window {window}", unit="layer"):
            rows += layer_rows(layer, window, captured.pop(layer), configs, list(seeds), budget, streaming_sinks,
                               start)
    by_config = {label: [{k: v for k, v in r.items() if k != "config"} for r in rows if r["config"] == label]
                 for label in configs}
    rows = by_config.pop(BASE_LABEL)
    layer_summary = [dict(layer=layer, **summarize([r for r in rows if r["layer"] == layer])) for layer in chosen]
    result = dict(seq_len=seq_len, config=asdict(config), budget=budget, streaming_sinks=streaming_sinks,
                  seeds=list(seeds), num_windows=num_windows, layers=chosen, include_sliding=include_sliding,
                  first_approximated=start, seconds=time.perf_counter() - started, rows=rows,
                  layer_summary=layer_summary, summary=summarize(rows))
    if compare:
        result["compare"] = {label: dict(config=asdict(compare[label]), summary=summarize(label_rows), rows=label_rows)
                             for label, label_rows in by_config.items()}
    return result


def format_summary(result: dict) -> str:
    """Per layer and in total: mean errors of HyperAttention (with min and max over windows
    and seeds), top-k and streaming over the approximated positions, and over all positions."""
    header = (f"{'layer':>6} {'hyper':>7} {'min':>7} {'max':>7} {'top-k':>7} {'stream':>7} {'hyp/top':>7} |"
              f" {'all: hyper':>10} {'top-k':>7} {'stream':>7}")
    lines = [f"relative error of the output over positions {result['first_approximated']}..{result['seq_len'] - 1} "
             f"(| over all positions); references with {result['budget']} keys per query", header]
    for label, s in [(r["layer"], r) for r in result["layer_summary"]] + [("all", result["summary"])]:
        lines.append(_summary_line(f"{label:>6}", s))
    if "compare" in result:
        width = max(len(label) for label in result["compare"])
        lines += ["", "other configs, all layers:", f"{'config':>{width}}" + header[6:]]
        lines += [_summary_line(f"{label:>{width}}", c["summary"]) for label, c in result["compare"].items()]
    return "\n".join(lines)


def _summary_line(label: str, s: dict) -> str:
    return (f"{label} {s['hyper']:7.3f} {s['hyper_min']:7.3f} {s['hyper_max']:7.3f} {s['topk']:7.3f} "
            f"{s['streaming']:7.3f} {s['hyper_over_topk']:7.2f} | {s['hyper_all']:10.3f} {s['topk_all']:7.3f} "
            f"{s['streaming_all']:7.3f}")


def plot_attention_errors(result: dict, path: str, title: str) -> None:
    """Scatter of each head's HyperAttention error against its top-k error (means over
    windows and seeds), coloured by layer, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = {}
    for r in result["rows"]:
        heads.setdefault((r["layer"], r["head"]), []).append(r)
    layers = [layer for layer, _ in heads]
    topk = [statistics.fmean(r["topk"] for r in rows) for rows in heads.values()]
    hyper = [statistics.fmean(r["hyper"] for r in rows) for rows in heads.values()]
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(topk, hyper, c=layers, cmap="viridis", s=14)
    fig.colorbar(points, ax=ax, label="layer")
    top = max(topk + hyper)
    ax.plot([0, top], [0, top], color="gray", linestyle="--", label="HyperAttention = top-k")
    ax.set(xlabel=f"top-{result['budget']} error", ylabel="HyperAttention error", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
