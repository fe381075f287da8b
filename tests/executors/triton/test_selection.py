"""The block-selection kernel against the float64 definition (Triton's interpreter on CPU)."""

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.executors.triton import selection  # noqa: E402
from hyperattn.executors.triton.selection import (block_centroids_triton, refine_selection_triton,  # noqa: E402
                                                  select_key_blocks_triton)
from hyperattn.plan.selection import block_centroids, select_key_blocks  # noqa: E402
from hyperattn.testing.gpu import selection_shortfall  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,block_size,count", [
    ((1, 2, 2, 40, 300, 16), 8, 8),  # 38 blocks over several 16-block tiles
    ((2, 4, 2, 33, 130, 32), 4, 5),  # GQA, a short last block, 5 of 33 (padded to 8 slots)
    ((1, 1, 1, 20, 24, 16), 8, 9),  # more blocks asked than there are: all 3
    ((1, 2, 1, 48, 1100, 16), 4, 3),  # 275 blocks in 18 tiles: the first pass's floor prunes
    ((2, 4, 2, 33, 300, 16), 8, 1),  # one block (the centroid rule): one pass, a running maximum
])
def test_kernel_chooses_the_top_blocks(shape, block_size, count, monkeypatch):
    monkeypatch.setattr(selection, "SELECTION_BLOCK_M", 16)
    monkeypatch.setattr(selection, "SELECTION_BLOCK_N", 16)
    batch, hq, hkv, nq, nk, d = shape
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, hq, nq, d, generator=gen).to(DEVICE, torch.float16)
    k = torch.randn(batch, hkv, nk, d, generator=gen).to(DEVICE, torch.float16)
    live = torch.rand(batch, hkv, nk, generator=gen).to(DEVICE) > 0.2
    live[..., block_size:3 * block_size] = False  # two dead blocks
    for mask in (None, live):
        got = select_key_blocks_triton(q, k, mask, block_size, count)
        assert got.shape == (batch, hq, nq, min(count, -(-nk // block_size)))
        assert (got[..., 1:] > got[..., :-1]).all(), "ascending, no repeats"
        # fp16 means and fp32 accumulation: near-ties may swap, nothing further
        assert selection_shortfall(q, k, mask, block_size, got).max() < 2e-2


def test_dead_blocks_are_chosen_only_when_too_few_live_ones_remain():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 16, 16, generator=gen).to(DEVICE, torch.float16)
    k = torch.randn(1, 1, 64, 16, generator=gen).to(DEVICE, torch.float16)
    live = torch.zeros(1, 1, 64, dtype=torch.bool, device=DEVICE)
    live[..., 8:24] = True  # blocks 1 and 2 of 8
    got = select_key_blocks_triton(q, k, live, 8, 2)
    assert (got == torch.tensor([1, 2], device=DEVICE)).all()
    got = select_key_blocks_triton(q, k, live, 8, 3)
    assert ((got[..., :] == 1).any(-1) & (got == 2).any(-1)).all() and got.unique().numel() >= 3
    got = select_key_blocks_triton(q, k, live, 8, 1)
    assert ((got == 1) | (got == 2)).all()
    live[..., 8:24] = False  # no live key at all: some block, never out of range
    got = select_key_blocks_triton(q, k, live, 8, 1)
    assert ((got >= 0) & (got < 8)).all()


@pytest.mark.parametrize("shape,block_size,coarse_size,count", [
    ((1, 2, 2, 40, 300, 16), 4, 16, 3),  # 19 coarse blocks, 6 kept a query
    ((2, 4, 2, 33, 130, 32), 2, 8, 5),  # GQA, a short last coarse block
])
def test_refine_kernel_chooses_the_top_blocks_inside_the_coarse_picks(shape, block_size, coarse_size, count,
                                                                      monkeypatch):
    monkeypatch.setattr(selection, "SELECTION_BLOCK_M", 16)
    batch, hq, hkv, nq, nk, d = shape
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(batch, hq, nq, d, generator=gen).to(DEVICE, torch.float16)
    k = torch.randn(batch, hkv, nk, d, generator=gen).to(DEVICE, torch.float16)
    live = torch.rand(batch, hkv, nk, generator=gen).to(DEVICE) > 0.2
    live[..., :2 * block_size] = False  # dead blocks inside the first coarse block
    coarse = select_key_blocks(q.double(), k.double(), live, coarse_size, 2 * count)
    got = refine_selection_triton(q, k, live, block_size, count, coarse, coarse_size)
    assert got.shape == (batch, hq, nq, count) and (got[..., 1:] > got[..., :-1]).all()
    ratio = coarse_size // block_size
    assert (got[..., :, None] // ratio == coarse[..., None, :]).any(-1).all(), "inside the coarse blocks"
    # against the float64 scores of the candidates: the weakest choice within rounding of the count-th best
    centroids, has_live = block_centroids(k.double(), live, block_size)
    scores = torch.einsum("zhqd,zhbd->zhqb", q.double(), centroids.repeat_interleave(hq // hkv, 1))
    scores = scores.masked_fill(~has_live.repeat_interleave(hq // hkv, 1)[:, :, None], -1e300)
    num_blocks = scores.shape[-1]
    inside = (torch.arange(num_blocks, device=DEVICE) // ratio == coarse[..., None]).any(-2)
    scores = scores.masked_fill(~inside, -torch.inf)
    kth = scores.topk(count, -1).values[..., -1]
    worst = scores.gather(-1, got).min(-1).values
    assert ((kth - worst) / scores.masked_fill(~torch.isfinite(scores) | (scores < -1e299), 0).abs().amax(-1)
            < 2e-2).all()


@pytest.mark.parametrize("block_size", [1, 5, 16, 128])
def test_block_means_kernel_matches_the_definition(block_size):
    gen = torch.Generator().manual_seed(2)
    k = torch.randn(2, 3, 300, 24, generator=gen).to(DEVICE, torch.float16)[:, :, 10:]  # a strided view, 290 keys
    live = torch.rand(2, 3, 290, generator=gen).to(DEVICE) > 0.3
    live[..., :2 * block_size] = False  # the first two blocks have no live key
    for mask in (None, live):
        means, has_live = block_centroids_triton(k, mask, block_size)
        want, want_live = block_centroids(k.double(), mask, block_size)
        assert torch.equal(has_live, want_live)
        torch.testing.assert_close(means.double(), want, rtol=1e-5, atol=1e-5)
