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
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def split_sinks(self, sinks: int) -> tuple[int, int]:
        """The first ``sinks`` keys as (those in the prefix, those in the main square: the first
        keys of rectangle 0 of every level)."""
        prefix = self.prefix_len + self.head_len
        return min(sinks, prefix), max(0, sinks - prefix)

    def rectangle_side(self, level: int) -> int:
        """Side of the square rectangles of ``level`` (1-based)."""
        return self.main_len >> level

    def num_rectangles(self, level: int) -> int:
        return 1 << (level - 1)


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


def split_rows(x, num_parts: int):
    """(B, H, num_parts * L, ...) -> (B, num_parts, H, L, ...): consecutive runs of rows as problems."""
    b, h, n = x.shape[:3]
    return x.reshape(b, h, num_parts, n // num_parts, *x.shape[3:]).transpose(1, 2)


def join_rows(x):
    """Inverse of ``split_rows``: (B, num_parts, H, L, ...) -> (B, H, num_parts * L, ...)."""
    b, num_parts, h, n = x.shape[:4]
    return x.transpose(1, 2).reshape(b, h, num_parts * n, *x.shape[4:])


def level_rows(x, level: int, schedule: CausalSchedule, right: bool):
    """Rows of the main square that the rectangles of ``level`` read, as problems.

    ``x``: (B, H, main_len, ...) main-square rows (queries or keys). ``right=True`` gives the
    query rows (right halves of the level's nodes), ``right=False`` the key rows (left halves).
    Returns (B * num_rectangles, H, rectangle_side, ...).
    """
    halves = split_rows(x, 2 * schedule.num_rectangles(level))
    return halves[:, int(right)::2].flatten(0, 1)
