import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hyperattn import HyperAttentionConfig, exact_attention, hyper_attention
from hyperattn.distributed import context_parallel_attention, context_parallel_exact_attention
from tests.conftest import random_qkv

CONFIGS = {
    "uniform": HyperAttentionConfig(block_size=4, sample_size=4, exact_up_to=0, min_seq_len=8, exact_tail=4),
    "heavy mass": HyperAttentionConfig(block_size=4, sample_size=4, exact_up_to=0, min_seq_len=8, exact_tail=4,
                                       sampling="mass", heavy_keys=4, probe_queries=4, exact_sinks=2),
    "selected": HyperAttentionConfig(block_size=4, sample_size=0, exact_up_to=0, min_seq_len=8, exact_tail=4,
                                     selected_blocks=2, selected_block_size=4, heavy_keys=2, probe_queries=4,
                                     exact_sinks=0, selection_tile=16),
}


def _shard(x, rank, ranks):
    n = x.shape[2] // ranks
    return x[:, :, rank * n:(rank + 1) * n]


def _worker(rank, ranks, init_method, cases):
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=ranks)
    try:
        for name, causal, hq, hkv, nq, nk in cases:
            config = CONFIGS.get(name)
            q, k, v = random_qkv(batch=2, hq=hq, hkv=hkv, nq=nq, nk=nk, requires_grad=True)
            shards = [_shard(x.detach(), rank, ranks).requires_grad_() for x in (q, k, v)]
            if name == "exact":
                out, lse = exact_attention(q, k, v, causal=causal, return_lse=True)
                part, part_lse = context_parallel_exact_attention(*shards, causal=causal, return_lse=True)
            else:
                out, lse = hyper_attention(q, k, v, causal=causal, config=config, seed=7, return_lse=True)
                part, part_lse = context_parallel_attention(*shards, causal=causal, config=config, seed=7,
                                                            return_lse=True)
            weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
            (out * weight).sum().backward()
            (part * _shard(weight, rank, ranks)).sum().backward()
            what = f"rank {rank} of {ranks}, {name}, causal={causal}"
            torch.testing.assert_close(part, _shard(out, rank, ranks), rtol=1e-12, atol=1e-12, msg=what)
            torch.testing.assert_close(part_lse, _shard(lse[..., None], rank, ranks)[..., 0], rtol=1e-12,
                                       atol=1e-12, msg=what)
            for full, piece in zip((q, k, v), shards):  # gradients of this rank's positions
                torch.testing.assert_close(piece.grad, _shard(full.grad, rank, ranks), rtol=1e-10, atol=1e-10,
                                           msg=what)
        q, k, v = random_qkv(batch=1, hq=8, hkv=4, nq=64)
        torch.manual_seed(rank)  # ranks draw different seeds; rank 0's is used
        a = context_parallel_attention(*(_shard(x, rank, ranks) for x in (q, k, v)), config=CONFIGS["uniform"])
        gathered = [torch.empty_like(a) for _ in range(ranks)]
        dist.all_gather(gathered, a)
        torch.manual_seed(0)
        seed = int(torch.randint(0, 1 << 62, (1,)))
        whole = hyper_attention(q, k, v, config=CONFIGS["uniform"], seed=seed)
        torch.testing.assert_close(torch.cat(gathered, 2), whole, rtol=1e-12, atol=1e-12)
        if ranks > 1:
            q, k, v = random_qkv(batch=1, hq=8, hkv=4, nq=32 + 8 * rank)
            with pytest.raises(ValueError, match="one shard shape on every rank"):
                context_parallel_attention(q, k, v)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ranks", [2, 4])
def test_shards_equal_the_whole_call_forward_and_backward(ranks):
    cases = [(name, causal, 8, 4, 96, 96) for name in [*CONFIGS, "exact"] for causal in (False, True)]
    cases += [("uniform", True, 8, 4, 64, 96), ("heavy mass", False, 4, 4, 64, 40)]
    mp.spawn(_worker, args=(ranks, f"tcp://127.0.0.1:{_free_port()}", cases), nprocs=ranks)


def test_needs_an_initialized_process_group():
    q, k, v = random_qkv(nq=16)
    with pytest.raises(ValueError, match="init_process_group"):
        context_parallel_attention(q, k, v)
    with pytest.raises(ValueError, match="init_process_group"):
        context_parallel_exact_attention(q, k, v)


def _heads_worker(rank, ranks, init_method):
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=ranks)
    try:
        q, k, v = random_qkv(hq=3, hkv=3, nq=16)
        with pytest.raises(ValueError, match="multiple of 2"):
            context_parallel_attention(q, k, v)
    finally:
        dist.destroy_process_group()


def test_kv_heads_must_split_over_the_ranks():
    mp.spawn(_heads_worker, args=(2, f"tcp://127.0.0.1:{_free_port()}"), nprocs=2)
