"""Causal schedule: the halving recursion of causal HyperAttention, flattened into levels.

For Nq queries against Nk >= Nq keys, aligned bottom-right (query i sits at key position
``Nk - Nq + i``), the keys split into a prefix every query sees and a causal square:

    keys   [0, prefix_len + head_len)        prefix: seen in full by the main queries
    queries[0, head_len)                     head: exact causal attention (< 2**num_levels rows)
    queries[head_len, Nq) x their keys       main square of 2**num_levels * leaf_len rows

The main square is the recursion: level l (1..L) holds 2**(l-1) off-diagonal rectangles,
all of side ``main_len / 2**l``, each queries of a right half against keys of the left half;
the 2**L diagonal leaves of ``leaf_len <= min_seq_len`` are exact causal blocks.
Every main query merges its leaf with at most one rectangle per level and the prefix.

This module is the one place where that geometry is written: ``CausalSchedule`` gives each
piece as ``Rectangles`` in row coordinates of the whole q and k, and every consumer (the
plan, the launch list, the reference executor) reads its rows from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Rows:
    """The rows ``start + r * stride + [0, length)`` of problems r = 0, 1, ... (dim 2 of a
    (B, H, N, ...) tensor). ``stride`` 0: every problem reads the same rows."""

    start: int
    stride: int
    length: int

    def end(self, count: int) -> int:
        """One past the last row that ``count`` problems read."""
        return self.start + (count - 1) * self.stride + self.length

    def spans(self, count: int) -> list[tuple[int, int]]:
        """[start, stop) of each problem's rows."""
        starts = (self.start + r * self.stride for r in range(count))
        return [(s, s + self.length) for s in starts]

    def take(self, x: torch.Tensor, count: int) -> torch.Tensor:
        """(B, H, N, ...) -> (B * count, H, length, ...): the problems' rows, batch-major (a view
        when ``count`` is 1)."""
        if count == 1 or self.stride == 0:
            rows = x.narrow(2, self.start, self.length)
            return rows if count == 1 else rows.unsqueeze(1).expand(-1, count, *rows.shape[1:]).flatten(0, 1)
        windows = x.narrow(2, self.start, self.end(count) - self.start).unfold(2, self.length, self.stride)
        return windows.movedim(-1, 3).transpose(1, 2).flatten(0, 1)  # (B, count, H, length, ...)

    def index(self, count: int, device=None) -> torch.Tensor:
        """int64 (count * length,): the rows of problems 0, 1, ... in order (the rows of ``join``)."""
        starts = self.start + self.stride * torch.arange(count, device=device)
        return (starts[:, None] + torch.arange(self.length, device=device)).flatten()

    def join(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverse of ``take`` for results: (B * count, H, length, ...) -> (B, H, count * length, ...),
        row i of the result belonging to row ``index(count)[i]``."""
        per_problem = y.unflatten(0, (batch, -1))
        return per_problem.transpose(1, 2).flatten(2, 3)


@dataclass(frozen=True, kw_only=True)
class Rectangles:
    """``count`` problems of one shape: problem r attends the query rows ``queries`` of r
    to the key rows ``keys`` of r."""

    count: int
    queries: Rows
    keys: Rows

    def take(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries' rows of q, keys' rows of k), each (B * count, H, length, ...)."""
        return self.queries.take(q, self.count), self.keys.take(k, self.count)


@dataclass(frozen=True)
class CausalSchedule:
    num_queries: int
    num_keys: int
    head_len: int
    leaf_len: int
    num_levels: int

    @property
    def prefix_len(self) -> int:
        """Keys before the causal square (``Nk - Nq``), all visible to every query."""
        return self.num_keys - self.num_queries

    @property
    def main_len(self) -> int:
        return self.leaf_len << self.num_levels

    @property
    def num_leaves(self) -> int:
        return 1 << self.num_levels

    @property
    def prefix_keys(self) -> int:
        """Keys every main query sees in full: the prefix and the head's keys."""
        return self.prefix_len + self.head_len

    @property
    def max_sinks(self) -> int:
        """The most exact sinks a causal plan takes: the keys before the second diagonal leaf."""
        return self.prefix_keys + self.leaf_len

    @property
    def first_approximated(self) -> int:
        """The first query row that any approximated part reaches (the end of the first leaf)."""
        return self.head_len + self.leaf_len

    def split_sinks(self, sinks: int) -> tuple[int, int]:
        """The first ``sinks`` keys as (those in the prefix, those in the main square: the first
        keys of rectangle 0 of every level)."""
        return min(sinks, self.prefix_keys), max(0, sinks - self.prefix_keys)

    def rectangle_side(self, level: int) -> int:
        """Side of the square rectangles of ``level`` (1-based)."""
        return self.main_len >> level

    def num_rectangles(self, level: int) -> int:
        return 1 << (level - 1)

    def leaves(self) -> Rectangles:
        """The diagonal leaves: exact causal squares of ``leaf_len``."""
        side = self.leaf_len
        return Rectangles(count=self.num_leaves, queries=Rows(start=self.head_len, stride=side, length=side),
                          keys=Rows(start=self.prefix_keys, stride=side, length=side))

    def level(self, level: int) -> Rectangles:
        """The rectangles of ``level`` (1-based): right halves' queries against left halves' keys."""
        side = self.rectangle_side(level)
        return Rectangles(count=self.num_rectangles(level),
                          queries=Rows(start=self.head_len + side, stride=2 * side, length=side),
                          keys=Rows(start=self.prefix_keys, stride=2 * side, length=side))

    def head(self) -> Rectangles:
        """The head's queries against their keys (exact, causal bottom-right)."""
        return Rectangles(count=1, queries=Rows(start=0, stride=0, length=self.head_len),
                          keys=Rows(start=0, stride=0, length=self.prefix_keys))

    def prefix(self) -> Rectangles:
        """Every main query against the prefix keys (non-causal)."""
        return Rectangles(count=1, queries=Rows(start=self.head_len, stride=0, length=self.main_len),
                          keys=Rows(start=0, stride=0, length=self.prefix_keys))


def causal_schedule(num_queries: int, num_keys: int, min_seq_len: int) -> CausalSchedule | None:
    """The schedule for causal HyperAttention, or None where attention is exact
    (``num_queries <= min_seq_len``)."""
    if num_queries > num_keys:
        raise ValueError(f"causal attention needs num_queries <= num_keys, got {num_queries} > {num_keys}")
    if num_queries <= min_seq_len:
        return None
    num_levels = 0
    while (num_queries >> num_levels) > min_seq_len:
        num_levels += 1
    leaf_len = num_queries >> num_levels
    head_len = num_queries - (leaf_len << num_levels)
    return CausalSchedule(num_queries, num_keys, head_len, leaf_len, num_levels)
