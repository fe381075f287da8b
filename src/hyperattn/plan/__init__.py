"""The plan: every random or data-dependent choice of HyperAttention, as index tensors.

A plan decides which keys each query attends to and with what weight; executors
(``hyperattn.executors``) compute attention over that pattern. Reference and fused executors
consume the same plan, so they can be compared exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from hyperattn.config import HyperAttentionConfig
from hyperattn.plan.blocks import (bucket_query_blocks, centroid_query_blocks, max_queries_per_block, num_key_blocks,
                                   query_block_layout, query_block_of_rank)
from hyperattn.plan.lsh import (gray_code_rank, inverse_permutation, lsh_buckets, lsh_directions, ranks_in_sort,
                                sort_lsh, sort_lsh_permutation)
from hyperattn.plan.sampling import probe_key_mass, sample_keys, value_sq_norms
from hyperattn.plan.selection import (block_centroids, refine_selection, select_coarse_to_fine, select_key_blocks,
                                      shared_selection)
from hyperattn.plan.schedule import CausalSchedule, Rectangles, Rows, causal_schedule

# Share of uniform draws in mass sampling: p_j = (1 - s) * estimated mass share + s / Nk.
MASS_UNIFORM_SHARE = 0.5

# ``probe_key_mass``'s contract: (probes, k, keys, count, scale, probe_pos, sinks) -> key masses
ProbeMass = Callable[[torch.Tensor, torch.Tensor, Rows, int, float, "torch.Tensor | None", int, int], torch.Tensor]

# ``select_key_blocks``'s contract: (q, k, live, block_size, num_selected) -> selected blocks
SelectBlocks = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", int, int], torch.Tensor]
# ``refine_selection``'s contract: (q, k, live, block_size, num_selected, coarse, coarse_size) -> selected blocks
RefineBlocks = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", int, int, torch.Tensor, int], torch.Tensor]

# A causal rectangle's probes are normalized over its last PROBE_NORM_KEYS keys (``probe_key_mass``'s
# norm_keys): the keys nearest them, one short pass in place of one over every key. Bucket + heavy 448, 32
# probes, no sinks: attention error 0.140 against 0.138 over every key on Gemma-3 (16k), 0.048 against 0.048
# on SmolLM2 (8k); the causal forward at 131k 2-3% faster (H100, head dims 64 and 128).
PROBE_NORM_KEYS = 1024


@dataclass(frozen=True)
class AttentionPlan:
    """The sparse pattern of one batch of non-causal HyperAttention problems.

    Shapes: Z problems, Hq query heads, Hkv kv heads, Nq queries, Nk keys, m samples.

    - ``q_perm``: int64 (Z, Hq, Nq), original query index at each sorted rank.
    - ``k_perm``: int64 (Z, Hkv, Nk), original key index at each sorted rank. With ``selected``
      nothing is sorted: both are the identity.
      Sorted query rank ``p`` attends exactly to the sorted keys of block ``i``, ranks
      ``[i * block_size, (i + 1) * block_size)``: ``i = q_block[..., p]`` or, where ``q_block``
      is None, ``query_block_of_rank(Nq, Nk, block_size)[p]`` (``hyperattn.plan.blocks``).
    - ``sample_idx``: int64 (Z, Hkv, m), original indices of the sampled keys (shared by the
      query heads of a kv head).
    - ``sample_block``: int64 (Z, Hkv, m), key block of each sampled key (with ``selected``: its
      selected-block index, ``sample_idx // selected_block_size``); a query skips the samples of
      its own block (its selected blocks), which the block part already counts.
    - ``sample_log_weight``: (Z, Hkv, m) float, log importance weight added to the score of
      each sampled term.
    - ``sinks`` (``HyperAttentionConfig.exact_sinks``, non-causal calls only): every query also
      attends exactly to keys ``j < sinks``, which the block and sample parts then skip
      (``make_plan`` sorts them last and gives their samples log-weight -inf). Causal calls
      keep it 0 in their per-level plans (``CausalPlan.sinks`` holds theirs).
    - ``q_block``: int64 (Z, Hq, Nq), the key block of each sorted query rank under the
      ``"bucket"`` or ``"centroid"`` rule (``HyperAttentionConfig.query_blocks``), non-decreasing;
      None: the ``"rank"`` rule, or ``selected`` blocks in place of the LSH block.
    - ``heavy`` (``HyperAttentionConfig.heavy_keys``): the first ``heavy`` samples of each
      (problem, kv head) are its heavy keys, attended exactly by every query (log-weight 0,
      ``sample_block`` -1); the block part skips them (``make_plan`` sorts them after the
      other keys).
    - ``selected`` (``HyperAttentionConfig.selected_blocks``): int64 (Z, Hq, Nq, s), ascending, the
      blocks of ``selected_block_size`` consecutive keys (in original key order) that each query
      (original order) attends to exactly in place of its LSH block, skipping sinks and heavy
      keys; the sample part skips the keys of those blocks. None: the LSH block.
    - ``selection_tile`` (``HyperAttentionConfig.selection_tile``): with ``selected``, each query
      also attends to the blocks of the earlier queries of its tile of this many consecutive queries
      (``row_blocks``); 0: its own blocks only.
    """

    q_perm: torch.Tensor
    k_perm: torch.Tensor
    sample_idx: torch.Tensor
    sample_block: torch.Tensor
    sample_log_weight: torch.Tensor
    block_size: int
    sinks: int = 0
    q_block: torch.Tensor | None = None
    heavy: int = 0
    selected: torch.Tensor | None = None
    selected_block_size: int = 0
    selection_tile: int = 0

    def query_blocks(self) -> torch.Tensor:
        """int64 key block of each sorted query rank: (Z, Hq, Nq), or (Nq,) under the rank rule."""
        if self.q_block is not None:
            return self.q_block
        return query_block_of_rank(self.q_perm.shape[-1], self.k_perm.shape[-1], self.block_size,
                                   self.q_perm.device)

    def row_blocks(self) -> torch.Tensor:
        """int64 (Z, Hq, Nq, w): the blocks of ``selected_block_size`` keys each query attends to, ascending
        (``selected``, or with ``selection_tile`` its own and its tile's earlier queries' blocks, padded
        with the block past the last, which holds no key)."""
        if self.selected is None:
            raise ValueError("AttentionPlan.row_blocks: the plan has no selected blocks")
        if not self.selection_tile:
            return self.selected
        num_blocks = -(-self.k_perm.shape[-1] // self.selected_block_size)
        return shared_selection(self.selected, self.selection_tile, num_blocks)


def make_plan(
    q_buckets: torch.Tensor,
    k_buckets: torch.Tensor,
    config: HyperAttentionConfig,
    generator: torch.Generator,
    v_sq_norms: torch.Tensor | None = None,
    weight_dtype: torch.dtype = torch.float32,
    sinks: int = 0,
    sink_stride: int = 1,
    key_mass: torch.Tensor | None = None,
    rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    select_blocks: SelectBlocks = select_key_blocks,
    refine_blocks: RefineBlocks = refine_selection,
    head_shard: tuple[int, int] | None = None,
) -> AttentionPlan:
    """Sort and sample for Z problems, given the LSH buckets of their rows.

    Args:
        q_buckets: (Z, Hq, Nq) and k_buckets: (Z, Hkv, Nk) integers, from ``lsh_buckets``
            (rows hash independently, so a caller hashes once and slices per problem).
        v_sq_norms: (Z, Hkv, Nk) squared value norms, required for ``sampling="value_norm"``.
        weight_dtype: dtype of the sample log-weights.
        sinks, sink_stride: the first ``sinks`` key rows of problems 0, sink_stride,
            2 * sink_stride, ... (the first rectangle of each batch row of a causal level, or
            every problem) are exact sinks, which the block and sample parts skip. They sort
            after every other key of their problem (bucket: the dtype's largest value, which
            ``lsh_buckets`` leaves free) and their samples get log-weight -inf, so the fused
            kernels skip them by rank and weight, with no test in their key loops.
        key_mass: (Z, Hkv, Nk) estimated attention mass of each key (``probe_key_mass``), or
            None. With ``config.heavy_keys`` the keys of largest mass (sinks aside) are heavy
            keys: they sort between the other keys and the sinks (bucket: the dtype's largest
            value less one), lead the samples at log-weight 0 with block -1 (every query
            attends to them), and draws of them weigh nothing. With ``sampling="mass"`` the
            draws follow the mass of the other keys, mixed with a uniform share.
        rows: the problems' query rows (Z, Hq, Nq, D) and key rows (Z, Hkv, Nk, D), which
            ``config.selected_blocks`` and the ``"centroid"`` rule need; ``select_blocks`` chooses
            the selected blocks or each query's block (``select_key_blocks``, or a kernel with its
            contract; with ``config.selection_coarse_size`` it chooses the coarse blocks of
            ``select_coarse_to_fine`` and ``refine_blocks`` the blocks inside them).
        head_shard: (first, total): the problems' kv heads are kv heads ``first, first + 1, ...`` of a
            call over ``total``, whose draws they take (``sample_keys``); None: (0, Hkv).
    """
    z, num_kv_heads, num_keys = k_buckets.shape
    sinks = min(sinks, num_keys)
    device = k_buckets.device
    heavy = key_mass is not None and config.heavy_keys > 0
    selecting = config.selected_blocks > 0
    if not config.hashes and rows is None:
        raise ValueError("make_plan: config.selected_blocks and the centroid rule need the problems' rows")

    def with_sinks(x):  # (Z, Hkv, L) -> a view of problems 0, sink_stride, 2 * sink_stride, ...
        return x.view(-1, sink_stride, *x.shape[1:])[:, 0]

    live = None  # keys neither sinks nor heavy, where heavy keys, mass sampling or selection need them
    if heavy or (config.sampling == "mass" and key_mass is not None) or (selecting and sinks):
        live = torch.ones(k_buckets.shape, dtype=torch.bool, device=device)
        with_sinks(live)[..., :sinks] = False
    heavy_idx, num_heavy = None, 0
    if heavy:
        num_heavy = min(config.heavy_keys, num_keys - sinks)
        heavy_idx = key_mass.masked_fill(~live, -1.0).topk(num_heavy, dim=-1).indices.sort(-1).values
        live.scatter_(-1, heavy_idx, False)
    q_block = None
    if selecting:  # selected blocks replace the LSH block: rows keep their order, the buckets go unused
        q_perm, k_perm = (torch.arange(x.shape[-1], device=device).expand(x.shape).contiguous()
                          for x in (q_buckets, k_buckets))
    else:
        # one contiguous copy to mark the sinks and heavy keys in (the caller's buckets stay as they are)
        k_buckets = k_buckets.clone(memory_format=torch.contiguous_format) if sinks or heavy else k_buckets.contiguous()
        if heavy:
            k_buckets.scatter_(-1, heavy_idx, torch.iinfo(k_buckets.dtype).max - 1)
        if sinks:
            with_sinks(k_buckets)[..., :sinks] = torch.iinfo(k_buckets.dtype).max
        k_sorted, k_perm = sort_lsh(k_buckets)
        if config.query_blocks != "centroid":
            q_sorted, q_perm = sort_lsh(q_buckets.contiguous())  # plans are contiguous: kernels index them flat
        if config.query_blocks in ("bucket", "centroid"):
            num_live = torch.full((z, 1, 1), num_keys - num_heavy, dtype=torch.int64, device=device)
            with_sinks(num_live).sub_(sinks)
        if config.query_blocks == "bucket":
            q_block = bucket_query_blocks(q_sorted, k_sorted, num_live, config.block_size,
                                          2 ** config.lsh_num_projs)
        elif config.query_blocks == "centroid":  # the keys were not hashed: live ones keep their order
            q_rows, k_rows = rows
            k_rows = k_rows.gather(2, k_perm[..., None].expand(-1, -1, -1, k_rows.shape[-1]))
            q_perm, q_block = centroid_query_blocks(q_rows, k_rows, num_live, config.block_size, select_blocks)
    masses = None
    if config.sampling == "value_norm":
        if v_sq_norms is None:
            raise ValueError("make_plan: sampling='value_norm' needs v_sq_norms")
        masses = v_sq_norms.contiguous()
    elif live is not None and config.sampling == "mass" and config.sample_size:  # live keys: mass and uniform
        mass = key_mass.double() * live
        masses = ((1 - MASS_UNIFORM_SHARE) * mass / mass.sum(-1, keepdim=True).clamp_min(1e-300)
                  + MASS_UNIFORM_SHARE * live / live.sum(-1, keepdim=True).clamp_min(1))
    sample_idx, sample_log_weight = sample_keys((z, num_kv_heads), num_keys, config.sample_size, generator,
                                                masses=masses, device=device, dtype=weight_dtype,
                                                head_shard=head_shard)
    if live is not None:
        sample_log_weight.masked_fill_(~live.gather(-1, sample_idx), -torch.inf)
    elif sinks and sample_idx.numel():
        with_sinks(sample_log_weight).masked_fill_(with_sinks(sample_idx) < sinks, -torch.inf)
    if selecting:
        sample_block = sample_idx // config.selected_block_size
    else:
        sample_block = ranks_in_sort(k_buckets, k_sorted, k_perm, sample_idx) // config.block_size
    if heavy:  # heavy keys lead the samples, at weight one, in no query's block
        sample_idx = torch.cat((heavy_idx, sample_idx), -1)
        sample_block = torch.cat((torch.full_like(heavy_idx, -1), sample_block), -1)
        sample_log_weight = torch.cat((sample_log_weight.new_zeros(heavy_idx.shape), sample_log_weight), -1)
    selected = None
    if selecting and config.selection_coarse_size:
        selected = select_coarse_to_fine(*rows, live, config.selected_block_size, config.selected_blocks,
                                         config.selection_coarse_size, select_blocks, refine_blocks)
    elif selecting:
        selected = select_blocks(*rows, live, config.selected_block_size, config.selected_blocks)
    return AttentionPlan(q_perm, k_perm, sample_idx, sample_block, sample_log_weight, config.block_size,
                         q_block=q_block, heavy=num_heavy, selected=selected,
                         selected_block_size=config.selected_block_size if selecting else 0,
                         selection_tile=config.selection_tile if selecting else 0)


@dataclass(frozen=True)
class CausalPlan:
    """Plans of causal HyperAttention: one ``AttentionPlan`` per level of ``schedule``
    (its problems are the level's rectangles, batch-major) and one for the prefix
    rectangle: None when its keys fit in one block (or there are none), which executors
    then attend to exactly.

    ``sinks`` and ``window`` (``HyperAttentionConfig.exact_sinks`` / ``exact_window``): the
    query at position p also attends exactly to keys j < sinks and p - window <= j, which
    the approximated parts then skip. ``plan_hyper_attention`` caps ``sinks`` at
    ``CausalSchedule.max_sinks``."""

    schedule: CausalSchedule
    level_plans: list[AttentionPlan]
    prefix_plan: AttentionPlan | None
    sinks: int = 0
    window: int = 0


PLAN_TENSORS = ("q_perm", "k_perm", "sample_idx", "sample_block", "sample_log_weight")
_NO_PLAN, _NON_CAUSAL, _CAUSAL = 0, 1, 2
_CAUSAL_FIELDS = 12  # a causal plan's ints after the kind, before each plan's heavy


def flatten_plan(plan: AttentionPlan | CausalPlan | None) -> tuple[list[torch.Tensor], list[int]]:
    """A plan as (tensors, ints), the form in which it crosses a custom op's boundary
    (``unflatten_plan`` inverts it): the ``PLAN_TENSORS`` of each ``AttentionPlan`` (a causal
    plan's levels in order, then its prefix plan), each followed by its ``q_block`` under the
    ``"bucket"`` rule and its ``selected`` blocks where it has them, and a few ints that say what
    they are (last: whether the plans carry ``q_block``, their ``selected_block_size`` (0: no
    selection) and ``selection_tile``, then each plan's ``heavy``)."""
    if plan is None:
        return [], [_NO_PLAN]
    if isinstance(plan, AttentionPlan):
        plans = [plan]
    else:
        plans = [*plan.level_plans, *([plan.prefix_plan] if plan.prefix_plan is not None else [])]
    bucket = int(any(p.q_block is not None for p in plans))
    selected = plans[0].selected_block_size if plans and plans[0].selected is not None else 0
    tile = plans[0].selection_tile if selected else 0
    if (bucket and not all(p.q_block is not None for p in plans)) or (
            selected and not all(p.selected_block_size == selected and p.selected is not None
                                 and p.selection_tile == tile for p in plans)):
        raise ValueError("flatten_plan: a causal plan's levels must share one query-block rule and block selection")
    tensors = [t for p in plans for t in (*(getattr(p, name) for name in PLAN_TENSORS),
                                           *((p.q_block,) if bucket else ()), *((p.selected,) if selected else ()))]
    heavy = [p.heavy for p in plans]
    if isinstance(plan, AttentionPlan):
        return tensors, [_NON_CAUSAL, plan.block_size, plan.sinks, bucket, selected, tile, *heavy]
    s = plan.schedule
    block_size = plans[0].block_size if plans else 0
    return tensors, [_CAUSAL, s.num_queries, s.num_keys, s.head_len, s.leaf_len, s.num_levels, block_size,
                     plan.sinks, plan.window, int(plan.prefix_plan is not None), bucket, selected, tile, *heavy]


def unflatten_plan(tensors: list[torch.Tensor], ints: list[int]) -> AttentionPlan | CausalPlan | None:
    """The plan that ``flatten_plan`` gave as (tensors, ints)."""
    kind, *fields = ints
    if kind == _NO_PLAN:
        return None
    if kind == _NON_CAUSAL:
        block_size, sinks, bucket, selected, tile, heavy = fields
        heavy_per_plan = [heavy]
    else:
        *schedule_ints, block_size, sinks, window, has_prefix_plan, bucket, selected, tile = fields[:_CAUSAL_FIELDS]
        heavy_per_plan = fields[_CAUSAL_FIELDS:]
    per_plan = len(PLAN_TENSORS) + bucket + bool(selected)

    def plan_at(i: int) -> AttentionPlan:
        own = tensors[i * per_plan:(i + 1) * per_plan]
        return AttentionPlan(*own[:len(PLAN_TENSORS)], block_size=block_size, q_block=own[len(PLAN_TENSORS)] if bucket
                             else None, heavy=heavy_per_plan[i], selected=own[-1] if selected else None,
                             selected_block_size=selected, selection_tile=tile)

    if kind == _NON_CAUSAL:
        return replace(plan_at(0), sinks=sinks)
    plans = [plan_at(i) for i in range(len(heavy_per_plan))]
    prefix_plan = plans.pop() if has_prefix_plan else None
    return CausalPlan(CausalSchedule(*schedule_ints), plans, prefix_plan, sinks, window)


def _probe_mass(q, k, schedule: CausalSchedule, rects: Rectangles, config: HyperAttentionConfig, scale: float,
                sinks: int, probe_mass: ProbeMass) -> torch.Tensor | None:
    """Estimated attention mass of each key of each rectangle (``probe_key_mass``), from the
    ``config.probe_queries`` queries just before the rectangle's first query (causal: they come
    before every query that uses the estimate), each normalized over the rectangle's last
    ``PROBE_NORM_KEYS`` keys. None where no query precedes the rectangle."""
    num_probes = min(config.probe_queries, rects.queries.start)
    if num_probes == 0:
        return None
    probe_rows = Rows(start=rects.queries.start - num_probes, stride=rects.queries.stride, length=num_probes)
    probe_pos = (probe_rows.index(rects.count, device=q.device) + schedule.prefix_len).view(rects.count, num_probes)
    return probe_mass(probe_rows.take(q, rects.count), k, rects.keys, rects.count, scale, probe_pos, sinks,
                      PROBE_NORM_KEYS)


def plan_hyper_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    config: HyperAttentionConfig,
    generator: torch.Generator,
    hash_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lsh_buckets,
    scale: float | None = None,
    probe_mass: ProbeMass = probe_key_mass,
    select_blocks: SelectBlocks = select_key_blocks,
    refine_blocks: RefineBlocks = refine_selection,
    head_shard: tuple[int, int] | None = None,
) -> AttentionPlan | CausalPlan:
    """Every random and data-dependent choice of one HyperAttention call.

    Rows are hashed once (directions drawn first from ``generator``) by ``hash_rows``
    (``lsh_buckets``, or an executor's kernel with its contract; not at all with selected blocks or
    the centroid rule, which use no bucket), and key masses estimated by
    ``probe_mass`` (``probe_key_mass``, or a kernel with its contract), selected blocks chosen by
    ``select_blocks`` and ``refine_blocks`` (likewise); each problem (the whole
    input, or a rectangle of the causal schedule) sorts its own slice and draws its own
    samples, in the order levels 1..L, then the prefix.
    q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); requires Nq > config.min_seq_len.
    ``head_shard`` (first, total): these are kv heads ``first, first + 1, ...`` (and their query heads)
    of a call over ``total`` kv heads; every draw is made for all ``total`` and theirs kept, so the
    plan is that call's plan for these heads (heads split across devices). None: (0, Hkv).
    """
    first, total = head_shard or (0, k.shape[1])
    directions = lsh_directions(total, q.shape[-1], config.lsh_num_projs, generator)[first:first + k.shape[1]]
    if not config.hashes:  # selected blocks or the centroid rule: no bucket is used, so none is hashed
        q_buckets, k_buckets = (x.new_zeros(x.shape[:3], dtype=torch.int16) for x in (q, k))
    else:
        q_buckets = hash_rows(q, directions)
        k_buckets = hash_rows(k, directions)
    sq_norms = value_sq_norms(v) if config.sampling == "value_norm" else None
    weight_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if not causal:
        sinks = min(config.exact_sinks, k.shape[2])
        key_mass = None
        if config.uses_probes:
            rows = torch.randint(q.shape[2], (config.probe_queries,), generator=generator,
                                 device=generator.device).to(q.device)
            all_keys = Rows(start=0, stride=0, length=k.shape[2])
            key_mass = probe_mass(q[:, :, rows], k, all_keys, 1, scale, None, sinks, 0)
        plan = make_plan(q_buckets, k_buckets, config, generator, sq_norms, weight_dtype, sinks, key_mass=key_mass,
                         rows=None if config.hashes else (q, k), select_blocks=select_blocks,
                         refine_blocks=refine_blocks, head_shard=head_shard)
        return replace(plan, sinks=sinks)
    schedule = causal_schedule(q.shape[2], k.shape[2], config.min_seq_len)
    sinks = min(config.exact_sinks, schedule.max_sinks)
    prefix_sinks, main_sinks = schedule.split_sinks(sinks)
    levels = [schedule.level(level) for level in range(1, schedule.num_levels + 1)]
    prefix = schedule.prefix() if schedule.prefix_keys > config.block_size else None
    # every probe launch first: the device works through them while the host issues the plans' small steps
    masses = [_probe_mass(q, k, schedule, rects, config, scale, sinks, probe_mass) if config.uses_probes else None
              for rects in levels + ([prefix] if prefix else [])]
    level_plans = []
    for rects, key_mass in zip(levels, masses):
        level_norms = None if sq_norms is None else rects.keys.take(sq_norms, rects.count)
        level_plans.append(make_plan(*rects.take(q_buckets, k_buckets), config, generator, level_norms, weight_dtype,
                                     main_sinks, rects.count, key_mass=key_mass,
                                     rows=None if config.hashes else rects.take(q, k),
                                     select_blocks=select_blocks, refine_blocks=refine_blocks,
                                     head_shard=head_shard))
    prefix_plan = None
    if prefix:
        prefix_norms = None if sq_norms is None else prefix.keys.take(sq_norms, 1)
        prefix_plan = make_plan(*prefix.take(q_buckets, k_buckets), config, generator, prefix_norms, weight_dtype,
                                prefix_sinks, key_mass=masses[-1],
                                rows=None if config.hashes else prefix.take(q, k),
                                select_blocks=select_blocks, refine_blocks=refine_blocks, head_shard=head_shard)
    return CausalPlan(schedule, level_plans, prefix_plan, sinks, config.exact_window)


__all__ = [
    "AttentionPlan",
    "CausalPlan",
    "CausalSchedule",
    "PLAN_TENSORS",
    "Rectangles",
    "Rows",
    "block_centroids",
    "causal_schedule",
    "flatten_plan",
    "gray_code_rank",
    "inverse_permutation",
    "lsh_buckets",
    "lsh_directions",
    "make_plan",
    "max_queries_per_block",
    "num_key_blocks",
    "plan_hyper_attention",
    "probe_key_mass",
    "query_block_layout",
    "query_block_of_rank",
    "ranks_in_sort",
    "sample_keys",
    "refine_selection",
    "select_coarse_to_fine",
    "select_key_blocks",
    "shared_selection",
    "sort_lsh",
    "sort_lsh_permutation",
    "unflatten_plan",
    "value_sq_norms",
]
