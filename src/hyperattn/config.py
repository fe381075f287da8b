"""Hyperparameters of HyperAttention, validated once at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SAMPLING_METHODS = ("uniform", "value_norm", "mass")
QUERY_BLOCK_RULES = ("rank", "bucket", "centroid")
IMPLEMENTATIONS = ("auto", "reference", "triton")
MAX_LSH_NUM_PROJS = 16
# Where the paper's algorithm differs from the defaults, short inputs aside: it has no exact sinks or
# tail and takes its rank rule. With ``exact_up_to=0`` (every input above min_seq_len approximated)
# these give the paper's algorithm.
PAPER_OVERRIDES = dict(exact_sinks=0, exact_tail=0, query_blocks="rank")


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"HyperAttentionConfig.{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"HyperAttentionConfig.{name} must be {bounds}, got {value}")


@dataclass(frozen=True)
class HyperAttentionConfig:
    """Hyperparameters of HyperAttention; the defaults are the paper's (block 256, 256 samples,
    7 projections, min_seq_len 4096) plus 16 exact sinks, an exact tail of 64 queries,
    ``exact_up_to`` and the strictly causal bucket rule (``query_blocks``): BENCHMARKS.md gives the
    quality and speed behind them. The paper's algorithm is
    ``HyperAttentionConfig(exact_up_to=0, **PAPER_OVERRIDES)``
    (``exact_sinks=0, exact_tail=0, query_blocks="rank"``).

    Args:
        block_size: keys per LSH block (``b``); each query attends exactly to one key
            block (``query_blocks`` says which). ``>= 1``.
        sample_size: keys sampled per (batch, kv head) for the residual (``m``).
            ``0`` disables sampling.
        lsh_num_projs: random hyperplanes of the angular LSH (``r``); ``2**r`` buckets,
            ordered as a reflected Gray code. In ``[1, 16]``.
        min_seq_len: attention over at most this many queries is computed exactly;
            in the causal case the recursion stops at diagonal blocks of at most
            this size. ``>= 1``.
        sampling: ``"uniform"`` (each sampled term weighted by ``n_k / m``),
            ``"value_norm"`` (keys drawn with probability ``p_j`` proportional to
            ``||v_j||^2``, each term weighted by ``1 / (m p_j)``) or ``"mass"`` (``p_j``: half
            the key's share of the attention mass estimated from probe queries, half uniform,
            over the keys that are neither sinks nor heavy; weighted by ``1 / (m p_j)``; uniform
            where no probe precedes a rectangle).
        impl: ``"auto"`` (fused Triton kernels for fp16/bf16 CUDA tensors, the PyTorch
            reference otherwise), ``"reference"`` or ``"triton"`` (fp16/bf16 only; CUDA, or
            any device under ``TRITON_INTERPRET=1``).
        exact_sinks: every query attends exactly to the first ``exact_sinks`` keys of the
            sequence (the "attention sinks" of language models); the approximated parts skip
            them. ``>= 0``. Causal calls cap it at the keys before the second diagonal leaf
            (at least ``min_seq_len / 2`` keys).
        exact_window: causal only: every query attends exactly to the ``exact_window`` keys
            before it, also where they lie outside its diagonal block; the approximated
            parts skip them. ``>= 0``.
        exact_up_to: attention whose exact form costs at most as much as causal attention
            over ``exact_up_to`` tokens (at most ``exact_up_to * (exact_up_to + 1) / 2``
            query-key pairs) is computed exactly, by PyTorch's fused attention. On H100/H200
            HyperAttention's kernels and launches are slower than cuDNN below about 16k causal
            tokens (BENCHMARKS.md), so the default 16384 keeps every call at least as fast as
            exact attention; ``0`` restores the paper's rule (only ``min_seq_len``). ``>= 0``.
        query_blocks: which key block each query attends to exactly. ``"bucket"`` (the default):
            the block where the keys of the query's own bucket sit (the middle of them), which
            depends on the query and earlier keys alone: a causal call is strictly causal (output
            i depends on nothing after i). ``"rank"`` (the paper's): the block at the query's rank
            in bucket order, so every block gets as many queries, which the kernels tile more
            cheaply; in a causal call a query's block then depends on the later queries of its
            rectangle, so changing the tokens after i can change output i. ``"centroid"``: the keys
            keep their order (sinks and heavy keys set aside) and a query attends to the block whose
            mean key scores highest against it: chosen by inner product, as attention weighs keys,
            where a bucket matches angles; strictly causal like ``"bucket"``. No row is hashed
            (``lsh_num_projs`` unused); each query scores ``Nk / block_size`` block means.
        heavy_keys: per approximated rectangle (a problem of the causal recursion, or the whole
            non-causal call) and kv head, the ``heavy_keys`` keys of largest estimated attention
            mass (sinks aside) are attended exactly by every query of the rectangle; the block
            and sample parts skip them. The "vertical lines" of LM attention: a few keys that
            most queries attend to, wherever they are. ``>= 0``.
        probe_queries: the queries whose attention estimates the key masses of ``heavy_keys``
            and ``"mass"`` sampling: the ``probe_queries`` queries just before each causal
            rectangle (so a causal call stays causal; the prefix of chunked prefill takes the
            head's last queries, and none where there is no head), or as many queries drawn at
            random in a non-causal call. The estimate is each probe's exponentiated scores on the
            rectangle's keys, normalized over its last ``hyperattn.plan.PROBE_NORM_KEYS`` keys
            (causal) or every key (non-causal), summed over probes and the query heads of each kv
            head. ``>= 1``.
        selected_blocks: per approximated rectangle, each query also attends exactly to its own
            ``selected_blocks`` blocks of ``selected_block_size`` consecutive keys: those whose mean
            key (over the keys that are neither sinks nor heavy) scores highest against the query.
            They replace the query's LSH block (``block_size``, ``query_blocks`` and
            ``lsh_num_projs`` then only order the keys for sampling); the sample part skips them.
            A query's choice depends on its own vector and the keys, so causal calls stay strictly
            causal. The fused kernels run it with ``sample_size=0`` (the configs it is meant for);
            with samples ``impl="auto"`` takes the reference executor and ``impl="triton"`` is
            refused. ``>= 0`` (0: the LSH block).
        selected_block_size: keys per selected block. ``>= 1``.
        selection_coarse_size: with ``selected_blocks``, choose in two stages: each query first
            keeps its ``2 * selected_blocks`` best runs of this many consecutive keys (by their
            mean key, as above), then its selected blocks among the blocks inside them, so it
            scores ``selected_block_size / selection_coarse_size`` as many means. A multiple of
            ``selected_block_size`` above it; 0 (every block scored).
        selection_tile: with ``selected_blocks``, each query also attends to the blocks that the earlier
            queries of its tile selected: tiles of this many consecutive queries from each rectangle's first,
            the fused kernels' query tile, which runs every block its rows chose anyway, so a query sees more
            keys at no cost in time. Only earlier queries of the tile add blocks, so causal calls stay
            strictly causal. 0 (each query its own blocks) or a power of two >= 16.
        exact_tail: the last ``exact_tail`` queries attend exactly to every key they see
            (causal or not), in place of their approximated rows. A prompt's question usually
            sits at its end, and decoding is exact anyway. ``>= 0``; a call with at most
            ``exact_tail`` queries is exact.
    """

    block_size: int = field(default=256, metadata={
        "help": "keys per LSH block; each query attends exactly to one key block, chosen by the query_blocks rule"})
    sample_size: int = field(default=256, metadata={
        "help": "keys sampled per (batch, kv head) for the residual; 0 disables sampling"})
    lsh_num_projs: int = field(default=7, metadata={
        "help": f"random hyperplanes of the angular LSH (2**r buckets), at most {MAX_LSH_NUM_PROJS}"})
    min_seq_len: int = field(default=4096, metadata={
        "help": "attention over at most this many queries runs exactly; causal: the recursion stops at "
                "diagonal blocks of at most this size"})
    sampling: str = field(default="uniform", metadata={
        "help": "how the residual's keys are drawn: uniform, value_norm (with probability proportional to "
                "||v_j||^2) or mass (by the key masses the probe queries estimate)"})
    impl: str = field(default="auto", metadata={
        "help": "auto (fused Triton kernels for fp16/bf16 CUDA tensors, the PyTorch reference otherwise), "
                "reference or triton"})
    exact_sinks: int = field(default=16, metadata={
        "help": "every query attends exactly to this many first keys (attention sinks)"})
    exact_window: int = field(default=0, metadata={
        "help": "causal only: every query attends exactly to this many keys before it"})
    exact_tail: int = field(default=64, metadata={
        "help": "this many last queries attend exactly to every key they see"})
    exact_up_to: int = field(default=16384, metadata={
        "help": "attention costing no more than causal attention over this many tokens runs exactly, by "
                "PyTorch's fused attention; 0: only min_seq_len decides, as in the paper"})
    heavy_keys: int = field(default=0, metadata={
        "help": "per approximated rectangle, this many keys with the largest estimated attention mass are "
                "attended exactly by all its queries"})
    probe_queries: int = field(default=64, metadata={
        "help": "queries whose attention estimates the key masses for heavy_keys and mass sampling: in a causal "
                "call, the ones just before each rectangle"})
    selected_blocks: int = field(default=0, metadata={
        "help": "per approximated rectangle, each query attends to this many blocks of selected_block_size "
                "consecutive keys whose mean key scores highest against it, in place of its LSH block "
                "(fused kernels: with sample_size 0 only); 0: the LSH block"})
    selected_block_size: int = field(default=8, metadata={
        "help": "keys per selected block (selected_blocks)"})
    selection_coarse_size: int = field(default=0, metadata={
        "help": "choose the selected blocks in two stages: first each query's 2 * selected_blocks best runs of "
                "this many keys, then its blocks inside them (a multiple of selected_block_size); 0: every "
                "block scored"})
    selection_tile: int = field(default=0, metadata={
        "help": "with selected_blocks, each query also attends to the blocks the earlier queries of its tile of this "
                "many consecutive queries selected (0 or a power of two >= 16); 0: its own blocks only"})
    query_blocks: str = field(default="bucket", metadata={
        "help": "which key block a query attends to: bucket (where the keys of its own bucket sit: strictly "
                "causal), rank (the paper's: by its rank among the queries; faster, but in causal calls it "
                "depends on later queries) or centroid (the block of consecutive keys whose mean key scores "
                "highest against it: strictly causal)"})

    def __post_init__(self) -> None:
        _check_int("block_size", self.block_size, 1)
        _check_int("sample_size", self.sample_size, 0)
        _check_int("lsh_num_projs", self.lsh_num_projs, 1, MAX_LSH_NUM_PROJS)
        _check_int("min_seq_len", self.min_seq_len, 1)
        _check_int("exact_sinks", self.exact_sinks, 0)
        _check_int("exact_window", self.exact_window, 0)
        _check_int("exact_tail", self.exact_tail, 0)
        _check_int("exact_up_to", self.exact_up_to, 0)
        _check_int("heavy_keys", self.heavy_keys, 0)
        _check_int("probe_queries", self.probe_queries, 1)
        _check_int("selected_blocks", self.selected_blocks, 0)
        _check_int("selected_block_size", self.selected_block_size, 1)
        _check_int("selection_coarse_size", self.selection_coarse_size, 0)
        if self.selection_coarse_size and (self.selection_coarse_size <= self.selected_block_size
                                           or self.selection_coarse_size % self.selected_block_size):
            raise ValueError(f"HyperAttentionConfig.selection_coarse_size must be 0 or a multiple of "
                             f"selected_block_size ({self.selected_block_size}) above it, got "
                             f"{self.selection_coarse_size}")
        _check_int("selection_tile", self.selection_tile, 0)
        if self.selection_tile and (self.selection_tile < 16 or self.selection_tile & (self.selection_tile - 1)):
            raise ValueError(f"HyperAttentionConfig.selection_tile must be 0 or a power of two >= 16 (the fused "
                             f"kernels' query tile), got {self.selection_tile}")
        if not isinstance(self.sampling, str) or self.sampling not in SAMPLING_METHODS:
            raise ValueError(
                f"HyperAttentionConfig.sampling must be one of {SAMPLING_METHODS}, got {self.sampling!r}"
            )
        if not isinstance(self.query_blocks, str) or self.query_blocks not in QUERY_BLOCK_RULES:
            raise ValueError(f"HyperAttentionConfig.query_blocks must be one of {QUERY_BLOCK_RULES}, "
                             f"got {self.query_blocks!r}")
        if not isinstance(self.impl, str) or self.impl not in IMPLEMENTATIONS:
            raise ValueError(f"HyperAttentionConfig.impl must be one of {IMPLEMENTATIONS}, got {self.impl!r}")

    @property
    def hashes(self) -> bool:
        """Whether plans hash rows into LSH buckets: not with ``selected_blocks`` or the
        ``"centroid"`` rule, which choose key blocks by score."""
        return self.selected_blocks == 0 and self.query_blocks != "centroid"

    @property
    def uses_probes(self) -> bool:
        """Whether plans estimate key masses from probe queries (``heavy_keys`` or mass sampling)."""
        return self.heavy_keys > 0 or self.sampling == "mass"

    def runs_exact(self, num_queries: int, num_keys: int, causal: bool) -> bool:
        """Whether attention of ``num_queries`` queries over ``num_keys`` keys is computed
        exactly: at most ``min_seq_len`` queries (or ``exact_tail``: every row exact anyway), or
        at most as many query-key pairs as causal attention over ``exact_up_to`` tokens
        (bottom-right causal: query i sees ``num_keys - num_queries + i + 1`` keys)."""
        if num_queries <= max(self.min_seq_len, self.exact_tail):
            return True
        pairs = num_queries * num_keys - (num_queries * (num_queries - 1) // 2 if causal else 0)
        return pairs <= self.exact_up_to * (self.exact_up_to + 1) // 2


def check_scale(scale, head_dim: int) -> float:
    """Return the softmax scale: ``scale`` if given, else ``head_dim ** -0.5``."""
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    return scale
