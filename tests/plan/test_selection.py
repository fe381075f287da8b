import pytest
import torch

from hyperattn import HyperAttentionConfig
from hyperattn.plan import (block_centroids, make_plan, plan_hyper_attention, select_coarse_to_fine, select_key_blocks,
                            shared_selection)
from tests.conftest import random_qkv


def brute_force_selection(q, k, live, block_size, count):
    """Each query's top blocks by its score against the mean of the block's live keys, by loops (float64)."""
    z_count, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    blocks = [range(start, min(nk, start + block_size)) for start in range(0, nk, block_size)]
    want = torch.empty(z_count, hq, nq, min(count, len(blocks)), dtype=torch.int64)
    for z in range(z_count):
        for h in range(hq):
            g = h // (hq // hkv)
            scores = []
            for keys in blocks:
                alive = [j for j in keys if live is None or live[z, g, j]]
                mean = k[z, g, alive].double().mean(0) if alive else None
                scores.append(None if mean is None else q[z, h].double() @ mean)
            table = torch.stack([torch.full((nq,), -torch.inf, dtype=torch.float64) if s is None else s
                                 for s in scores], -1)
            want[z, h] = table.topk(want.shape[-1], -1).indices.sort(-1).values
    return want


@pytest.mark.parametrize("nk,block_size,count", [(40, 8, 3), (53, 4, 5), (11, 2, 9), (7, 16, 2)])
def test_selection_is_the_top_blocks_by_centroid_score(nk, block_size, count, monkeypatch):
    monkeypatch.setattr("hyperattn.plan.selection.SELECTION_CHUNK_ELEMENTS", 50)  # several query chunks
    q, k, _ = random_qkv(batch=2, hq=4, hkv=2, nq=13, nk=nk, d=8, seed=1)
    live = torch.rand(2, 2, nk, generator=torch.Generator().manual_seed(2)) > 0.3
    for mask in (None, live):
        got = select_key_blocks(q, k, mask, block_size, count)
        torch.testing.assert_close(got, brute_force_selection(q, k, mask, block_size, count), rtol=0, atol=0)


def test_blocks_without_live_keys_are_chosen_last():
    q, k, _ = random_qkv(hq=1, nq=20, nk=32, d=4, seed=3)
    live = torch.ones(1, 1, 32, dtype=torch.bool)
    live[..., 8:16] = False  # block 1 dead
    selected = select_key_blocks(q, k, live, 8, 3)
    assert not (selected == 1).any()
    centroids, has_live = block_centroids(k, live, 8)
    assert has_live.tolist() == [[[True, False, True, True]]]
    torch.testing.assert_close(centroids[0, 0, 3], k[0, 0, 24:].mean(0), rtol=1e-12, atol=1e-12)


def test_sinks_and_heavy_keys_take_no_part_in_the_centroids():
    """make_plan scores the blocks by the mean of the keys the selected part attends to."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=24, nk=40, d=4, seed=4)
    cfg = HyperAttentionConfig(selected_blocks=2, selected_block_size=4, heavy_keys=5, sampling="mass", sample_size=3)
    mass = torch.rand(1, 1, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    zeros = torch.zeros(1, 1, 24, dtype=torch.int64), torch.zeros(1, 1, 40, dtype=torch.int64)
    plan = make_plan(*zeros, cfg, torch.Generator().manual_seed(0), sinks=3, key_mass=mass, rows=(q, k))
    live = torch.ones(1, 1, 40, dtype=torch.bool)
    live[..., :3] = False
    live[..., plan.sample_idx[0, 0, :plan.heavy]] = False
    torch.testing.assert_close(plan.selected, brute_force_selection(q, k, live, 4, 2), rtol=0, atol=0)
    assert plan.selected_block_size == 4
    # nothing is sorted (the old order would have put the sinks and heavy keys last)
    assert (plan.k_perm == torch.arange(40)).all() and (plan.q_perm == torch.arange(24)).all()


def test_causal_plans_select_within_each_rectangle():
    """Every approximated rectangle's plan selects among its own key blocks, for each of its queries."""
    q, k, v = random_qkv(hq=2, hkv=1, nq=96, nk=110, d=4, seed=6)
    cfg = HyperAttentionConfig(selected_blocks=3, selected_block_size=4, min_seq_len=8, block_size=8, sample_size=2,
                               exact_sinks=0, exact_up_to=0)
    plan = plan_hyper_attention(q, k, v, True, cfg, torch.Generator().manual_seed(0))
    for level, level_plan in enumerate(plan.level_plans, start=1):
        rects = plan.schedule.level(level)
        want = brute_force_selection(*rects.take(q, k), None, 4, 3)
        torch.testing.assert_close(level_plan.selected, want, rtol=0, atol=0)
    prefix = plan.schedule.prefix()
    torch.testing.assert_close(plan.prefix_plan.selected, brute_force_selection(*prefix.take(q, k), None, 4, 3),
                               rtol=0, atol=0)


