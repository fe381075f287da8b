"""The launch list: a plan cut into parts, each a batch of problems of one shape that one
kernel launch (or one cuDNN call) runs. Pure Python: which rows each part reads and which
gradient rows it writes last; the executors turn parts into launches.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import KW_ONLY, dataclass, replace

from hyperattn.plan import AttentionPlan, CausalPlan
from hyperattn.plan.blocks import max_queries_per_block
from hyperattn.plan.schedule import CausalSchedule, Rectangles, Rows

# Queries per problem of the exact parts that attend many queries to a few keys (the sinks'
# key gradients) and keys per problem of those that attend a few queries to many keys (the
# exact tail): enough problems to fill the device, none of them a long serial walk.
QUERY_CHUNK_LEN = 4096
KEY_CHUNK_LEN = 4096


@dataclass(frozen=True)
class Part:
    """One launch over ``rects`` (``count`` problems per batch row).

    ``plan`` None: exact attention (``causal``: bottom-right within each problem). Otherwise
    HyperAttention over the plan, whose problems are the rectangles; its query and key rows
    then advance together (equal strides).

    ``sinks`` (hyper parts): key rows below it take no part in the block and sample loops (an
    exact part, or ``exact_keys``, attends to them); the plan must come from ``make_plan`` with
    the same sinks, which sorts them after every other key and weights their samples -inf.
    ``exact_keys`` (hyper parts): in problem 0 of each batch row the queries also attend
    exactly to the problem's first ``exact_keys`` key rows, in the same softmax and dq.
    ``key_grads_only`` (exact parts): the key gradients of such exact keys; it takes no part
    in the forward and adds no dq. ``diagonal``: the causal diagonal leaves, which cuDNN may run.

    ``band`` (the exact window, ``CausalPlan.window``): query row i's window starts at key row
    ``i + window_edge``; 1: the part skips the keys from there on (they belong to the window),
    2 (exact parts): it attends to those keys only (``window_parts``); 0: no window.

    ``owns_queries`` / ``owns_keys`` are derived by ``assign_owners``, never set by hand: in the
    backward, the owner of a row runs after every other part that touches it and writes its
    final gradient.
    """

    plan: AttentionPlan | None
    rects: Rectangles
    _: KW_ONLY
    causal: bool = False
    sinks: int = 0
    exact_keys: int = 0
    key_grads_only: bool = False
    diagonal: bool = False
    band: int = 0
    window_edge: int = 0
    owns_queries: bool = False
    owns_keys: bool = False

    def __post_init__(self):
        if self.plan is not None and self.rects.keys.stride != self.rects.queries.stride:
            raise ValueError("a hyper Part reads its query and key rows with one stride")
        if self.plan is None and (self.sinks or self.exact_keys):
            raise ValueError("Part.sinks and Part.exact_keys belong to hyper parts (an exact part attends to every "
                             "key it reads)")
        if self.band not in (0, 1, 2) or (self.plan is not None and self.band == 2):
            raise ValueError(f"Part.band is 0, 1 or (exact parts) 2, got {self.band}")
        if self.key_grads_only and (self.plan is not None or self.owns_queries):
            raise ValueError("a key_grads_only Part is exact and writes no dq (a hyper part's exact_keys does)")
        if self.owns_keys and self.shares_key_rows:
            raise ValueError("a Part whose problems share key rows cannot own them")

    @property
    def count(self) -> int:
        """Problems per batch row."""
        return self.rects.count

    @property
    def num_queries(self) -> int:
        return self.rects.queries.length

    @property
    def num_keys(self) -> int:
        return self.rects.keys.length

    @property
    def skips_window(self) -> bool:
        """Whether the part skips each query's exact-window keys (``band`` 1)."""
        return self.band == 1

    @property
    def shares_key_rows(self) -> bool:
        """Whether several problems read (and add gradients to) the same key rows."""
        return self.rects.keys.stride == 0 and self.count > 1

    @property
    def shares_query_rows(self) -> bool:
        """Whether several problems read (and add dq to) the same query rows."""
        return self.rects.queries.stride == 0 and self.count > 1

    @property
    def query_start(self) -> int:
        return self.rects.queries.start

    @property
    def key_start(self) -> int:
        return self.rects.keys.start

    @property
    def writes_dq(self) -> bool:
        return not self.key_grads_only

    @property
    def queries_per_key_block(self) -> int:
        """The most sorted queries any key block of a hyper part gets."""
        return max_queries_per_block(self.num_queries, self.num_keys, self.plan.block_size)


def _single(n_q: int, n_k: int, q_start: int = 0, k_start: int = 0) -> Rectangles:
    return Rectangles(count=1, queries=Rows(start=q_start, stride=0, length=n_q),
                      keys=Rows(start=k_start, stride=0, length=n_k))


