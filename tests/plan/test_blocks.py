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
    from hyperattn.plan import max_queries_per_block

    layout = query_block_layout(query_block_of_rank(nq, nk, b), num_key_blocks(nk, b), max_queries_per_block(nq, nk, b))
    tiles, width = layout.slot_rank.shape
    assert tiles <= num_key_blocks(nk, b)  # one tile per block under the rank rule
    flat = layout.slot_rank.flatten()
    assert torch.equal(flat[layout.rank_slot], torch.arange(nq))
    assert (flat >= 0).sum() == nq
    assert torch.equal(layout.tile_block[layout.rank_slot // width], layout.rank_block)


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
    # middles: bucket 0 -> 1; 1 (no key) -> 2; 2 -> 4; 5 -> 6; 7 (no key) -> 7; 9 -> 7; 12 (past every live key) -> 7
    blocks = bucket_query_blocks(q_sorted, k_sorted, torch.tensor([[[8]]]), block_size=2, num_buckets=16)
    assert blocks.tolist() == [[[0, 1, 2, 3, 3, 3, 3]]]
    assert torch.all(blocks[..., 1:] >= blocks[..., :-1])


@pytest.mark.parametrize("num_projs", [3, 7, 9])
def test_bucket_rule_lookup_table_matches_the_search_per_query(num_projs):
    from hyperattn.plan.blocks import bucket_query_blocks
    from hyperattn.plan.lsh import bucket_dtype

    g = torch.Generator().manual_seed(num_projs)
    z, hkv, group, nq, nk, buckets = 3, 2, 2, 300, 200, 2 ** num_projs
    dtype = bucket_dtype(num_projs)
    k_sorted = torch.randint(0, buckets, (z, hkv, nk), generator=g).sort(-1).values.to(dtype)
    k_sorted[..., -3:] = torch.iinfo(dtype).max  # sinks
    q_sorted = torch.randint(0, buckets, (z, hkv * group, nq), generator=g).sort(-1).values.to(dtype)
    num_live = torch.tensor([nk - 3, nk - 3, 100]).view(z, 1, 1)
    table = bucket_query_blocks(q_sorted, k_sorted, num_live, 4, num_buckets=buckets)
    assert buckets < group * nq  # the lookup table above; a search per query below
    search = bucket_query_blocks(q_sorted, k_sorted, num_live, 4, num_buckets=group * nq)
    assert torch.equal(table, search)
    assert table.dtype == torch.int64 and table.shape == (z, hkv * group, nq)


def test_layout_of_blocks_that_differ_per_head():
    rank_block = torch.tensor([[[0, 0, 0, 2, 2], [1, 1, 1, 1, 1]]])  # (Z=1, H=2, Nq=5)
    layout = query_block_layout(rank_block, 3, tile_rows=2)
    assert layout.slot_rank.shape == (1, 2, 3, 2)  # head 1: its 5 queries of block 1 in 3 tiles of 2
    assert layout.tile_block.tolist() == [[[0, 0, 2], [1, 1, 1]]]
    assert layout.slot_rank.tolist() == [[[[0, 1], [2, -1], [3, 4]], [[0, 1], [2, 3], [4, -1]]]]
    for h in range(2):
        flat = layout.slot_rank[0, h].flatten()
        assert torch.equal(flat[layout.rank_slot[0, h]], torch.arange(5))
        assert torch.equal(layout.tile_block[0, h][layout.rank_slot[0, h] // 2], rank_block[0, h])


def test_layout_rejects_empty_tiles():
    with pytest.raises(ValueError, match="tile_rows"):
        query_block_layout(torch.zeros(4, dtype=torch.int64), 1, 0)


def test_centroid_rule_takes_the_live_block_whose_mean_key_scores_highest():
    from hyperattn.plan.blocks import centroid_query_blocks

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 30, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 45, 8, generator=gen, dtype=torch.float64)
    num_live = torch.tensor([45, 29]).view(2, 1, 1)  # problem 1: keys 29.. are heavy keys or sinks
    q_perm, q_block = centroid_query_blocks(q, k, num_live, 4)
    for z in range(2):
        live = int(num_live[z])
        means = torch.stack([k[z, :, lo:min(lo + 4, live)].mean(1) for lo in range(0, live, 4)], 1)  # (Hkv, b, D)
        for h in range(4):
            want = (q[z, h] @ means[h // 2].T).argmax(-1)  # (Nq,), original order
            assert torch.equal(q_block[z, h], want[q_perm[z, h]])
            assert torch.equal(q_perm[z, h], torch.sort(want, stable=True).indices)  # ties keep query order
    assert q_block.max() <= (29 - 1) // 4 or q_block[0].max() > 7
    assert torch.all(q_block[..., 1:] >= q_block[..., :-1])
