"""Public entry points: ``hyper_attention``, ``exact_attention`` and ``explain``."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import torch
from torch.nn.attention.bias import causal_lower_right

from hyperattn.config import HyperAttentionConfig, check_scale
from hyperattn.executors import compute_dtype, reference_attention
from hyperattn.executors.triton import TRITON_DTYPES, has_triton
from hyperattn.plan import CausalSchedule, causal_schedule, lsh_buckets, plan_hyper_attention

_SEED_MIN, _SEED_MAX = -(1 << 63), (1 << 64) - 1
logger = logging.getLogger("hyperattn")
# More query heads than this, over fewer positions than heads, is a layout mistake far more
# often than a model (the largest public models have at most 128 query heads).
_MOST_PLAUSIBLE_HEADS = 512


def _layout_hint(q, k) -> str:
    """A hint for errors where q and k look laid out (batch, seq_len, heads, head_dim)."""
    if q.dim() == 4 and k.dim() == 4 and q.shape[1] > q.shape[2] and k.shape[1] > k.shape[2]:
        return ("; q and k look laid out (batch, seq_len, heads, head_dim): hyper_attention takes (batch, heads, "
                "seq_len, head_dim), so pass q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)")
    return ""


def _check_inputs(q, k, v, causal) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dims (batch, heads, seq_len, head_dim), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    (bq, hq, nq, dq), (bk, hk, nk, dk), (bv, hv, nv, _) = q.shape, k.shape, v.shape
    if not bq == bk == bv:
        raise ValueError(f"q, k and v must share the batch size (dim 0), got {bq}, {bk} and {bv}")
    if hk != hv or nk != nv:
        raise ValueError(
            f"k and v must agree in heads and seq_len (dims 1, 2), got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if dq != dk:
        raise ValueError(f"q and k must share head_dim (dim 3), got {dq} and {dk}")
    if dq == 0:
        raise ValueError("head_dim of q and k must be >= 1, got 0")
    if hk == 0 and hq > 0 or hk > 0 and hq % hk != 0:
        raise ValueError(
            f"q's heads (dim 1) must be a multiple of k's and v's heads (grouped-query attention), got {hq} and "
            f"{hk}{_layout_hint(q, k)}"
        )
    if causal and nq > nk:
        raise ValueError(
            f"causal attention needs q's seq_len (dim 2) <= k's seq_len (queries are aligned to the last keys), "
            f"got {nq} > {nk}{_layout_hint(q, k)}"
        )
    if hq > _MOST_PLAUSIBLE_HEADS and nq < hq:
        warnings.warn(f"q has {hq} heads (dim 1) and {nq} positions (dim 2){_layout_hint(q, k) or ''}; attention "
                      "runs over dim 2", stacklevel=3)


def _empty_result(q, v, return_lse):
    b, h, n, _ = q.shape
    out = q.new_zeros(b, h, n, v.shape[-1])
    lse = torch.full((b, h, n), -torch.inf, dtype=compute_dtype(q.dtype), device=q.device)
    return (out, lse) if return_lse else out


def _finish(q, out, lse, return_lse):
    out = out.to(q.dtype)
    if not return_lse:
        return out
    return out, lse.to(compute_dtype(q.dtype))


def _use_triton(q: torch.Tensor, impl: str, samples_beside_selection: bool = False) -> bool:
    """Path choice: fused Triton kernels or the PyTorch reference executor (the only one that
    samples beside ``selected_blocks``)."""
    if impl == "reference":
        return False
    if samples_beside_selection and impl == "triton":
        raise ValueError("config.selected_blocks with sample_size > 0 runs in the reference executor only; use "
                         "sample_size=0 (the selected blocks replace the residual's samples), impl='auto' or "
                         "impl='reference'")
    if samples_beside_selection:
        return False
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    available = has_triton() and (q.is_cuda or interpreting)
    if impl == "triton":
        if not available:
            raise ValueError(
                f"config.impl='triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1), got a tensor on "
                f"{q.device}; use impl='auto' or 'reference'"
            )
        if q.dtype not in TRITON_DTYPES:
            raise TypeError(
                f"config.impl='triton' supports float16 and bfloat16 inputs, got {q.dtype}; "
                f"use impl='auto' or 'reference'"
            )
        return True
    return available and q.is_cuda and q.dtype in TRITON_DTYPES


def _exact(q, k, v, scale, causal, return_lse, use_triton):
    """Exact attention: PyTorch SDPA for the output alone; with lse, the fused kernel or
    the reference executor."""
    if return_lse:
        return _finish(q, *_execute(q, k, v, None, scale, causal, use_triton), True)
    nq, nk = q.shape[2], k.shape[2]
    mask = causal_lower_right(nq, nk) if causal and nq != nk else None  # bottom-right, never materialized
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and nq == nk, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def _resolve_seed(seed) -> int:
    """``seed`` checked, or one drawn from PyTorch's global CPU generator when None."""
    if seed is None:
        return int(torch.randint(0, 1 << 62, (1,)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not _SEED_MIN <= seed <= _SEED_MAX:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    return seed


@torch.compiler.disable
def _plan(q, k, v, causal: bool, config: HyperAttentionConfig, seed: int, use_triton: bool, scale: float,
          head_shard: tuple[int, int] | None = None):
    """The plan of one call, drawn by a generator on q's device seeded with ``seed``. Under
    ``torch.compile`` it runs eagerly as one piece: Dynamo cannot trace generator draws, and
    would otherwise break the graph at each of them."""
    generator = torch.Generator(device=q.device).manual_seed(seed)
    if use_triton and q.is_cuda:
        from hyperattn.executors.triton.hashing import lsh_buckets_triton
        from hyperattn.executors.triton.probes import probe_key_mass_triton
        from hyperattn.executors.triton.selection import refine_selection_triton, select_key_blocks_triton
        return plan_hyper_attention(q, k, v, causal, config, generator, lsh_buckets_triton, scale,
                                    probe_key_mass_triton, select_key_blocks_triton, refine_selection_triton,
                                    head_shard=head_shard)
    return plan_hyper_attention(q, k, v, causal, config, generator, lsh_buckets, scale, head_shard=head_shard)


# The reference executor's data-dependent shapes (block layouts) would break a compiled graph
# many times and recompile per level; under torch.compile it runs eagerly as one piece.
_reference_attention_eager = torch.compiler.disable(reference_attention)


@dataclass(frozen=True)
class Explanation:
    """How ``hyper_attention`` runs a call (``explain``).

    ``path``: "empty" (no queries or keys), "exact" or "approximate". ``executor``: what computes
    it: "sdpa" (PyTorch's fused attention), "triton" (the fused kernels) or "reference" (the
    PyTorch reference executor); None for empty calls. ``reason``: why, in words. ``schedule``:
    the causal recursion of an approximate causal call (``hyperattn.plan.CausalSchedule``)."""

    path: str
    executor: str | None
    reason: str
    schedule: CausalSchedule | None = None

    def __str__(self) -> str:
        lines = [f"{self.path} attention" + (f" by {self.executor}" if self.executor else "") + f": {self.reason}"]
        s = self.schedule
        if s is not None:
            lines.append(f"causal schedule: {s.num_leaves} exact diagonal leaves of {s.leaf_len} queries, "
                         f"{s.num_levels} levels of approximated rectangles, {s.head_len} exact head rows, "
                         f"{s.prefix_keys} prefix keys")
        return "\n".join(lines)


def _explain(q, k, causal: bool, config: HyperAttentionConfig, return_lse: bool) -> Explanation:
    """The route of a checked call (``hyper_attention`` follows it)."""
    nq, nk = q.shape[2], k.shape[2]
    use_triton = _use_triton(q, config.impl, config.selected_blocks > 0 and config.sample_size > 0)
    if config.exact_window and not causal:
        raise ValueError("config.exact_window applies to causal attention; got causal=False")
    if q.numel() == 0 or nk == 0:
        return Explanation("empty", None, f"{nq} queries, {nk} keys")
    kernel = "triton" if use_triton else "reference"
    if config.runs_exact(nq, nk, causal):
        if nq <= max(config.min_seq_len, config.exact_tail):
            why = f"{nq} queries <= max(min_seq_len={config.min_seq_len}, exact_tail={config.exact_tail})"
        else:
            why = (f"{nq} x {nk} {'causal ' if causal else ''}attention costs no more than causal attention over "
                   f"exact_up_to={config.exact_up_to} tokens")
        return Explanation("exact", kernel if return_lse else "sdpa", why + ("; with lse" if return_lse else ""))
    device = "fp16/bf16 CUDA tensors" if use_triton else f"{q.dtype} on {q.device}"
    if config.selected_blocks and config.sample_size and config.impl == "auto":
        device = "selected_blocks with sample_size > 0 (the fused kernels sample only without selection)"
    why = f"{nq} queries over {nk} keys above the exactness limits; {device}, impl={config.impl!r}"
    return Explanation("approximate", kernel, why, causal_schedule(nq, nk, config.min_seq_len) if causal else None)


def explain(q, k, v, causal: bool = False, config: HyperAttentionConfig | None = None, return_lse: bool = False
            ) -> Explanation:
    """How ``hyper_attention(q, k, v, causal=causal, config=config, return_lse=return_lse)`` would
    run: exact or approximate, by which executor, and why (``print`` it). Checks the inputs as
    the call does; computes nothing. The same route is logged at DEBUG level by the
    ``"hyperattn"`` logger on every eager call (not inside ``torch.compile``)."""
    _check_inputs(q, k, v, causal)
    return _explain(q, k, causal, _check_config(config), return_lse)


def _check_head_shard(head_shard, num_kv_heads: int) -> None:
    if head_shard is None:
        return
    if (not isinstance(head_shard, tuple) or len(head_shard) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in head_shard)):
        raise TypeError(f"head_shard must be None or a tuple (first, total) of two ints, got {head_shard!r}")
    first, total = head_shard
    if first < 0 or first + num_kv_heads > total:
        raise ValueError(f"head_shard=(first, total) needs 0 <= first and first + k's heads <= total, got "
                         f"{head_shard} with {num_kv_heads} kv heads (dim 1 of k); first counts kv heads, not "
                         "query heads")


def _check_config(config) -> HyperAttentionConfig:
    if config is None:
        return HyperAttentionConfig()
    if not isinstance(config, HyperAttentionConfig):
        raise TypeError(f"config must be a HyperAttentionConfig or None, got {type(config).__name__}")
    return config


def exact_attention(q, k, v, causal: bool = False, scale: float | None = None, return_lse: bool = False):
    """Exact softmax attention with grouped kv heads and bottom-right causal alignment.

    Args:
        q: (B, Hq, Nq, D); k: (B, Hkv, Nk, D); v: (B, Hkv, Nk, Dv); Hq a multiple of Hkv.
        causal: query i sees keys ``j <= Nk - Nq + i`` (requires Nq <= Nk).
        scale: softmax scale, default ``D ** -0.5``.
        return_lse: also return the natural-log log-sum-exp of each row.
    Returns:
        out (B, Hq, Nq, Dv) in q's dtype, and with ``return_lse`` lse (B, Hq, Nq) float32
        (float64 for float64 inputs). The output alone comes from PyTorch's
        ``scaled_dot_product_attention``; with ``return_lse`` both come from the fused kernel
        (fp16/bf16 CUDA tensors) or the reference executor (``hyperattn.executors.reference``).
    """
    _check_inputs(q, k, v, causal)
    scale = check_scale(scale, q.shape[-1])
    if q.numel() == 0 or k.shape[2] == 0:
        return _empty_result(q, v, return_lse)
    return _exact(q, k, v, scale, causal, return_lse, _use_triton(q, "auto"))


def hyper_attention(
    q,
    k,
    v,
    causal: bool = False,
    scale: float | None = None,
    config: HyperAttentionConfig | None = None,
    seed: int | None = None,
    return_lse: bool = False,
    head_shard: tuple[int, int] | None = None,
):
    """HyperAttention: attention in near-linear time through sortLSH blocks and sampled keys.

    Args:
        q: (B, Hq, Nq, D) floating; k: (B, Hkv, Nk, D); v: (B, Hkv, Nk, Dv); one dtype and
            device. Hq must be a multiple of Hkv: query head h reads kv head ``h // (Hq // Hkv)``.
        causal: aligned bottom-right as in FlashAttention 2.1+: query i sits at position
            ``Nk - Nq + i`` and sees keys ``j <= Nk - Nq + i``; requires Nq <= Nk.
        scale: softmax scale, default ``D ** -0.5``.
        config: hyperparameters; default ``HyperAttentionConfig()`` (the paper's, plus 16 exact
            sinks, an exact tail of 64 queries, short inputs run exactly (``exact_up_to``) and the
            strictly causal bucket rule (``query_blocks``)).
        seed: decides the LSH directions and the sampled keys (drawn by a generator on q's
            device): the same seed and inputs on the same device give bit-identical results.
            None draws a seed from PyTorch's global CPU generator (so ``torch.manual_seed``
            makes runs repeatable).
        return_lse: also return the log-sum-exp of each row of the (approximate) attention.
        head_shard: ``(first, total)`` when the heads of one attention are split across calls (tensor or
            context parallelism): k's Hkv heads are kv heads ``first`` to ``first + Hkv - 1`` of ``total``
            (q's heads are theirs). With the seed of the whole, the call returns what the whole call
            returns for these heads. None: ``(0, Hkv)``.
    Returns:
        out (B, Hq, Nq, Dv) in q's dtype; with ``return_lse`` also lse (B, Hq, Nq) float32
        (float64 for float64 inputs).

    Short inputs are exact (PyTorch SDPA; ``HyperAttentionConfig.runs_exact``: at most
    ``config.min_seq_len`` queries, or no more work than causal attention over
    ``config.exact_up_to`` tokens). Longer inputs run fused Triton kernels for fp16/bf16
    CUDA tensors and the PyTorch reference executor otherwise (fp32 and fp64 inputs, CPU);
    ``config.impl`` overrides the choice.
    Gradients are those of the computed approximation for its fixed plan (hashes, samples and
    sample weights are constants), including every path through the log-sum-exp merges.
    """
    _check_inputs(q, k, v, causal)
    scale = check_scale(scale, q.shape[-1])
    config = _check_config(config)
    seed = _resolve_seed(seed)
    _check_head_shard(head_shard, k.shape[1])
    route = _explain(q, k, causal, config, return_lse)
    if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):  # Dynamo cannot trace loggers
        logger.debug("hyper_attention %s: %s", tuple(q.shape), route)
    if route.path == "empty":
        return _empty_result(q, v, return_lse)
    use_triton = route.executor == "triton"
    if route.path == "exact":
        return _exact(q, k, v, scale, causal, return_lse, use_triton)
    plan = _plan(q, k, v, causal, config, seed, use_triton, scale, head_shard)
    return _finish(q, *_execute(q, k, v, plan, scale, causal, use_triton, config.exact_tail), return_lse)


def _execute(q, k, v, plan, scale, causal, use_triton, tail=0):
    """(out, lse) of ``plan`` (None: exact attention, bottom-right causal), the last ``tail``
    rows exact, by the fused kernels or the reference executor."""
    if use_triton:
        from hyperattn.executors.triton.op import triton_attention

        return triton_attention(q, k, v, plan, scale, causal, tail)
    return _reference_attention_eager(q, k, v, plan, scale, causal, tail)
