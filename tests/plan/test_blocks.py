import pytest
import torch

from hyperattn.plan import num_key_blocks, query_block_layout, query_block_of_rank


@pytest.mark.parametrize("nq,nk,b", [(64, 64, 8), (100, 100, 8), (37, 100, 8), (100, 37, 8), (1, 5, 2), (7, 3, 16)])
def test_query_blocks_cover_the_key_blocks(nq, nk, b):
    blocks = query_block_of_rank(nq, nk, b)
    nb = num_key_blocks(nk, b)
    assert blocks.min() >= 0 and blocks.max() < nb
    assert torch.all(blocks[1:] >= blocks[:-1])
    if nq >= nk:  # every key block gets queries
        assert torch.equal(torch.unique(blocks), torch.arange(nb))
    if nq == nk:  # same cut as the keys
        assert torch.equal(blocks, torch.arange(nq) // b)


@pytest.mark.parametrize("nq,nk,b", [(100, 100, 8), (37, 100, 8), (100, 37, 8)])
def test_layout_slots_round_trip(nq, nk, b):
    layout = query_block_layout(nq, nk, b)
    nb, width = layout.slot_rank.shape
    assert nb == num_key_blocks(nk, b)
    flat = layout.slot_rank.flatten()
    assert torch.equal(flat[layout.rank_slot], torch.arange(nq))
    assert (flat >= 0).sum() == nq
    assert torch.equal(layout.rank_slot // width, layout.rank_block)


@pytest.mark.parametrize("nq,nk,b", [(100, 100, 8), (37, 100, 8), (100, 37, 8), (1, 5, 2), (7, 3, 16), (4096, 6000, 256)])
def test_block_ranges_and_their_largest_size_follow_the_rank_rule(nq, nk, b):
    from hyperattn.plan.blocks import max_queries_per_block, query_block_range

    blocks = query_block_of_rank(nq, nk, b)
    sizes = []
    for block in range(num_key_blocks(nk, b)):
        lo, hi = query_block_range(block, nq, nk, b)
        assert torch.equal(torch.nonzero(blocks == block).flatten(), torch.arange(lo, max(lo, hi)))
        sizes.append(max(0, hi - lo))
    assert max(sizes) <= max_queries_per_block(nq, nk, b)
