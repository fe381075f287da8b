import pytest
import torch

from hyperattn.plan import (gray_code_rank, inverse_permutation, lsh_buckets, lsh_directions, ranks_in_sort, sort_lsh,
                            sort_lsh_permutation)
from hyperattn.plan.lsh import bucket_dtype


def gray(i):
    return i ^ (i >> 1)


def test_gray_code_rank_inverts_gray_code():
    for bits in (1, 3, 7, 16):
        positions = torch.arange(1 << bits)
        codes = positions ^ (positions >> 1)
        assert torch.equal(gray_code_rank(codes, bits), positions)


def test_neighbouring_buckets_differ_in_one_hyperplane():
    bits = 7
    positions = torch.arange((1 << bits) - 1)
    flipped = gray(positions) ^ gray(positions + 1)
    assert torch.all(flipped & (flipped - 1) == 0)  # exactly one bit set


def test_buckets_match_sign_bits():
    gen = torch.Generator().manual_seed(0)
    dirs = lsh_directions(2, 8, 5, gen)
    x = torch.randn(3, 4, 50, 8, generator=gen)
    buckets = lsh_buckets(x, dirs)
    assert buckets.shape == (3, 4, 50) and buckets.dtype == torch.uint8  # bucket_dtype(5)
    for h in range(4):
        bits = (x[:, h] @ dirs[h // 2] > 0).long()
        codes = (bits * (2 ** torch.arange(5))).sum(-1)
        assert torch.equal(buckets[:, h], gray_code_rank(codes, 5))


def test_buckets_are_scale_invariant_and_directions_seeded():
    dirs = lsh_directions(1, 16, 7, torch.Generator().manual_seed(3))
    assert torch.equal(dirs, lsh_directions(1, 16, 7, torch.Generator().manual_seed(3)))
    x = torch.randn(1, 1, 100, 16)
    assert torch.equal(lsh_buckets(x, dirs), lsh_buckets(3.5 * x, dirs))


def test_sort_is_stable_and_inverse_permutation():
    buckets = torch.tensor([[3, 1, 3, 0, 1, 3]])
    perm = sort_lsh_permutation(buckets)
    assert perm.tolist() == [[3, 1, 4, 0, 2, 5]]
    inv = inverse_permutation(perm)
    assert torch.equal(perm.gather(-1, inv), torch.arange(6).unsqueeze(0))


@pytest.mark.parametrize("dtype,high", [(torch.uint8, 256), (torch.int16, 2**15), (torch.int32, 2**31 - 1)])
def test_ranks_in_sort_are_those_of_the_inverse_permutation(dtype, high):
    gen = torch.Generator().manual_seed(0)
    for num_buckets in (3, high):  # many ties, and (almost) none
        buckets = torch.randint(0, num_buckets, (2, 3, 257), generator=gen).to(dtype)
        buckets[0, 0, :5] = torch.iinfo(dtype).max  # sinks' sort key
        rows = torch.randint(0, 257, (2, 3, 40), generator=gen)
        sorted_buckets, perm = sort_lsh(buckets)
        assert torch.equal(perm, sort_lsh_permutation(buckets))
        expected = inverse_permutation(perm).gather(-1, rows)
        assert torch.equal(ranks_in_sort(buckets, sorted_buckets, perm, rows), expected)


def test_bucket_dtype_keeps_its_largest_value_free():
    """The narrowest dtype whose largest value no bucket takes (the sinks' sort key)."""
    for r in range(1, 17):
        dtype = bucket_dtype(r)
        assert torch.iinfo(dtype).max > 2 ** r - 1
        narrower = {torch.int16: torch.uint8, torch.int32: torch.int16}.get(dtype)
        assert narrower is None or torch.iinfo(narrower).max <= 2 ** r - 1
