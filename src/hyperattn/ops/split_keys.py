"""Exact attention of a few queries over many keys, with the keys split into chunks.

A kernel that parallelizes over query tiles gives a handful of query rows one program per
head, which then walks every key alone. Here the keys become C chunks run as one batch of
C problems (the queries repeated by a stride-0 view, no copy for batch 1), merged by
log-sum-exp afterwards: split-KV, as flash-decoding does for decoding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hyperattn.ops.merge import merge_attention_stack

# Keys per chunk: at 131k keys, 32 chunks.
KEY_CHUNK_LEN = 4096

Executor = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _chunks(x: torch.Tensor, num_chunks: int, chunk_len: int) -> torch.Tensor:
    """(B, H, N, D) -> (B * C, H, chunk_len, D): rows [0, C * chunk_len) as C problems per batch row
    (a view when B is 1)."""
    b, h, _, d = x.shape
    rows = x[:, :, :num_chunks * chunk_len].unflatten(2, (num_chunks, chunk_len))
    return rows.transpose(1, 2).reshape(b * num_chunks, h, chunk_len, d)


def exact_attention_split_keys(q, k, v, scale: float, causal: bool, execute: Executor,
                               chunk_len: int = KEY_CHUNK_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention (bottom-right causal) of q (B, Hq, Nq, D) over k (B, Hkv, Nk, D),
    v (B, Hkv, Nk, Dv), computed as chunks of ``chunk_len`` keys seen by every query plus one
    part with the remaining keys (causal there).

    ``execute(q, k, v, plan, scale, causal)`` is the executor (``plan`` None: exact); returns
    out (B, Hq, Nq, Dv) and lse (B, Hq, Nq) float32 (float64 for float64 inputs), differentiable.
    """
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    seen_by_all = nk - nq if causal else nk  # keys left of the causal corner
    num_chunks = seen_by_all // chunk_len
    if num_chunks < 2:
        return execute(q, k, v, None, scale, causal)
    split = num_chunks * chunk_len
    queries = q.unsqueeze(1).expand(b, num_chunks, hq, nq, q.shape[-1]).flatten(0, 1)
    out, lse = execute(queries, _chunks(k, num_chunks, chunk_len), _chunks(v, num_chunks, chunk_len), None, scale,
                       False)
    outs, lses = [out.unflatten(0, (b, num_chunks)).to(lse.dtype)], [lse.unflatten(0, (b, num_chunks))]
    if split < nk:  # the keys after the chunks (every causal query's own corner among them)
        rest_out, rest_lse = execute(q, k[:, :, split:], v[:, :, split:], None, scale, causal)
        outs.append(rest_out.unsqueeze(1).to(lse.dtype))
        lses.append(rest_lse.unsqueeze(1))
    return merge_attention_stack(torch.cat(outs, 1), torch.cat(lses, 1), dim=1)
