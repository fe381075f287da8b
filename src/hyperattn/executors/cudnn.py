"""Exact causal attention on the diagonal leaves of causal HyperAttention, and every query's
attention over its rectangle's heavy keys (``heavy_keys_forward``), by cuDNN.

The leaves are 2**L equal causal squares on the diagonal of the main square: query rows
``q_start + r * side + [0, side)`` against key rows ``k_start + r * side + [0, side)``.
For one batch row they are a strided (leaves, heads, side, dim) view of q, k and v, which
PyTorch's cuDNN attention op (``aten::_scaled_dot_product_cudnn_attention``, the kernel
behind ``scaled_dot_product_attention`` with the cuDNN backend, which also returns the
log-sum-exp) runs as one batch, with no copy of the inputs.

cuDNN builds a graph for every new shape and stride pattern (a one-time cost per shape,
not measured here), and every sequence length gives the leaves a new one. The environment
variable ``HYPERATTN_LEAVES`` decides:

- ``auto`` (default): cuDNN for a leaf (or heavy-key) geometry from its second call on
  (training and repeated prefill at one length pay the build once; one-off lengths never do);
- ``cudnn``: cuDNN whenever it can run them;
- ``triton``: never (the fused kernels run them).

cuDNN runs only while PyTorch's cuDNN attention is switched on
(``torch.backends.cuda.enable_cudnn_sdp``) and deterministic algorithms are not required,
for fp16/bf16 CUDA inputs with whole groups of query heads per kv head and equal head dims of at most
128 (a multiple of 8), where a first small forward and backward succeeded (checked once
per device, dtype and head dim; no random draws), and never for the first time inside a
CUDA graph capture.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

LEAF_ENGINES = ("auto", "cudnn", "triton")
_seen_geometries: set[tuple] = set()  # leaf geometries called at least once (for "auto")
_cudnn_geometries: set[tuple] = set()  # leaf geometries cuDNN has run (their graphs exist)
# Query elements (rows x heads x head dim) one cuDNN backward call takes at most: its gradients and
# its float32 dq workspace hold about 10 bytes per element beside the accumulators, so the
# leaves' backward runs over groups of kv heads (5 GiB a call); at 1M tokens and head dim 128
# a forward+backward then fits one H200.
LEAF_BACKWARD_ELEMENTS = 2**29


@contextlib.contextmanager
def leaf_backward_elements(elements: int):
    """Within the block, a cuDNN leaf backward call takes at most ``elements`` query elements
    (``LEAF_BACKWARD_ELEMENTS``; at least one kv head a call): the GPU check runs the grouped path
    at small sizes with it."""
    global LEAF_BACKWARD_ELEMENTS
    saved, LEAF_BACKWARD_ELEMENTS = LEAF_BACKWARD_ELEMENTS, elements
    try:
        yield
    finally:
        LEAF_BACKWARD_ELEMENTS = saved


def leaf_engine_setting() -> str:
    """``HYPERATTN_LEAVES``, checked: one of ``LEAF_ENGINES``."""
    value = os.environ.get("HYPERATTN_LEAVES", "auto")
    if value not in LEAF_ENGINES:
        raise ValueError(f"HYPERATTN_LEAVES must be one of {', '.join(LEAF_ENGINES)}, got {value!r}")
    return value


def cudnn_shapes_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """The shape and dtype rules of this path: fp16/bf16, whole groups of query heads per kv head, equal
    head dims of at most 128 and a multiple of 8."""
    d = q.shape[-1]
    return (q.dtype in (torch.float16, torch.bfloat16) and q.shape[1] % k.shape[1] == 0 and v.shape[-1] == d
            and d <= 128 and d % 8 == 0)


@functools.cache
def _cudnn_works(device: torch.device, dtype: torch.dtype, head_dim: int, group: int = 1) -> bool:
    """Whether cuDNN's attention forward and backward run here for this dtype, head dim and
    number of query heads per kv head, with key gradients of the kv heads' shape; tried once on
    a small causal problem of zeros (no random draws)."""
    q = torch.zeros(2, group, 128, head_dim, device=device, dtype=dtype)
    kv = q[:, :1]
    try:
        out, lse = cudnn_causal_forward(q, kv, kv, 0.125)
        dq, dk, dv = cudnn_causal_backward(q, q, kv, kv, out, lse, 0.125)
        if dq.shape != q.shape or dk.shape != kv.shape or dv.shape != kv.shape:
            raise RuntimeError(f"gradients of shapes {tuple(dq.shape)}, {tuple(dk.shape)}, {tuple(dv.shape)}")
        return True
    except Exception as error:  # any failure means: not here
        warnings.warn(f"hyperattn: cuDNN attention does not run here for {group} query heads per kv head "
                      f"({type(error).__name__}: {error}); the diagonal leaves run in Triton")
        return False


def _cudnn_switched_on() -> bool:
    """PyTorch's switches for cuDNN attention: ``torch.backends.cuda.enable_cudnn_sdp`` and
    deterministic algorithms (cuDNN's attention backward is not deterministic)."""
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    return torch.backends.cuda.cudnn_sdp_enabled() and not strict


def use_cudnn_leaves(q, k, v, side: int, num_leaves: int, direction: str) -> bool:
    """Whether cuDNN runs the leaves of this call's ``direction`` ("forward" or "backward"),
    or with direction "heavy" the heavy keys of ``num_leaves`` rectangles (``side``: their queries
    and heavy keys) (``heavy_keys_forward``; ``HYPERATTN_LEAVES`` decides for both)."""
    setting = leaf_engine_setting()
    if setting == "triton" or not q.is_cuda or not cudnn_shapes_supported(q, k, v):
        return False
    if not _cudnn_switched_on():
        return False
    # what decides cuDNN's graphs: the leaf views' shapes and strides, which follow from these,
    # and in the backward the heads a call takes (LEAF_BACKWARD_ELEMENTS)
    geometry = (direction, q.device, q.dtype, side, num_leaves,
                *((x.shape[1], x.shape[-1], *x.stride()[1:]) for x in (q, k, v)),
                LEAF_BACKWARD_ELEMENTS if direction == "backward" else None)
    return decide_leaf_engine(setting, geometry, torch.cuda.is_current_stream_capturing(),
                              lambda: _cudnn_works(q.device, q.dtype, q.shape[-1], q.shape[1] // k.shape[1]))


def decide_leaf_engine(setting: str, geometry: tuple, capturing: bool, cudnn_works) -> bool:
    """The policy for inputs cuDNN can take: True for cuDNN. ``geometry`` identifies the
    call's cuDNN graph; ``cudnn_works()`` runs the one-time probe. Inside a CUDA graph capture
    only geometries cuDNN already ran qualify (no probe, no graph build)."""
    if capturing:
        return geometry in _cudnn_geometries
    if setting == "auto" and geometry not in _seen_geometries:
        _seen_geometries.add(geometry)
        return False
    if not cudnn_works():
        return False
    _cudnn_geometries.add(geometry)
    return True


def _leaf_view(x: torch.Tensor, batch: int, start: int, side: int, num_leaves: int) -> torch.Tensor:
    """(num_leaves, H, side, *) view of rows ``start + r * side + [0, side)`` of ``x[batch]``."""
    rows = x[batch, :, start:start + num_leaves * side]
    return rows.unflatten(1, (num_leaves, side)).transpose(0, 1)


def _rows_of(leaf: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_leaf_view``: (num_leaves, H, side, *) -> (H, num_leaves * side, *)."""
    return leaf.transpose(0, 1).flatten(1, 2)


def _stack(per_batch: list[torch.Tensor]) -> torch.Tensor:
    return per_batch[0].unsqueeze(0) if len(per_batch) == 1 else torch.stack(per_batch)


def cudnn_causal_forward(q, k, v, scale: float):
    """cuDNN causal attention of (N, H, S, D) q, k, v (any strides): out (N, H, S, D) and
    lse (N, H, S, 1) float32."""
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False, scale=scale)
    return result[0], result[1]


def cudnn_full_forward(q, k, v, scale: float):
    """cuDNN attention of (N, H, Sq, D) q over (N, Hkv, Sk, D) k, v (any strides), every query
    seeing every key: out (N, H, Sq, D) and lse (N, H, Sq, 1) float32."""
    result = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)
    return result[0], result[1]


def heavy_keys_forward(q, k, v, heavy_rows: torch.Tensor, q_start: int, q_stride: int, num_queries: int, count: int,
                       scale: float):
    """Attention of each rectangle's queries over its heavy keys, by cuDNN (one call per batch row):
    rectangle r of batch row b holds the query rows ``q_start + r * q_stride + [0, num_queries)`` of
    q (B, Hq, Nq, D) and attends to the rows ``heavy_rows[b * count + r]`` (int64 (B * count, Hkv,
    heavy)) of k and v (B, Hkv, Nk, *), all of them. The keys are gathered (a few hundred rows a
    rectangle); the queries are a strided view. Returns out (B, count, Hq, num_queries, Dv) in q's
    dtype and lse (B, count, Hq, num_queries) float32, any strides."""
    batch, heads, _, d = q.shape
    num_kv_heads = k.shape[1]
    kv_heads = torch.arange(num_kv_heads, device=q.device)[None, :, None]
    outs, lses = [], []
    for b in range(batch):
        rows = heavy_rows[b * count:(b + 1) * count]  # (count, Hkv, heavy)
        keys, values = k[b][kv_heads, rows], v[b][kv_heads, rows]
        queries = q[b].as_strided((count, heads, num_queries, d), (q_stride * q.stride(2), q.stride(1), q.stride(2),
                                                                    q.stride(3)),
                                  q[b].storage_offset() + q_start * q.stride(2))
        out, lse = cudnn_full_forward(queries, keys, values, scale)
        outs.append(out)
        lses.append(lse.squeeze(-1))
    return _stack(outs), _stack(lses)


def cudnn_causal_backward(dout, q, k, v, out, lse, scale: float):
    """dq, dk, dv of ``cudnn_causal_forward`` for (N, H, S, D) tensors and lse (N, H, S, 1)."""
    side = q.shape[2]
    empty = torch.empty((), dtype=torch.int64, device=q.device)
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        dout, q, k, v, out, lse, empty, empty, None, None, None, side, side, 0.0, True, scale=scale)


def leaves_forward(q, k, v, q_start: int, k_start: int, side: int, num_leaves: int, scale: float):
    """out (B, H, num_leaves * side, Dv) in q's dtype and lse (B, H, num_leaves * side) float32
    of the causal leaves (any strides; one cuDNN call per batch row)."""
    outs, lses = [], []
    for b in range(q.shape[0]):
        out, lse = cudnn_causal_forward(_leaf_view(q, b, q_start, side, num_leaves),
                                        _leaf_view(k, b, k_start, side, num_leaves),
                                        _leaf_view(v, b, k_start, side, num_leaves), scale)
        outs.append(_rows_of(out))
        lses.append(_rows_of(lse.squeeze(-1)))
    return _stack(outs), _stack(lses)


def leaves_backward(dout, q, k, v, out, lse, q_start: int, k_start: int, side: int, num_leaves: int, scale: float):
    """Gradients of the leaves' part of a merged attention whose final output and lse are
    ``out`` (B, H, Nq, Dv) and ``lse`` (B, H, Nq) float32, for ``dout`` (and no lse gradient):
    cuDNN recomputes the leaves' probabilities against the final lse, which is exactly this
    part's share of the merged softmax. Yields ``(b, kv_lo, kv_hi, dq, dk, dv)`` per cuDNN call:
    the gradients of batch row ``b``'s leaf rows for kv heads [kv_lo, kv_hi) and their query
    heads, each (1, heads, num_leaves * side, *) in the inputs' dtype; a call takes at most
    ``LEAF_BACKWARD_ELEMENTS`` query elements (at least one kv head)."""
    group = q.shape[1] // k.shape[1]
    kv_per_call = max(1, LEAF_BACKWARD_ELEMENTS // (num_leaves * side * group * q.shape[-1]))
    for b in range(q.shape[0]):
        q_views = [_leaf_view(x, b, q_start, side, num_leaves) for x in (dout, q, out, lse.unsqueeze(-1))]
        k_views = [_leaf_view(x, b, k_start, side, num_leaves) for x in (k, v)]
        for kv_lo in range(0, k.shape[1], kv_per_call):
            kv_hi = min(kv_lo + kv_per_call, k.shape[1])
            dout_h, q_h, out_h, lse_h = (x[:, kv_lo * group:kv_hi * group] for x in q_views)
            k_h, v_h = (x[:, kv_lo:kv_hi] for x in k_views)
            grads = cudnn_causal_backward(dout_h, q_h, k_h, v_h, out_h, lse_h.contiguous(), scale)
            yield (b, kv_lo, kv_hi, *(_rows_of(grad).unsqueeze(0) for grad in grads))
            del grads  # so that one call's gradients at most are live
