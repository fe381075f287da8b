import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before
# any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# pytest-xdist runs one worker per core: more intra-op threads than cores make small ops crawl.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def random_qkv(batch=1, hq=2, hkv=1, nq=64, nk=None, d=8, dv=None, dtype=torch.float64, seed=0, requires_grad=False):
    """Fresh Gaussian q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)."""
    nk = nq if nk is None else nk
    dv = d if dv is None else dv
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, nq, d, generator=gen, dtype=dtype)
    k = torch.randn(batch, hkv, nk, d, generator=gen, dtype=dtype)
    v = torch.randn(batch, hkv, nk, dv, generator=gen, dtype=dtype)
    return tuple(x.requires_grad_(requires_grad) for x in (q, k, v))


@pytest.fixture
def qkv_factory():
    return random_qkv
