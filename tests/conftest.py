import pytest
import torch


def random_qkv(batch=1, hq=2, hkv=1, nq=64, nk=None, d=8, dv=None, dtype=torch.float64, seed=0, requires_grad=False):
    """Fresh Gaussian q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)."""
    nk = nq if nk is None else nk
    dv = d if dv is None else dv
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, nq, d, generator=gen, dtype=dtype)
    k = torch.randn(batch, hkv, nk, d, generator=gen, dtype=dtype)
    v = torch.randn(batch, hkv, nk, dv, generator=gen, dtype=dtype)
    return tuple(x.requires_grad_(requires_grad) for x in (q, k, v))


def clustered_qkv(num_clusters=32, per_cluster=32, d=16, hq=1, spread=0.1, norm=4.0, seed=0, dtype=torch.float64):
    """Queries and keys drawn around shared cluster centres, shuffled: A has large entries
    inside clusters. Returns q, k, v of shape (1, H, C * P, D)."""
    gen = torch.Generator().manual_seed(seed)
    n = num_clusters * per_cluster
    centres = torch.nn.functional.normalize(torch.randn(num_clusters, d, generator=gen, dtype=dtype), dim=-1) * norm
    labels = torch.randperm(n, generator=gen) % num_clusters

    def around(heads):
        return centres[labels] + spread * norm * torch.randn(heads, n, d, generator=gen, dtype=dtype)

    q, k = around(hq).unsqueeze(0), around(1).unsqueeze(0)
    v = torch.randn(1, 1, n, d, generator=gen, dtype=dtype)
    return q, k, v


@pytest.fixture
def qkv_factory():
    return random_qkv
