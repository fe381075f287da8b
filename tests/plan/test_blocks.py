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
    layout = query_block_layout(query_block_of_rank(nq, nk, b), num_key_blocks(nk, b))
    nb, width = layout.slot_rank.shape
    assert nb == num_key_blocks(nk, b)
    flat = layout.slot_rank.flatten()
    assert torch.equal(flat[layout.rank_slot], torch.arange(nq))
    assert (flat >= 0).sum() == nq
    assert torch.equal(layout.rank_slot // width, layout.rank_block)


@pytest.mark.parametrize("nq,nk,b", [(100, 100, 8), (37, 100, 8), (100, 37, 8), (1, 5, 2), (7, 3, 16),
                                     (4096, 6000, 256)])
def test_block_ranges_and_their_largest_size_follow_the_rank_rule(nq, nk, b):
    from hyperattn.plan.blocks import max_queries_per_block, query_block_range

    blocks = query_block_of_rank(nq, nk, b)
    sizes = []
    for block in range(num_key_blocks(nk, b)):
        lo, hi = query_block_range(block, nq, nk, b)
        assert torch.equal(torch.nonzero(blocks == block).flatten(), torch.arange(lo, max(lo, hi)))
        sizes.append(max(0, hi - lo))
    assert max(sizes) <= max_queries_per_block(nq, nk, b)


def test_bucket_rule_takes_the_block_at_the_middle_of_the_querys_bucket_among_live_keys():
    from hyperattn.plan.blocks import bucket_query_blocks

    k_sorted = torch.tensor([[[0, 0, 2, 2, 2, 2, 5, 9, 255, 255]]], dtype=torch.uint8)  # 2 sinks sorted last
    q_sorted = torch.tensor([[[0, 1, 2, 5, 7, 9, 12]]], dtype=torch.uint8)
    blocks = bucket_query_blocks(q_sorted, k_sorted, torch.tensor([[[8]]]), block_size=2)
    # middles: bucket 0 -> 1; 1 (no key) -> 2; 2 -> 4; 5 -> 6; 7 (no key) -> 7; 9 -> 7; 12 (past every live key) -> 7
    assert blocks.tolist() == [[[0, 1, 2, 3, 3, 3, 3]]]
    assert torch.all(blocks[..., 1:] >= blocks[..., :-1])


def test_layout_of_blocks_that_differ_per_head():
    rank_block = torch.tensor([[[0, 0, 0, 2], [1, 1, 2, 2]]])  # (Z=1, H=2, Nq=4)
    layout = query_block_layout(rank_block, 3)
    assert layout.slot_rank.shape == (1, 2, 3, 3)  # the fullest block has 3 queries
    for h in range(2):
        flat = layout.slot_rank[0, h].flatten()
        assert torch.equal(flat[layout.rank_slot[0, h]], torch.arange(4))
        assert torch.equal(layout.rank_slot[0, h] // 3, rank_block[0, h])
