"""Tile sizes: the table, its environment override, and tiles cut to small parts."""

import pytest

pytest.importorskip("triton")

from hyperattn.executors.triton import tiles  # noqa: E402


def test_launch_config_override_names_families(monkeypatch):
    monkeypatch.setenv("HYPERATTN_TRITON_CONFIG", "dense_dkdv=64,128,8,2")
    assert tiles.launch_config("dense_dkdv", 64, 64) == dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2)
    assert tiles.launch_config("hyper_dkdv", 64, 64) != dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=2)
    for bad in ("dense_dq=1,2,3", "backward=64,64,4,3"):
        monkeypatch.setenv("HYPERATTN_TRITON_CONFIG", bad)
        with pytest.raises(ValueError, match="HYPERATTN_TRITON_CONFIG"):
            tiles.launch_config("hyper_fwd", 64, 64)
    # tiles at which Triton 3.6 miscompiled the query-side hyper kernels on an H200
    for family, tile in (("hyper_fwd", "128,32,4,3"), ("hyper_dq", "256,64,8,3")):
        monkeypatch.setenv("HYPERATTN_TRITON_CONFIG", f"{family}={tile}")
        with pytest.raises(ValueError, match="BLOCK_M <= 2 \\* BLOCK_N"):
            tiles.launch_config(family, 64, 64)
    monkeypatch.setenv("HYPERATTN_TRITON_CONFIG", "hyper_dkdv=128,32,4,3")
    assert tiles.launch_config("hyper_dkdv", 64, 64)["BLOCK_N"] == 32


def test_exact_tiles_fit_small_parts():
    """The exact tail's 64 queries and the sinks' 16 keys get tiles of their own size, on at most 4 warps."""
    cfg = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    assert tiles.fit_tiles(cfg, 64, 16) == dict(BLOCK_M=64, BLOCK_N=16, num_warps=4, num_stages=3)
    assert tiles.fit_tiles(cfg, 5, 4096) == dict(BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=3)
    assert tiles.fit_tiles(cfg, 4096, 100) is cfg