class _Spans:
    """Disjoint [start, stop) row spans, sorted, with an overlap test in O(log n) a span."""

    def __init__(self):
        self.starts: list[int] = []
        self.stops: list[int] = []

    def overlaps(self, start: int, stop: int) -> bool:
        i = bisect.bisect_right(self.starts, start)  # the last span starting at or before start, and the next
        return (i > 0 and self.stops[i - 1] > start) or (i < len(self.starts) and self.starts[i] < stop)

    def add(self, spans: list[tuple[int, int]]) -> None:
        for start, stop in spans:
            i = bisect.bisect_right(self.starts, start)
            self.starts.insert(i, start)
            self.stops.insert(i, stop)

    def total(self) -> int:
        return sum(stop - start for start, stop in zip(self.starts, self.stops))


def assign_owners(parts: list[Part], num_queries: int, num_keys: int) -> list[Part]:
    """``parts`` with ownership derived: in list order, a part owns its query (key) rows when it
    writes them (dq; dk/dv without sharing them among its problems) and no earlier owner holds
    any of them. The owners must then cover every row exactly once (checked)."""
    geometry = tuple((part.rects, part.writes_dq and not part.shares_query_rows, part.shares_key_rows)
                     for part in parts)
    owners = _owners(geometry, num_queries, num_keys)
    return [replace(part, owns_queries=queries, owns_keys=keys) for part, (queries, keys) in zip(parts, owners)]


@functools.lru_cache(maxsize=1024)  # a launch list's geometry recurs at every call of one shape
def _owners(geometry: tuple, num_queries: int, num_keys: int) -> tuple[tuple[bool, bool], ...]:
    owned_queries, owned_keys = _Spans(), _Spans()
    owners = []
    for rects, writes_dq, shares_key_rows in geometry:
        query_spans = rects.queries.spans(rects.count)
        key_spans = rects.keys.spans(rects.count)
        owns_queries = writes_dq and not any(owned_queries.overlaps(*span) for span in query_spans)
        owns_keys = not shares_key_rows and not any(owned_keys.overlaps(*span) for span in key_spans)
        if owns_queries:
            owned_queries.add(query_spans)
        if owns_keys:
            owned_keys.add(key_spans)
        # the backward runs each part's dq and dk/dv together, owners last: an owner of query rows
        # whose key rows another part owns would add to them after that part finished them
        if owns_queries and not owns_keys:
            raise AssertionError(f"a part owns its query rows {query_spans} but not its key rows {key_spans}")
        owners.append((owns_queries, owns_keys))
    for name, owned, total in (("query", owned_queries, num_queries), ("key", owned_keys, num_keys)):
        if owned.total() != total:
            raise AssertionError(f"the launch list's owners cover {owned.total()} of {total} {name} rows")
    return tuple(owners)


def _chunks(n: int, chunk_len: int) -> list[tuple[int, int, int]]:
    """(count, start, length) runs covering rows [0, n): equal chunks of ``chunk_len``, then the rest."""
    count = n // chunk_len
    runs = [(count, 0, chunk_len)] if count else []
    return runs + ([(1, count * chunk_len, n - count * chunk_len)] if n % chunk_len else [])


def _sink_key_grads(q_start: int, num_queries: int, k_start: int, sinks: int) -> list[Part]:
    """Exact parts that give the key gradients of ``sinks`` key rows from ``k_start`` through
    queries [q_start, q_start + num_queries), in problems of ``QUERY_CHUNK_LEN`` queries that
    add into the same key rows."""
    return [Part(None, Rectangles(count=count, queries=Rows(start=q_start + start, stride=length, length=length),
                                  keys=Rows(start=k_start, stride=0, length=sinks)), key_grads_only=True)
            for count, start, length in _chunks(num_queries, QUERY_CHUNK_LEN)]


