"""Per-query key blocks: each query's own choice of a few runs of consecutive keys, by its score
against each run's mean key (``HyperAttentionConfig.selected_blocks``)."""

from __future__ import annotations

import torch

# Query-centroid scores materialized at once by select_key_blocks (elements): on CPU, and on CUDA.
SELECTION_CHUNK_ELEMENTS = 1 << 24
SELECTION_CHUNK_ELEMENTS_CUDA = 1 << 28
# Coarse blocks a query keeps per selected block in a two-stage selection (selection_coarse_size)
COARSE_PER_SELECTED = 2


def block_centroids(k: torch.Tensor, live: torch.Tensor | None, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean key of each run of ``block_size`` consecutive keys, over its keys that ``live`` marks.

    k (Z, Hkv, Nk, D); live (Z, Hkv, Nk) bool or None (every key). Returns centroids
    (Z, Hkv, ceil(Nk / block_size), D) in float32 (float64 for float64 k) and a bool mask
    (Z, Hkv, blocks) of the blocks with at least one live key (the last block may be short)."""
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    z, hkv, nk, d = k.shape
    num_blocks = -(-nk // block_size)
    pad = num_blocks * block_size - nk
    weights = torch.ones(z, hkv, nk, dtype=dtype, device=k.device) if live is None else live.to(dtype)
    weights = torch.nn.functional.pad(weights, (0, pad)).view(z, hkv, num_blocks, block_size)
    keys = torch.nn.functional.pad(k.detach().to(dtype), (0, 0, 0, pad)).view(z, hkv, num_blocks, block_size, d)
    counts = weights.sum(-1)
    sums = (keys * weights[..., None]).sum(-2)
    return sums / counts.clamp_min(1)[..., None], counts > 0


def select_key_blocks(q: torch.Tensor, k: torch.Tensor, live: torch.Tensor | None, block_size: int,
                      num_selected: int) -> torch.Tensor:
    """Each query's ``num_selected`` blocks of ``block_size`` consecutive keys with the largest
    score ``q . mean(key block)`` (means over the live keys, in float32, scored in q's dtype when
    that is fp16 or bf16; blocks without any are never chosen while others remain).

    q (Z, Hq, Nq, D), k (Z, Hkv, Nk, D) with Hq a multiple of Hkv; live (Z, Hkv, Nk) bool or None.
    Returns int64 (Z, Hq, Nq, min(num_selected, blocks)): block indices (keys
    ``[b * block_size, (b + 1) * block_size)``), ascending. A query's choice depends on its own
    vector and the keys only, so a causal rectangle's selection stays strictly causal. Queries are
    scored in chunks of at most ``SELECTION_CHUNK_ELEMENTS`` scores (``SELECTION_CHUNK_ELEMENTS_CUDA``
    on CUDA)."""
    centroids, has_live = block_centroids(k, live, block_size)
    z, hq, nq, d = q.shape
    hkv, num_blocks = k.shape[1], centroids.shape[2]
    groups = hq // hkv
    count = min(num_selected, num_blocks)
    if q.dtype in (torch.float16, torch.bfloat16):  # the tensor cores' dtype: scores rounded as q is
        centroids = centroids.to(q.dtype)
    grouped = q.detach().to(centroids.dtype).view(z, hkv, groups, nq, d)
    dead = ~has_live[:, :, None, None, :]
    budget = SELECTION_CHUNK_ELEMENTS_CUDA if q.is_cuda else SELECTION_CHUNK_ELEMENTS
    chunk = max(1, budget // max(1, z * hq * num_blocks))
    picks = []
    for lo in range(0, nq, chunk):
        scores = torch.einsum("zhgqd,zhbd->zhgqb", grouped[:, :, :, lo:lo + chunk], centroids)
        picks.append(scores.masked_fill(dead, -torch.inf).topk(count, -1).indices)
    selected = torch.cat(picks, 3) if len(picks) != 1 else picks[0]
    return selected.sort(-1).values.view(z, hq, nq, count)


def refine_selection(q: torch.Tensor, k: torch.Tensor, live: torch.Tensor | None, block_size: int,
                     num_selected: int, coarse: torch.Tensor, coarse_size: int) -> torch.Tensor:
    """Each query's ``num_selected`` best blocks of ``block_size`` keys among those inside its
    ``coarse`` blocks (int64 (Z, Hq, Nq, m): distinct blocks of ``coarse_size`` keys), scored as
    ``select_key_blocks`` scores; blocks without a live key only where too few live ones remain.
    Returns int64 (Z, Hq, Nq, min(num_selected, blocks)), ascending."""
    centroids, has_live = block_centroids(k, live, block_size)
    z, hq, nq, d = q.shape
    hkv, num_blocks = k.shape[1], centroids.shape[2]
    count = min(num_selected, num_blocks)
    if q.dtype in (torch.float16, torch.bfloat16):
        centroids = centroids.to(q.dtype)
    ratio = coarse_size // block_size
    candidates = (coarse[..., None] * ratio + torch.arange(ratio, device=q.device)).flatten(-2)  # ascending
    inside = candidates < num_blocks  # the last coarse block may hold fewer blocks
    candidates = candidates.clamp(max=num_blocks - 1)
    per_head = torch.arange(hq, device=q.device) // (hq // hkv)  # each query head's kv head
    centroids, has_live = centroids[:, per_head], has_live[:, per_head]
    width = candidates.shape[-1]
    budget = SELECTION_CHUNK_ELEMENTS_CUDA if q.is_cuda else SELECTION_CHUNK_ELEMENTS
    chunk = max(1, budget // max(1, z * hq * width * d))
    picks = []
    for lo in range(0, nq, chunk):
        cand = candidates[:, :, lo:lo + chunk]
        flat = cand.flatten(2)
        means = centroids.gather(2, flat[..., None].expand(-1, -1, -1, d)).view(*cand.shape, d)
        scores = torch.einsum("zhqd,zhqcd->zhqc", q[:, :, lo:lo + chunk].detach().to(means.dtype), means)
        # blocks without a live key only where too few live ones remain; blocks past the end never
        scores = scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
        scores = scores.masked_fill(~has_live.gather(2, flat).view(cand.shape), torch.finfo(scores.dtype).min)
        scores = scores.masked_fill(~inside[:, :, lo:lo + chunk], -torch.inf)
        picks.append(cand.gather(-1, scores.topk(count, -1).indices))
    selected = torch.cat(picks, 2) if len(picks) != 1 else picks[0]
    return selected.sort(-1).values


def select_coarse_to_fine(q: torch.Tensor, k: torch.Tensor, live: torch.Tensor | None, block_size: int,
                          num_selected: int, coarse_size: int, select_blocks=select_key_blocks,
                          refine_blocks=refine_selection) -> torch.Tensor:
    """``select_key_blocks`` in two stages (``HyperAttentionConfig.selection_coarse_size``): each
    query's ``COARSE_PER_SELECTED * num_selected`` best blocks of ``coarse_size`` keys by
    ``select_blocks`` (``select_key_blocks`` or a kernel with its contract), then its
    ``num_selected`` best blocks of ``block_size`` keys inside them by ``refine_blocks``
    (``refine_selection``, or a kernel with its contract). Same shapes and contract as
    ``select_key_blocks``; ``coarse_size`` a multiple of ``block_size``."""
    coarse = select_blocks(q, k, live, coarse_size, COARSE_PER_SELECTED * num_selected)
    return refine_blocks(q, k, live, block_size, num_selected, coarse, coarse_size)


def first_of_runs(values: torch.Tensor) -> torch.Tensor:
    """bool, shaped as ``values`` (sorted along the last dim): True at the first element of each run of
    equal values."""
    first = torch.ones_like(values, dtype=torch.bool)
    first[..., 1:] = values[..., 1:] != values[..., :-1]
    return first


def shared_selection(selected: torch.Tensor, tile: int, num_blocks: int) -> torch.Tensor:
    """The blocks each query attends to when the queries of a tile share their selections causally
    (``HyperAttentionConfig.selection_tile``): its own and those of the earlier queries of its tile of
    ``tile`` consecutive queries.

    selected (Z, Hq, Nq, s) int64 -> int64 (Z, Hq, Nq, w): each query's distinct blocks ascending, then
    ``num_blocks`` (a block past the last: no key) as padding; w, at most ``tile * s``, is the most
    blocks any query has."""
    z, hq, nq, s = selected.shape
    tiles = -(-nq // tile)
    if tiles * tile != nq:
        selected = torch.nn.functional.pad(selected, (0, 0, 0, tiles * tile - nq), value=num_blocks)
    rows = selected.view(z, hq, tiles, 1, tile, s).expand(z, hq, tiles, tile, tile, s)
    earlier = torch.ones(tile, tile, dtype=torch.bool, device=selected.device).tril()  # [query, earlier query]
    lists = torch.where(earlier[:, :, None], rows, num_blocks).flatten(-2).sort(-1).values
    lists = lists.masked_fill(~first_of_runs(lists), num_blocks).sort(-1).values
    lists = lists.view(z, hq, tiles * tile, tile * s)[:, :, :nq]
    width = int((lists < num_blocks).sum(-1).max()) if lists.numel() else 0
    return lists[..., :max(width, 1)]
