"""The hashing kernel against the plan's lsh_buckets."""

import pytest
import torch

pytest.importorskip("triton")

from tests.executors.triton.test_executor import DEVICE, DTYPE  # noqa: E402


@pytest.mark.parametrize("d,projs", [(64, 7), (128, 16), (24, 3)])
def test_hashing_kernel_matches_lsh_buckets(d, projs):
    from hyperattn.executors.triton.hashing import lsh_buckets_triton
    from hyperattn.plan import lsh_buckets, lsh_directions

    gen = torch.Generator().manual_seed(d)
    x = torch.randn(2, 4, 300, d, generator=gen).to(DTYPE)
    dirs = lsh_directions(2, d, projs, gen)
    want = lsh_buckets(x.float(), dirs)
    got = lsh_buckets_triton(x.to(DEVICE), dirs.to(DEVICE)).cpu()
    assert got.dtype == want.dtype  # bucket_dtype(projs)
    # only rows with a projection within fp16 rounding of a hyperplane may differ
    assert (got != want).float().mean() < 0.02
