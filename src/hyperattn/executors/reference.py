"""Executors in plain PyTorch: the ground truth for every fused kernel.

All functions take (Z, H, N, D) tensors with grouped kv heads (query head h reads kv head
``h // (Hq // Hkv)``; K/V are never repeated), compute in float32 (float64 for float64
inputs) and return ``(out, lse)`` in that compute dtype; autograd gives their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hyperattn.merge import masked_softmax_lse, merge_attention
from hyperattn.plan import (AttentionPlan, CausalPlan, Rectangles, inverse_permutation, max_queries_per_block,
                            num_key_blocks, query_block_layout)

# Largest score tensor materialized at once by exact_attention_reference (elements).
EXACT_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Exclusion:
    """Pairs an approximated part skips because an exact part computes them: key position
    j for the query at position p when ``j < sinks`` or (``window > 0``) ``j >= p - window``.

    ``query_pos`` (Z, 1, Nq) and ``key_pos`` (Z, 1, Nk): int64 positions in the sequence."""

    query_pos: torch.Tensor
    key_pos: torch.Tensor
    sinks: int
    window: int

    def mask(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """Broadcast (query, key) positions -> True where the pair is skipped."""
        return (key_pos < self.sinks) | ((key_pos >= query_pos - self.window) & (self.window > 0))

    def rows(self, query_index: torch.Tensor) -> torch.Tensor:
        """(C, Nk) mask of the queries at ``query_index`` against every key (positions shared
        by the Z problems)."""
        return self.mask(self.query_pos[0, 0, query_index, None], self.key_pos[0, 0])


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grouped(x: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """(Z, Hq, N, D) -> (Z, Hkv, G, N, D), a view."""
    z, h, n, d = x.shape
    return x.view(z, num_kv_heads, h // num_kv_heads, n, d)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values`` at ``index`` along the last dim: values (N,), shared by every (problem, head), or
    (Z, H, N); index (M,) or (Z, H, M)."""
    if values.dim() == 1:
        return values[index]
    return values[..., index] if index.dim() == 1 else values.gather(-1, index)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (Z, H, N, D), index (Z, H, M) -> (Z, H, M, D)."""
    return x.gather(2, index.unsqueeze(-1).expand(*index.shape, x.shape[-1]))


def exact_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool,
    visible: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense softmax attention; causal is aligned bottom-right (query i sees keys <= Nk - Nq + i).

    q (Z, Hq, Nq, D), k (Z, Hkv, Nk, D), v (Z, Hkv, Nk, Dv) -> out (Z, Hq, Nq, Dv), lse (Z, Hq, Nq).
    ``visible(query_index)`` ((C,) int64 -> (C, Nk) bool) further restricts which keys each
    query sees (rows with none get a zero output and lse -inf). Queries are processed in
    chunks so that at most ``EXACT_CHUNK_ELEMENTS`` scores live at once.
    """
    dtype = compute_dtype(q.dtype)
    z, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    qg = _grouped(q.to(dtype), hkv)
    kg = k.to(dtype).unsqueeze(2)
    vg = v.to(dtype).unsqueeze(2)
    chunk = max(1, EXACT_CHUNK_ELEMENTS // max(1, z * hq * nk))
    key_pos = torch.arange(nk, device=q.device)
    outs, lses = [], []
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        seen = max(0, min(nk, stop + nk - nq)) if causal else nk  # keys any query of the chunk sees
        scores = torch.einsum("zhgqd,zhgkd->zhgqk", qg[:, :, :, start:stop], kg[..., :seen, :]) * scale
        if causal:
            query_pos = torch.arange(start, stop, device=q.device) + (nk - nq)
            scores = scores.masked_fill(key_pos[:seen] > query_pos[:, None], -torch.inf)
        if visible is not None:
            scores = scores.masked_fill(~visible(torch.arange(start, stop, device=q.device))[:, :seen], -torch.inf)
        probs, lse = masked_softmax_lse(scores)
        outs.append(probs @ vg[..., :seen, :])
        lses.append(lse)
    out = torch.cat(outs, 3) if len(outs) != 1 else outs[0]
    lse = torch.cat(lses, 3) if len(lses) != 1 else lses[0]
    return out.reshape(z, hq, nq, v.shape[-1]), lse.reshape(z, hq, nq)


def hyper_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, scale: float,
    skip: Exclusion | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal HyperAttention over the pattern of ``plan``.

    Each query attends exactly to its key block (``AttentionPlan.query_blocks``), or to its selected
    blocks (``AttentionPlan.row_blocks``), plus the sampled keys outside them with their importance
    weights; the two parts are merged by lse.
    ``skip`` drops the (query, key) pairs that an exact part computes instead.
    q (Z, Hq, Nq, D), k (Z, Hkv, Nk, D), v (Z, Hkv, Nk, Dv) -> out (Z, Hq, Nq, Dv), lse (Z, Hq, Nq).
    """
    dtype = compute_dtype(q.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    z, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    if plan.selected is not None:
        row_blocks = plan.row_blocks()
        out, lse = _selected_blocks_attention(q, k, v, plan, row_blocks, scale, skip)
        return _merge_samples(q, k, v, plan, scale, skip, out, lse, _samples_in_selected_blocks(plan, row_blocks))
    groups = hq // hkv
    block = plan.block_size
    num_blocks = num_key_blocks(nk, block)
    layout = query_block_layout(plan.query_blocks(), num_blocks, max_queries_per_block(nq, nk, block))
    num_tiles, tile_rows = layout.slot_rank.shape[-2:]

    # Block part, in sorted order: tiles of queries, each against its key block.
    slot_query = _take(plan.q_perm, layout.slot_rank.clamp(min=0).flatten(-2))
    q_tiles = _gather_rows(q, slot_query).view(z, hkv, groups, num_tiles, tile_rows, d)
    key_ranks = layout.tile_block.unsqueeze(-1) * block + torch.arange(block, device=q.device)  # (..., tiles, block)
    shared = key_ranks.dim() == 2  # the rank rule's tiles are the same for every head
    tile_groups = 1 if shared else groups
    tile_keys = (z, hkv, tile_groups, num_tiles, 1, block)
    key_ranks = (key_ranks.expand(z, hkv, num_tiles, block) if shared else key_ranks).reshape(z, hkv, -1)
    key_valid = (key_ranks < nk).view(tile_keys)
    slot_key = plan.k_perm.gather(-1, key_ranks.clamp(max=nk - 1))
    k_tiles = _gather_rows(k, slot_key).view(z, hkv, tile_groups, num_tiles, block, d)
    v_tiles = _gather_rows(v, slot_key).view(z, hkv, tile_groups, num_tiles, block, dv)
    scores = torch.einsum("zhgtqd,zhgtkd->zhgtqk", q_tiles, k_tiles) * scale
    scores = scores.masked_fill(~key_valid, -torch.inf)
    if plan.heavy:  # heavy keys: attended through the sample part, at weight one, by every query
        is_heavy = torch.zeros(z, hkv, nk, dtype=torch.bool, device=q.device)
        is_heavy.scatter_(-1, plan.sample_idx[..., :plan.heavy], True)
        scores = scores.masked_fill(is_heavy.gather(-1, slot_key).view(tile_keys), -torch.inf)
    if skip is not None:
        query_pos = skip.query_pos.expand(z, hq, nq).gather(-1, slot_query)
        key_pos = skip.key_pos.expand(z, hkv, nk).gather(-1, slot_key)
        scores = scores.masked_fill(skip.mask(query_pos.view(z, hkv, groups, num_tiles, tile_rows, 1),
                                              key_pos.view(tile_keys)), -torch.inf)
    probs, lse_tiles = masked_softmax_lse(scores)
    out_tiles = (probs @ v_tiles).reshape(z, hq, num_tiles * tile_rows, dv)

    query_rank = inverse_permutation(plan.q_perm)
    query_slot = _take(layout.rank_slot, query_rank)
    out = _gather_rows(out_tiles, query_slot)
    lse = lse_tiles.reshape(z, hq, num_tiles * tile_rows).gather(-1, query_slot)
    query_block = _grouped(_take(layout.rank_block, query_rank).unsqueeze(-1), hkv)
    return _merge_samples(q, k, v, plan, scale, skip, out, lse,
                          lambda: query_block == plan.sample_block[:, :, None, None, :])


def _samples_in_selected_blocks(plan: AttentionPlan, row_blocks: torch.Tensor) -> Callable[[], torch.Tensor]:
    """(Z, Hkv, G, Nq, m) bool: the samples in one of the query's selected blocks (``row_blocks``:
    ``plan.row_blocks()``; heavy keys have sample block -1: every query attends to them through the
    samples)."""
    def own_keys() -> torch.Tensor:
        z, hq, nq, _ = row_blocks.shape
        selected = row_blocks.reshape(z, plan.sample_block.shape[1], hq // plan.sample_block.shape[1], nq, 1, -1)
        return (selected == plan.sample_block[:, :, None, None, :, None]).any(-1)

    return own_keys


def _merge_samples(q, k, v, plan: AttentionPlan, scale: float, skip: Exclusion | None, out, lse,
                   own_keys: Callable[[], torch.Tensor]):
    """Merge the sampled residual into (out, lse): every query against the m samples of its kv
    head, except those ``own_keys()`` ((Z, Hkv, G, Nq, m) bool) says its block part already
    attends to, and those ``skip`` drops."""
    dtype = q.dtype
    z, hq, nq, _ = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    if plan.sample_idx.shape[-1] == 0:
        return out, lse
    k_samples = _gather_rows(k, plan.sample_idx).unsqueeze(2)
    v_samples = _gather_rows(v, plan.sample_idx).unsqueeze(2)
    scores = torch.einsum("zhgqd,zhgsd->zhgqs", _grouped(q, hkv), k_samples) * scale
    scores = scores + plan.sample_log_weight.to(dtype)[:, :, None, None, :]
    skipped = own_keys()
    if skip is not None:
        query_pos = _grouped(skip.query_pos.expand(z, hq, nq).unsqueeze(-1), hkv)
        sample_pos = skip.key_pos.expand(z, hkv, nk).gather(-1, plan.sample_idx)[:, :, None, None, :]
        skipped = skipped | skip.mask(query_pos, sample_pos)
    probs, lse_samples = masked_softmax_lse(scores.masked_fill(skipped, -torch.inf))
    out_samples = (probs @ v_samples).reshape(z, hq, nq, dv)
    return merge_attention(out, lse, out_samples, lse_samples.reshape(z, hq, nq))


def _selected_blocks_attention(q, k, v, plan: AttentionPlan, selected: torch.Tensor, scale: float,
                               skip: Exclusion | None):
    """Each query against the keys of its selected blocks (``selected``: ``plan.row_blocks()``), except heavy keys,
    keys past the end and the pairs ``skip`` drops (sinks among them); queries in chunks of at most
    ``EXACT_CHUNK_ELEMENTS`` gathered key elements. q (Z, Hq, Nq, D) etc. in the compute dtype ->
    out (Z, Hq, Nq, Dv), lse (Z, Hq, Nq)."""
    z, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    groups = hq // hkv
    block = plan.selected_block_size
    per_query = selected.shape[-1] * block
    dead = torch.zeros(z, hkv, nk + 1, dtype=torch.bool, device=q.device)  # index nk: past the end
    dead[..., nk] = True
    dead.scatter_(-1, plan.sample_idx[..., :plan.heavy], True)
    outs, lses = [], []
    chunk = max(1, EXACT_CHUNK_ELEMENTS // max(1, z * hq * per_query * max(d, dv)))
    for lo in range(0, nq, chunk):
        hi = min(nq, lo + chunk)
        keys = (selected[:, :, lo:hi, :, None] * block + torch.arange(block, device=q.device)).flatten(-2)
        keys = keys.clamp(max=nk).view(z, hkv, groups * (hi - lo) * per_query)  # (Z, Hkv, G * C * s * block)
        k_sel = _gather_rows(k, keys.clamp(max=nk - 1)).view(z, hkv, groups, hi - lo, per_query, d)
        v_sel = _gather_rows(v, keys.clamp(max=nk - 1)).view(z, hkv, groups, hi - lo, per_query, dv)
        masked = dead.gather(-1, keys).view(z, hkv, groups, hi - lo, per_query)
        if skip is not None:
            query_pos = _grouped(skip.query_pos.expand(z, hq, nq)[:, :, lo:hi, None], hkv)
            key_pos = skip.key_pos.expand(z, hkv, nk).gather(-1, keys.clamp(max=nk - 1))
            masked = masked | skip.mask(query_pos, key_pos.view(z, hkv, groups, hi - lo, per_query))
        scores = torch.einsum("zhgqd,zhgqkd->zhgqk", _grouped(q[:, :, lo:hi], hkv), k_sel) * scale
        probs, lse = masked_softmax_lse(scores.masked_fill(masked, -torch.inf))
        outs.append(torch.einsum("zhgqk,zhgqkd->zhgqd", probs, v_sel).reshape(z, hq, hi - lo, dv))
        lses.append(lse.reshape(z, hq, hi - lo))
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _merge_into(out, lse, rects: Rectangles, part_out, part_lse):
    """Merge a part's result over ``rects`` ((B * count, H, L, *) and (B * count, H, L)) into
    its query rows of out (B, H, Nq, Dv) and lse (B, H, Nq); other rows stay as they are."""
    batch, rows = out.shape[0], rects.queries
    index = rows.index(rects.count, out.device)
    merged, merged_lse = merge_attention(out[:, :, index], lse[:, :, index], rows.join(part_out, batch),
                                         rows.join(part_lse, batch))
    return out.index_copy(2, index, merged), lse.index_copy(2, index, merged_lse)


def causal_hyper_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: CausalPlan, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal HyperAttention (bottom-right aligned) over the schedule of ``plan``.

    Diagonal leaves: one batched exact causal call; each level: one batched
    ``hyper_attention_reference`` over its rectangles; the prefix: one more; all merged by
    lse into their query rows. The head rows (fewer than the number of leaves) are exact.
    With ``plan.sinks`` or ``plan.window``, the levels and the prefix skip those keys, and one
    more exact part attends each main query to the ones before its leaf.
    """
    s = plan.schedule
    batch, _, n_q, _ = q.shape
    query_pos = (s.prefix_len + torch.arange(n_q, device=q.device)).expand(batch, 1, -1)
    key_pos = torch.arange(k.shape[2], device=q.device).expand(batch, 1, -1)
    excluding = plan.sinks > 0 or plan.window > 0

    def skip(rects: Rectangles) -> Exclusion | None:
        if not excluding:
            return None
        return Exclusion(rects.queries.take(query_pos, rects.count), rects.keys.take(key_pos, rects.count),
                         plan.sinks, plan.window)

    dtype = compute_dtype(q.dtype)
    out = q.new_zeros(batch, q.shape[1], n_q, v.shape[-1], dtype=dtype)
    lse = q.new_full((batch, q.shape[1], n_q), -torch.inf, dtype=dtype)
    exact_parts = [(s.leaves(), True)] + ([(s.head(), True)] if s.head_len else [])
    for rects, causal in exact_parts:  # they own disjoint rows: written, not merged
        part_out, part_lse = exact_attention_reference(*rects.take(q, k), rects.keys.take(v, rects.count), scale,
                                                       causal=causal)
        index = rects.queries.index(rects.count, q.device)
        out = out.index_copy(2, index, rects.queries.join(part_out, batch))
        lse = lse.index_copy(2, index, rects.queries.join(part_lse, batch))
    for level, level_plan in enumerate(plan.level_plans, start=1):
        rects = s.level(level)
        part = hyper_attention_reference(*rects.take(q, k), rects.keys.take(v, rects.count), level_plan, scale,
                                         skip(rects))
        out, lse = _merge_into(out, lse, rects, *part)
    if s.prefix_keys > 0:  # prefix keys: one rectangle, exact when no longer than a block
        rects = s.prefix()
        q_main, k_pre = rects.take(q, k)
        v_pre = rects.keys.take(v, 1)
        prefix_skip = skip(rects)
        if plan.prefix_plan is not None:
            part = hyper_attention_reference(q_main, k_pre, v_pre, plan.prefix_plan, scale, prefix_skip)
        else:
            part = exact_attention_reference(
                q_main, k_pre, v_pre, scale, False, None if prefix_skip is None else lambda i: ~prefix_skip.rows(i)
            )
        out, lse = _merge_into(out, lse, rects, *part)
    if excluding:  # the skipped keys before each main query's leaf, exactly
        out, lse = _merge_into(out, lse, s.prefix(), *_skipped_keys_attention(q, k, v, plan, scale))
    return out, lse