def parts_of(plan: AttentionPlan | CausalPlan | None, num_queries: int, num_keys: int, causal: bool) -> list[Part]:
    """The parts that execute ``plan`` (None: exact attention) over (num_queries, num_keys) rows,
    with their owners."""
    if plan is None or isinstance(plan, AttentionPlan):
        if plan is None or not plan.sinks:
            parts = [Part(plan, _single(num_queries, num_keys), causal=causal and plan is None)]
        else:  # the hyper part attends to the sinks exactly (output and dq); exact parts give their key gradients
            parts = [Part(plan, _single(num_queries, num_keys), sinks=plan.sinks, exact_keys=plan.sinks),
                     *_sink_key_grads(0, num_queries, 0, plan.sinks)]
        return assign_owners(parts, num_queries, num_keys)
    s = plan.schedule
    if plan.sinks > s.max_sinks:  # plan_hyper_attention caps them there
        raise ValueError(f"the fused kernels run at most {s.max_sinks} exact sinks here (the keys before the second "
                         f"diagonal leaf), got {plan.sinks}")
    parts = [Part(None, s.leaves(), causal=True, diagonal=True)]
    if s.head_len > 0:
        parts.append(Part(None, s.head(), causal=True))
    # exact sinks: rectangle 0 of each level attends to those among the main square's keys (the
    # rectangles 0 hold every query after the first leaf once), a hyper prefix to those in the
    # prefix (an exact prefix covers them)
    prefix_sinks, main_sinks = s.split_sinks(plan.sinks)
    if plan.prefix_plan is None:
        prefix_sinks = 0
    window = dict(band=1, window_edge=s.prefix_len - plan.window) if plan.window else {}
    parts += [Part(level_plan, s.level(level), sinks=plan.sinks, exact_keys=main_sinks, **window)
              for level, level_plan in enumerate(plan.level_plans, start=1)]
    if s.prefix_keys > 0:  # exact (plan None) when the prefix fits in one block
        parts.append(Part(plan.prefix_plan, s.prefix(), sinks=plan.sinks if plan.prefix_plan else 0,
                          exact_keys=prefix_sinks, **window))
    if plan.window:
        parts += window_parts(s, plan.window, plan.sinks)
    if main_sinks:
        parts += _sink_key_grads(s.first_approximated, num_queries - s.first_approximated, s.prefix_keys, main_sinks)
    if prefix_sinks:
        parts += _sink_key_grads(s.head_len, s.main_len, 0, prefix_sinks)
    return assign_owners(parts, num_queries, num_keys)


def window_parts(s: CausalSchedule, window: int, sinks: int) -> list[Part]:
    """Exact parts of the window keys that the approximated parts skip: the first
    ``min(window, leaf_len)`` queries of each diagonal leaf against the ``window`` keys before
    the leaf (those from key row ``sinks`` on: other parts attend to the sinks), each query to
    the keys of its own window (``band`` 2). Leaves whose window keys start at a row below
    ``max(sinks, 0)`` get a part each, the others one part together."""
    leaves = s.leaves()
    num_queries = min(window, s.leaf_len)
    band = dict(band=2, window_edge=s.prefix_len - window)

    def key_start(leaf: int) -> int:
        return leaves.keys.start + leaf * leaves.keys.stride - window

    regular = next((leaf for leaf in range(leaves.count) if key_start(leaf) >= sinks), leaves.count)
    parts = []
    for leaf in range(regular):  # windows cut by the sinks or the first key
        start, stop = max(sinks, key_start(leaf)), key_start(leaf) + window
        if stop > start:
            parts.append(Part(None, _single(num_queries, stop - start, leaves.queries.start + leaf * s.leaf_len,
                                            start), **band))
    if regular < leaves.count:
        parts.append(Part(None, Rectangles(
            count=leaves.count - regular,
            queries=Rows(start=leaves.queries.start + regular * s.leaf_len, stride=s.leaf_len, length=num_queries),
            keys=Rows(start=key_start(regular), stride=s.leaf_len, length=window)), **band))
    return parts


def tail_parts(tail: int, num_keys: int, causal: bool) -> tuple[list[Part], int]:
    """The exact tail (``HyperAttentionConfig.exact_tail``) as split-KV launches.

    The last ``tail`` queries attend to the keys every one of them sees in chunks of
    ``KEY_CHUNK_LEN`` keys, one problem per chunk, and to the remaining keys (causal: their
    own corner, bottom-right) in one more problem. Problem c reads copy c of the tail's query
    rows, so the parts run on ``copies`` stacked copies of them and write one partial result
    per copy, merged by log-sum-exp afterwards; every part writes distinct rows of its
    outputs. Returns (parts, copies)."""
    seen_by_all = num_keys - tail if causal else num_keys
    chunks = seen_by_all // KEY_CHUNK_LEN
    if chunks < 2:
        return [Part(None, _single(tail, num_keys), causal=causal)], 1
    split = chunks * KEY_CHUNK_LEN
    parts = [Part(None, Rectangles(count=chunks, queries=Rows(start=0, stride=tail, length=tail),
                                   keys=Rows(start=0, stride=KEY_CHUNK_LEN, length=KEY_CHUNK_LEN)))]
    if split < num_keys:
        parts.append(Part(None, _single(tail, num_keys - split, chunks * tail, split), causal=causal))
    return parts, len(parts) - 1 + chunks