@pytest.mark.parametrize("nk,block_size,coarse_size,count", [(200, 4, 16, 3), (203, 2, 8, 4), (97, 3, 12, 2)])
def test_coarse_to_fine_selection_is_the_top_blocks_inside_the_coarse_picks(nk, block_size, coarse_size, count):
    """Stage two picks each query's best blocks (brute force, float64) among the blocks inside its
    2 * count coarse blocks (stage one: the top coarse blocks), dead blocks last."""
    q, k, _ = random_qkv(batch=2, hq=4, hkv=2, nq=9, nk=nk, d=8, seed=nk)
    live = torch.rand(2, 2, nk, generator=torch.Generator().manual_seed(1)) > 0.3
    live[..., :3 * block_size] = False  # dead blocks inside the first coarse block
    got = select_coarse_to_fine(q, k, live, block_size, count, coarse_size)
    coarse = brute_force_selection(q, k, live, coarse_size, 2 * count)
    num_blocks = -(-nk // block_size)
    centroids, has_live = block_centroids(k, live, block_size)
    table = torch.einsum("zhqd,zhbd->zhqb", q.double(), centroids.double().repeat_interleave(2, 1))
    table = table.masked_fill(~has_live.repeat_interleave(2, 1)[:, :, None], torch.finfo(torch.float64).min)
    ratio = coarse_size // block_size
    inside = (torch.arange(num_blocks) // ratio == coarse[..., None]).any(-2)
    want = table.masked_fill(~inside, -torch.inf).topk(count, -1).indices.sort(-1).values
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got, select_key_blocks(q, k, live, block_size, count)), "the coarse stage changed picks"


def test_coarse_to_fine_selection_covering_every_key_is_the_exact_selection():
    q, k, _ = random_qkv(hq=2, hkv=1, nq=12, nk=60, d=8, seed=2)
    exact = select_key_blocks(q, k, None, 4, 3)
    torch.testing.assert_close(select_coarse_to_fine(q, k, None, 4, 3, 12), exact, rtol=0, atol=0)


@pytest.mark.parametrize("nq,tile", [(40, 16), (32, 8), (5, 16)])
def test_shared_selection_adds_the_earlier_rows_of_each_tile(nq, tile):
    """Row i of a tile: the distinct blocks of rows tile_start..i, ascending, then the padding block."""
    selected = torch.randint(0, 9, (2, 3, nq, 2), generator=torch.Generator().manual_seed(nq)).sort(-1).values
    got = shared_selection(selected, tile, 9)
    assert got.shape[:3] == (2, 3, nq) and got.shape[3] <= 2 * tile
    assert (got < 9).any(-1).sum() > 0 and ((got < 9).sum(-1) == got.shape[3]).any(), "trimmed to the longest row"
    for i in range(nq):
        want = selected[:, :, i - i % tile:i + 1].flatten(-2)
        for z in range(2):
            for h in range(3):
                blocks = want[z, h].unique()
                row = got[z, h, i]
                assert torch.equal(row[:blocks.numel()], blocks) and (row[blocks.numel():] == 9).all()
