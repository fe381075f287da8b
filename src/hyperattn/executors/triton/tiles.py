"""Tile sizes of the kernel families: the tuned table, its environment override, and the
launch arithmetic that follows from a tile (query chunks held in registers, index widths)."""

from __future__ import annotations

import functools
import os


def tile_width(n: int) -> int:
    """The narrowest tile dimension that holds ``n``: a power of two, at least 16 (the
    smallest that ``tl.dot`` accepts)."""
    return max(16, 1 << max(n - 1, 0).bit_length())


# Tile configurations (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel family and head
# dim: the fastest of tools/sweep_configs.py and same-call profiles on an H200 at 131k tokens
# (head dims 64 and 128; 256 untuned), and for hyper_fwd at 128 on an H100 with the bucket rule (two
# stages: 26.77 against 28.14 ms for three). BLOCK_M tiles queries and BLOCK_N keys in every family.
KERNEL_FAMILIES = ("hyper_fwd", "dense_fwd", "hyper_dq", "dense_dq", "hyper_dkdv", "dense_dkdv", "hyper_samples")
_CONFIGS = {
    64: dict(hyper_fwd=(128, 64, 4, 3), dense_fwd=(128, 64, 4, 3), hyper_dq=(128, 64, 4, 3),
             dense_dq=(128, 64, 8, 3), hyper_dkdv=(32, 128, 4, 3), dense_dkdv=(64, 64, 4, 3),
             hyper_samples=(64, 64, 4, 3)),
    128: dict(hyper_fwd=(64, 64, 4, 2), dense_fwd=(128, 128, 8, 3), hyper_dq=(64, 64, 4, 2),
              dense_dq=(128, 64, 8, 3), hyper_dkdv=(64, 64, 4, 2), dense_dkdv=(64, 64, 4, 2),
              hyper_samples=(64, 64, 4, 2)),
    256: {family: (64, 32, 8, 1) for family in KERNEL_FAMILIES},
}


@functools.cache
def parse_override(text: str) -> dict[str, tuple[int, ...]]:
    """``"BM,BN,W,S"`` (every family) or ``"fwd=BM,BN,W,S;bwd_dkdv=..."`` (the families named),
    checked: four integers, known families, and the tile shapes Triton 3.6 compiles right."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        family, _, numbers = item.rpartition("=")
        families = KERNEL_FAMILIES if not family else (family.strip(),)
        values = tuple(int(x) for x in numbers.split(","))
        if len(values) != 4 or any(f not in KERNEL_FAMILIES for f in families):
            raise ValueError(f"HYPERATTN_TRITON_CONFIG: expected 'BM,BN,warps,stages' or "
                             f"'family=BM,BN,warps,stages;...' with family in {KERNEL_FAMILIES}, got {text!r}")
        for f in families:
            if f in ("hyper_fwd", "hyper_dq") and values[0] > 2 * values[1]:
                # Triton 3.6 miscompiles their register-held row indices (tl.gather) at these tiles: an
                # H200 faulted (illegal address) at 128,32,4,3 and 256,64,8,3, correct under the interpreter
                raise ValueError(f"HYPERATTN_TRITON_CONFIG: {f} needs BLOCK_M <= 2 * BLOCK_N, got {values}")
        overrides.update({f: values for f in families})
    return overrides


def launch_config(family: str, head_dim: int, head_dim_v: int) -> dict:
    """Tile sizes and warps of one kernel family by head dim;
    ``HYPERATTN_TRITON_CONFIG`` overrides them (for tuning, see ``parse_override``)."""
    widest = max(head_dim, head_dim_v)
    block_m, block_n, warps, stages = _CONFIGS[64 if widest <= 64 else 128 if widest <= 128 else 256][family]
    if os.environ.get("TRITON_INTERPRET") == "1":  # small tiles: the interpreter is slow
        block_m, block_n = 16, 16
    override = parse_override(os.environ.get("HYPERATTN_TRITON_CONFIG", "")).get(family)
    if override:
        block_m, block_n, warps, stages = override
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)


def fit_tiles(cfg: dict, n_q: int, n_k: int) -> dict:
    """``cfg`` with BLOCK_M and BLOCK_N no larger than an exact part's queries and keys (powers
    of two, at least 16), on at most 4 warps when cut: the exact tail's 64 queries and the
    sinks' 16 keys would otherwise fill half or a quarter of every tile."""
    block_m = min(cfg["BLOCK_M"], tile_width(n_q))
    block_n = min(cfg["BLOCK_N"], tile_width(n_k))
    if (block_m, block_n) == (cfg["BLOCK_M"], cfg["BLOCK_N"]):
        return cfg
    return dict(cfg, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=min(cfg["num_warps"], 4))


# The most sorted queries whose rows the key-side backward kernels hold in registers at a time
REGISTER_QUERY_ROWS = 512


def query_chunk(rows: int, block_m: int) -> int:
    """``QUERY_CHUNK`` of the key-side backward kernels for loops over ``rows`` sorted queries:
    all of them where they fit in ``REGISTER_QUERY_ROWS``, as a power of two of at least ``block_m``."""
    return max(block_m, min(REGISTER_QUERY_ROWS, tile_width(rows)))


def index_widths(block_size: int, num_samples: int, block_n: int) -> dict:
    """``BLOCK_KEYS`` and ``SAMPLES`` of the hyper forward and dq kernels: the key block's and
    the samples' row indices they hold in registers, as powers of two of at least ``block_n``."""
    return dict(BLOCK_KEYS=tile_width(max(block_size, block_n)), SAMPLES=tile_width(max(num_samples, block_n)))
