"""Shared kernel pieces against the plan's arithmetic."""

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from hyperattn.executors.triton.common import query_rank_blocks  # noqa: E402
from tests.executors.triton.test_executor import DEVICE  # noqa: E402


@triton.jit
def query_rank_blocks_kernel(Ranks, Blocks, count, block_size, n_q, n_k, WIDTH: tl.constexpr):
    offs = tl.program_id(0) * WIDTH + tl.arange(0, WIDTH)
    mask = offs < count
    ranks = tl.load(Ranks + offs, mask=mask, other=0)
    tl.store(Blocks + offs, query_rank_blocks(ranks, block_size, n_q, n_k), mask=mask)


@pytest.mark.parametrize("n_q,n_k,block_size,rank", [
    (96, 96, 16, None), (150, 40, 16, None), (37, 83, 7, None), (2**21, 2**21, 256, None),
    (2**21 + 3, 2**20 - 7, 1, None), (3 * 2**22, 2**23 + 1, 3, None),
    (10**6, 7 * 10**5, 1, 90),  # the fp64 estimate is one too small here
    (397140465, 1512116527, 1, 200521823),  # and one too large here
])
def test_query_rank_blocks_is_exact(n_q, n_k, block_size, rank):
    """The block of each sorted query rank, at every rank of short problems and, of long ones, at
    random ranks and on both sides of block boundaries, and where the fp64 estimate is off."""
    if n_q < 1000:
        ranks = torch.arange(n_q)
    else:
        gen = torch.Generator().manual_seed(n_q)
        blocks = torch.randint(1, n_k // block_size, (300,), generator=gen)
        first = (blocks * block_size * n_q + n_k - 1) // n_k  # query_block_range's lower end
        ranks = torch.cat([torch.randint(0, n_q, (300,), generator=gen), first - 1, first, first + 1,
                           torch.tensor([n_q - 1, rank or 0])])
    want = ranks * n_k // n_q // block_size
    got = torch.full_like(ranks, -1)
    ranks, got = ranks.to(torch.int32).to(DEVICE), got.to(DEVICE)
    query_rank_blocks_kernel[(triton.cdiv(len(ranks), 256),)](ranks, got, len(ranks), block_size, n_q, n_k, WIDTH=256)
    assert torch.equal(got.cpu(), want)
