"""The block-selection kernel against the float64 definition (Triton's interpreter on CPU)."""

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.executors.triton import selection  # noqa: E402
from hyperattn.executors.triton.selection import select_key_blocks_triton  # noqa: E402
from hyperattn.testing.gpu import selection_shortfall  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,block_size,count", [
    ((1, 2, 2, 40, 300, 16), 8, 8),  # 38 blocks over several 16-block tiles
    ((2, 4, 2, 33, 130, 32), 4, 5),  # GQA, a short last block, 5 of 33 (padded to 8 slots)
    ((1, 1, 1, 20, 24, 16), 8, 9),  # more blocks asked than there are: all 3
    ((1, 2, 1, 48, 1100, 16), 4, 3),  # 275 blocks in 18 tiles: the first pass's floor prunes
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
