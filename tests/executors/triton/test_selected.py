"""The selected blocks' tile lists against their definition."""

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.executors.triton.selected import tile_unions  # noqa: E402


@pytest.mark.parametrize("n_q,block_m", [(37, 16), (32, 16), (5, 8)])
def test_tile_unions_list_each_tiles_distinct_blocks(n_q, block_m):
    gen = torch.Generator().manual_seed(0)
    selected = torch.randint(0, 12, (2, 3, n_q, 4), generator=gen).sort(-1).values
    union, first, count = tile_unions(selected, block_m)
    tiles = -(-n_q // block_m)
    assert union.shape == (2, 3, tiles, block_m * 4) and union.dtype == torch.int32
    for z in range(2):
        for h in range(3):
            for t in range(tiles):
                want = selected[z, h, t * block_m:(t + 1) * block_m].unique()  # sorted
                c = int(count[z, h, t])
                assert c == want.numel()
                assert torch.equal(union[z, h, t, :c].long(), want)
                rows = selected[z, h, t * block_m:(t + 1) * block_m]
                firsts = [int((rows == b).any(-1).nonzero()[0]) for b in want]
                assert first[z, h, t, :c].tolist() == firsts
                assert (union[z, h, t, c:] == -1).all() and (first[z, h, t, c:] == block_m).all()