def _skipped_keys_attention(q, k, v, plan: CausalPlan, scale: float):
    """Exact attention of each main query over the keys before its diagonal leaf that
    ``plan.sinks`` and ``plan.window`` take from the approximated parts: per leaf, only the
    first ``sinks`` keys and the ``window`` keys before the leaf can be such keys. Rows: the
    main queries (``schedule.prefix().queries``)."""
    leaves = plan.schedule.leaves()
    outs, lses = [], []
    for (q_lo, q_hi), (start, _) in zip(leaves.queries.spans(leaves.count), leaves.keys.spans(leaves.count)):
        sinks = min(plan.sinks, start)
        keys = torch.cat((torch.arange(sinks), torch.arange(max(sinks, start - plan.window), start))).to(q.device)
        query_pos = start + torch.arange(q_hi - q_lo, device=q.device)
        rule = Exclusion(query_pos.view(1, 1, -1), keys.view(1, 1, -1), plan.sinks, plan.window)
        out, lse = exact_attention_reference(q[:, :, q_lo:q_hi], k[:, :, keys], v[:, :, keys], scale, False,
                                             rule.rows)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _sinks_attention(q, k, v, plan: AttentionPlan, scale: float):
    """Non-causal HyperAttention with ``plan.sinks``: the block and sample parts skip keys
    ``j < sinks``, which every query attends to exactly."""
    z, nq, nk = q.shape[0], q.shape[2], k.shape[2]
    skip = Exclusion(torch.arange(nq, device=q.device).expand(z, 1, nq),
                     torch.arange(nk, device=q.device).expand(z, 1, nk), plan.sinks, 0)
    sinks = exact_attention_reference(q, k[:, :, :plan.sinks], v[:, :, :plan.sinks], scale, False)
    return merge_attention(*hyper_attention_reference(q, k, v, plan, scale, skip), *sinks)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan | CausalPlan | None, scale: float,
    causal: bool, tail: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference executor for any plan: None (exact attention), non-causal or causal.

    ``tail`` (``HyperAttentionConfig.exact_tail``): the last ``tail`` query rows are exact
    attention over every key they see, in place of the plan's rows."""
    if plan is None:
        out, lse = exact_attention_reference(q, k, v, scale, causal)
    elif isinstance(plan, AttentionPlan):
        out, lse = (_sinks_attention if plan.sinks else hyper_attention_reference)(q, k, v, plan, scale)
    else:
        out, lse = causal_hyper_attention_reference(q, k, v, plan, scale)
    tail = min(tail, q.shape[2])
    if tail:
        tail_out, tail_lse = exact_attention_reference(q[:, :, q.shape[2] - tail:], k, v, scale, causal)
        out = torch.cat((out[:, :, :q.shape[2] - tail], tail_out), 2)
        lse = torch.cat((lse[:, :, :q.shape[2] - tail], tail_lse), 2)
    return out, lse
