"""Per-head treatments: a layer whose query heads take different attention, and the head plan
file that says, for each layer of a model, which treatment each query head takes.

    plan = HeadPlan.load("smollm2-8k.json")
    out = attention_by_head(q, k, v, plan.treatments(layer), causal=True, seed=0)

A treatment is ``None`` (exact attention) or a ``HyperAttentionConfig``. ``attention_by_head``
runs each treatment once over the query heads that take it, with the key/value heads they
read as views (never repeated per query head), and assembles the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import groupby
from pathlib import Path

import torch

from hyperattn.api import exact_attention, hyper_attention
from hyperattn.config import HyperAttentionConfig

EXACT = "exact"
FORMAT = "hyperattn-head-plan"
VERSION = 1

Treatment = HyperAttentionConfig | None


def _head_calls(treatments: Sequence[Treatment], num_kv_heads: int) -> list[tuple[Treatment, list[int], slice]]:
    """(treatment, query heads, kv heads) of each call: per treatment, the kv heads it touches are
    grouped by which of their query heads take it, and each contiguous run of kv heads with the
    same such heads is one call (one call in all where every touched kv head agrees)."""
    group = len(treatments) // num_kv_heads
    calls = []
    for treatment in dict.fromkeys(treatments):
        heads = [h for h, t in enumerate(treatments) if t == treatment]
        by_pattern: dict[tuple[int, ...], list[int]] = {}
        for kv in sorted({h // group for h in heads}):
            by_pattern.setdefault(tuple(h % group for h in heads if h // group == kv), []).append(kv)
        for pattern, kv_heads in by_pattern.items():
            for _, run in groupby(enumerate(kv_heads), key=lambda item: item[1] - item[0]):  # contiguous runs
                run = [kv for _, kv in run]
                calls.append((treatment, [kv * group + g for kv in run for g in pattern], slice(run[0], run[-1] + 1)))
    return calls


def attention_by_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, treatments: Sequence[Treatment],
                      causal: bool = False, scale: float | None = None, seed: int | None = None) -> torch.Tensor:
    """Attention whose query heads take different treatments.

    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), Hq a multiple of Hkv; query head h
    reads kv head ``h // (Hq // Hkv)``. ``treatments``: one per query head, ``None`` for exact
    attention (``exact_attention``) or a ``HyperAttentionConfig`` (``hyper_attention`` with
    ``seed``; every call of one treatment uses the same seed). Returns out (B, Hq, Nq, Dv),
    differentiable, each head as its treatment alone would compute it."""
    if isinstance(treatments, (str, HyperAttentionConfig)) or not isinstance(treatments, Sequence):
        raise TypeError(f"treatments must be a sequence of HyperAttentionConfig or None (one per query head), "
                        f"got {type(treatments).__name__}")
    if q.dim() != 4 or k.dim() != 4 or len(treatments) != q.shape[1]:
        raise ValueError(f"treatments: expected one per query head of q (B, Hq, Nq, D), got {len(treatments)} "
                         f"for q of shape {tuple(q.shape)}")
    for h, t in enumerate(treatments):
        if t is not None and not isinstance(t, HyperAttentionConfig):
            raise TypeError(f"treatments[{h}] must be a HyperAttentionConfig or None (exact), got {type(t).__name__}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"q's {q.shape[1]} heads must be a multiple of k's {k.shape[1]} kv heads")

    def run(treatment, q_heads, k_heads, v_heads):
        if treatment is None:
            return exact_attention(q_heads, k_heads, v_heads, causal=causal, scale=scale)
        return hyper_attention(q_heads, k_heads, v_heads, causal=causal, scale=scale, config=treatment, seed=seed)

    calls = _head_calls(list(treatments), k.shape[1])
    if len(calls) == 1:
        return run(calls[0][0], q, k, v)
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    for treatment, heads, kv in calls:
        out[:, heads] = run(treatment, q[:, heads], k[:, kv], v[:, kv])
    return out


@dataclass(frozen=True, kw_only=True)
class HeadPlan:
    """Which treatment each query head of each layer takes: a named config or exact.

    Fields:
        model: the model it was calibrated for (a name or path, for the reader).
        seq_len: the length it was calibrated at.
        configs: {treatment name: HyperAttentionConfig}; the name ``"exact"`` is reserved.
        layers: {layer index: one treatment name per query head}; layers not listed are exact.
        measured: what the calibration measured (free-form, JSON-serializable), e.g. the budget.
    Saved as JSON (``save``/``load``) with a format name and a version."""

    model: str
    seq_len: int
    configs: dict[str, HyperAttentionConfig]
    layers: dict[int, tuple[str, ...]]
    measured: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if EXACT in self.configs:
            raise ValueError(f"HeadPlan.configs: the name {EXACT!r} is reserved for exact attention; rename it")
        for name, config in self.configs.items():
            if not isinstance(config, HyperAttentionConfig):
                raise TypeError(f"HeadPlan.configs[{name!r}] must be a HyperAttentionConfig, "
                                f"got {type(config).__name__}")
        for layer, names in self.layers.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"HeadPlan.layers: layer indices are ints >= 0, got {layer!r}")
            unknown = sorted({n for n in names if n != EXACT and n not in self.configs})
            if unknown:
                raise ValueError(f"HeadPlan.layers[{layer}] names treatments {unknown} that configs does not "
                                 f"define (known: {[EXACT, *self.configs]})")

    def treatments(self, layer: int) -> tuple[Treatment, ...] | None:
        """Layer ``layer``'s treatment per query head (None: exact), or None if the plan does not list it."""
        names = self.layers.get(layer)
        return None if names is None else tuple(None if n == EXACT else self.configs[n] for n in names)

    def head_counts(self) -> dict[str, int]:
        """Query heads per treatment name over the listed layers."""
        counts = dict.fromkeys([EXACT, *self.configs], 0)
        for names in self.layers.values():
            for name in names:
                counts[name] += 1
        return counts

    def attention_cost(self, costs: dict[str, float]) -> float:
        """The plan's attention time as a share of exact attention's over its listed layers: the
        mean over their query heads of each treatment's time relative to exact attention
        (``costs[name]``, e.g. measured by ``hyperattn bench attention`` at the length of interest;
        exact heads 1). It takes every head of every listed layer to cost the same when exact
        (one shape) and a mixed layer to cost the sum of its parts."""
        missing = sorted(set(self.configs) - set(costs))
        if missing:
            raise ValueError(f"costs: no time given for treatments {missing} (relative to exact attention, "
                             f"e.g. {{{missing[0]!r}: 0.1}})")
        counts = self.head_counts()
        total = sum(counts.values())
        if total == 0:
            return 1.0
        return sum(n * (1.0 if name == EXACT else costs[name]) for name, n in counts.items()) / total

    def to_dict(self) -> dict:
        return dict(format=FORMAT, version=VERSION, model=self.model, seq_len=self.seq_len,
                    configs={name: asdict(c) for name, c in self.configs.items()},
                    layers={str(layer): list(names) for layer, names in sorted(self.layers.items())},
                    measured=self.measured)

    @classmethod
    def from_dict(cls, data: dict) -> HeadPlan:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a head plan: expected format {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"head plan version {data.get('version')!r} is not supported by this hyperattn "
                             f"(it reads version {VERSION}); calibrate again with this version")
        known = {f.name for f in fields(HyperAttentionConfig)}
        configs = {}
        for name, values in data["configs"].items():
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"head plan config {name!r} has fields {unknown} this hyperattn does not know")
            configs[name] = HyperAttentionConfig(**values)
        layers = {int(layer): tuple(names) for layer, names in data["layers"].items()}
        return cls(model=data["model"], seq_len=data["seq_len"], configs=configs, layers=layers,
                   measured=data.get("measured", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HeadPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))
