"""The launch list: which rows each part reads and which gradient rows it writes last (pure Python)."""

import pytest
import torch

from hyperattn import HyperAttentionConfig
from hyperattn.plan import Rectangles, Rows, plan_hyper_attention
from hyperattn.plan import launch
from hyperattn.plan.launch import Part, assign_owners, parts_of, tail_parts
from tests.conftest import random_qkv


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(launch, "KEY_CHUNK_LEN", 16)
    monkeypatch.setattr(launch, "QUERY_CHUNK_LEN", 16)


def make_plan(nq, nk, causal, sinks=0, block=8, samples=10, min_len=8, batch=1):
    q, k, v = random_qkv(batch=batch, hq=2, hkv=1, nq=nq, nk=nk, d=8, seed=nq + nk)
    cfg = HyperAttentionConfig(block_size=block, sample_size=samples, exact_up_to=0, min_seq_len=min_len,
                               exact_sinks=sinks)
    return plan_hyper_attention(q, k, v, causal, cfg, torch.Generator().manual_seed(0))


def rows_of(runs: Rows, count: int) -> list[int]:
    return [row for start, stop in runs.spans(count) for row in range(start, stop)]


# (Nq, Nk, causal, sinks, min_seq_len): heads, prefixes (hashed and exact), sinks in both
SHAPES = [(96, 96, True, 0, 8), (77, 77, True, 4, 8), (64, 90, True, 5, 8), (64, 70, True, 9, 8),
          (50, 77, True, 0, 8), (100, 100, True, 3, 12), (70, 45, False, 0, 8), (70, 45, False, 5, 8),
          (48, 40, False, 20, 8)]


@pytest.mark.parametrize("nq,nk,causal,sinks,min_len", SHAPES)
def test_owners_partition_the_rows_and_own_what_no_earlier_owner_does(nq, nk, causal, sinks, min_len):
    parts = parts_of(make_plan(nq, nk, causal, sinks, min_len=min_len), nq, nk, causal)
    for owns, rows, total in (("owns_queries", "queries", nq), ("owns_keys", "keys", nk)):
        owned = sorted(r for part in parts if getattr(part, owns) for r in rows_of(getattr(part.rects, rows),
                                                                                 part.count))
        assert owned == list(range(total)), f"{owns}: every row once"
    assert not any(part.owns_queries for part in parts if part.key_grads_only)
    assert not any(part.owns_keys for part in parts if part.shares_key_rows)


def test_causal_owners_are_the_leaves_and_the_head_or_else_the_prefix():
    with_head = parts_of(make_plan(77, 100, True), 77, 100, True)  # a head of 13 rows, a prefix of 23 keys
    owners = [(part.diagonal, part.plan is None and part.causal, part.owns_queries, part.owns_keys)
              for part in with_head]
    assert owners[:2] == [(True, True, True, True), (False, True, True, True)]  # leaves, head
    assert not any(part.owns_queries or part.owns_keys for part in with_head[2:])
    no_head = parts_of(make_plan(64, 90, True), 64, 90, True)
    prefix = [part for part in no_head if part.rects.keys.start == 0 and not part.key_grads_only]
    assert len(prefix) == 1 and prefix[0].owns_keys and not prefix[0].owns_queries


def test_owners_that_leave_rows_uncovered_are_an_error():
    rects = Rectangles(count=1, queries=Rows(start=0, stride=0, length=4), keys=Rows(start=0, stride=0, length=4))
    with pytest.raises(AssertionError, match="4 of 6 key rows"):
        assign_owners([Part(None, rects)], 4, 6)


def test_noncausal_sinks_run_inside_the_hyper_part():
    """Forward and dq: the hyper part attends to the sinks itself; the exact parts only add the
    sinks' key gradients, in chunks of queries that together cover every query once."""
    plan = make_plan(70, 45, False, sinks=5, batch=2)
    parts = parts_of(plan, 70, 45, False)
    assert parts[0].plan is plan and parts[0].exact_keys == plan.sinks == 5
    assert all(part.key_grads_only and part.plan is None for part in parts[1:])
    rows = sorted(row for part in parts[1:] for row in rows_of(part.rects.queries, part.count))
    assert rows == list(range(70)) and parts[1].count == 70 // launch.QUERY_CHUNK_LEN


def test_causal_sinks_run_inside_the_first_rectangle_of_each_level():
    """Forward and dq: rectangle 0 of each level attends to the sinks; those rectangles hold
    every query after the first leaf once, and exact parts on shared key rows add the sinks'
    key gradients from the same queries."""
    plan = make_plan(96, 96, True, sinks=3)
    s = plan.schedule
    assert s.head_len == s.prefix_len == 0
    parts = parts_of(plan, 96, 96, True)
    levels = [part for part in parts if part.plan is not None]
    assert len(levels) == s.num_levels and all(part.exact_keys == plan.sinks == 3 for part in levels)
    first_rectangles = sorted(row for part in levels for row in rows_of(part.rects.queries, 1))
    assert first_rectangles == list(range(s.leaf_len, s.main_len))
    grads = [part for part in parts if part.key_grads_only]
    assert sorted(row for part in grads for row in rows_of(part.rects.queries, part.count)) == first_rectangles
    assert all(part.rects.keys == Rows(start=0, stride=0, length=plan.sinks) for part in grads)
    assert not any(part.plan is None and not part.key_grads_only and not part.diagonal for part in parts)


def test_parts_reject_what_their_kernels_cannot_run():
    plan = make_plan(96, 96, True, sinks=3)
    shared = Rectangles(count=3, queries=Rows(start=0, stride=4, length=4), keys=Rows(start=0, stride=0, length=2))
    with pytest.raises(ValueError, match="cannot own"):
        Part(None, shared, owns_keys=True)
    with pytest.raises(ValueError, match="one stride"):
        Part(plan.level_plans[0], shared)
    with pytest.raises(ValueError, match="belong to hyper parts"):
        Part(None, shared, exact_keys=2)
    with pytest.raises(TypeError):
        Part(None, shared, False)  # keyword-only beyond plan and rects


@pytest.mark.parametrize("tail,nk,causal,copies", [(6, 77, True, 5), (5, 83, False, 6), (4, 80, False, 5),
                                                   (4, 20, True, 1)])
def test_tail_parts_split_the_keys_every_tail_query_sees(tail, nk, causal, copies):
    parts, got_copies = tail_parts(tail, nk, causal)
    assert got_copies == copies
    keys = sorted(row for part in parts for row in rows_of(part.rects.keys, part.count))
    assert keys == list(range(nk))
    queries = sorted(row for part in parts for row in rows_of(part.rects.queries, part.count))
    assert queries == list(range(copies * tail))  # one copy of the tail's rows per problem
    assert [part.causal for part in parts][-1] == causal
