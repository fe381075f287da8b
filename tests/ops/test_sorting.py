"""The counting-sort kernel against torch's stable sort (Triton's interpreter on CPU)."""

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.ops.triton.sorting import counting_sort_permutation  # noqa: E402
from hyperattn.plan import inverse_permutation  # noqa: E402

from tests.ops.test_triton import DEVICE  # noqa: E402


@pytest.mark.parametrize("num_bits, shape", [(7, (2, 3, 300)), (1, (1, 1, 1000)), (8, (2, 77)), (3, (5,)),
                                             (4, (2, 2, 0))])
def test_counting_sort_is_torch_stable_sort(num_bits, shape):
    gen = torch.Generator().manual_seed(num_bits)
    buckets = torch.randint(1 << num_bits, shape, generator=gen, dtype=torch.int32).to(DEVICE)
    perm, rank = counting_sort_permutation(buckets, num_bits)
    want = torch.sort(buckets, dim=-1, stable=True).indices
    assert perm.dtype == rank.dtype == torch.int64 and perm.shape == shape
    assert torch.equal(perm, want)
    assert torch.equal(rank, inverse_permutation(want))


def test_counting_sort_skewed_buckets():
    """Most rows in one bucket (many chunks of one bucket) and empty buckets between."""
    buckets = torch.full((1, 2, 700), 5, dtype=torch.int32)
    buckets[0, 0, ::7] = 0
    buckets[0, 1, 100:130] = 127
    buckets = buckets.to(DEVICE)
    perm, _ = counting_sort_permutation(buckets, 7)
    assert torch.equal(perm, torch.sort(buckets, dim=-1, stable=True).indices)


def test_counting_sort_rejects_wide_codes():
    with pytest.raises(ValueError, match="num_bits"):
        counting_sort_permutation(torch.zeros(4, dtype=torch.int32), 9)
