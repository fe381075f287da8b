"""Exact causal attention on the diagonal leaves of causal HyperAttention, by cuDNN.

The leaves are 2**L equal causal squares on the diagonal of the main square: query rows
``q_start + r * side + [0, side)`` against key rows ``k_start + r * side + [0, side)``.
For one batch row they are a strided (leaves, heads, side, dim) view of q, k and v, which
PyTorch's cuDNN attention op (``aten::_scaled_dot_product_cudnn_attention``, the kernel
behind ``scaled_dot_product_attention`` with the cuDNN backend, which also returns the
log-sum-exp) runs as one batch, with no copy of the inputs.

``HYPERATTN_LEAVES=triton`` turns this path off (the fused dense kernel runs the leaves).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch


@functools.cache
def _cudnn_works(device_index: int) -> bool:
    """Whether the cuDNN attention op runs on this GPU (it needs cuDNN 9 and a recent GPU);
    tried once per device on a small causal problem."""
    device = torch.device("cuda", device_index)
    try:
        x = torch.randn(2, 1, 128, 64, device=device, dtype=torch.bfloat16)
        cudnn_causal_forward(x, x, x, 0.125)
        return True
    except (RuntimeError, NotImplementedError) as error:
        warnings.warn(f"hyperattn: cuDNN attention is unavailable ({error}); the diagonal leaves run in Triton")
        return False


def cudnn_leaves_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``leaves_forward`` / ``leaves_backward`` can run these inputs: CUDA, fp16/bf16,
    one kv head per query head, equal head dims of at most 128 (multiples of 8)."""
    if os.environ.get("HYPERATTN_LEAVES", "cudnn") == "triton" or not q.is_cuda:
        return False
    d = q.shape[-1]
    return (q.dtype in (torch.float16, torch.bfloat16) and q.shape[1] == k.shape[1] and v.shape[-1] == d
            and d <= 128 and d % 8 == 0 and torch.backends.cudnn.is_available()
            and _cudnn_works(q.device.index if q.device.index is not None else torch.cuda.current_device()))


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


def cudnn_causal_backward(dout, q, k, v, out, lse, scale: float):
    """dq, dk, dv of ``cudnn_causal_forward`` for (N, H, S, D) tensors and lse (N, H, S, 1)."""
    side = q.shape[2]
    empty = torch.empty((), dtype=torch.int64, device=q.device)
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        dout, q, k, v, out, lse, empty, empty, None, None, None, side, side, 0.0, True, scale=scale)


def leaves_forward(q, k, v, q_start: int, k_start: int, side: int, num_leaves: int, scale: float):
    """out (B, H, num_leaves * side, Dv) in q's dtype and lse (B, H, num_leaves * side) float32
    of the causal leaves (any strides)."""
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
    part's share of the merged softmax. Returns dq, dk, dv of the leaf rows, each
    (B, H, num_leaves * side, *) in the inputs' dtype."""
    grads = ([], [], [])
    for b in range(q.shape[0]):
        views = [_leaf_view(x, b, q_start, side, num_leaves) for x in (dout, q)]
        views += [_leaf_view(x, b, k_start, side, num_leaves) for x in (k, v)]
        views += [_leaf_view(out, b, q_start, side, num_leaves),
                  _leaf_view(lse.unsqueeze(-1), b, q_start, side, num_leaves).contiguous()]
        for store, grad in zip(grads, cudnn_causal_backward(*views, scale)):
            store.append(_rows_of(grad))
    return tuple(_stack(g) for g in grads)
