"""The probe-mass kernels against the plan's probe_key_mass."""

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.plan import Rows, probe_key_mass  # noqa: E402
from tests.executors.triton.test_executor import DEVICE, DTYPE  # noqa: E402

CASES = {
    # name: (batch, Hq, Hkv, count, keys, probes, D, causal, sinks, chunk_keys, norm_keys)
    "causal-rects-gqa": (2, 4, 2, 3, Rows(start=5, stride=40, length=37), 20, 24, True, 8, 32, 0),
    "causal-one-rect": (1, 2, 2, 1, Rows(start=0, stride=0, length=70), 7, 16, True, 0, 16, 0),
    "noncausal-mqa": (2, 3, 1, 1, Rows(start=0, stride=0, length=83), 18, 32, False, 4, 1024, 0),
    # normalized over the last keys: fewer than a chunk, and over two chunks from an unaligned first key
    "causal-norm-short": (2, 4, 2, 3, Rows(start=5, stride=40, length=37), 20, 24, True, 8, 32, 9),
    "causal-norm-chunks": (1, 2, 2, 1, Rows(start=0, stride=0, length=70), 7, 16, True, 0, 16, 29),
}


@pytest.mark.parametrize("name", list(CASES))
def test_probe_mass_kernels_match_probe_key_mass(name, monkeypatch):
    from hyperattn.executors.triton.probes import probe_key_mass_triton

    batch, hq, hkv, count, keys, num_probes, d, causal, sinks, chunk_keys, norm_keys = CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    k = torch.randn(batch, hkv, keys.end(count) + 3, d, generator=gen).to(DTYPE)
    probes = torch.randn(batch * count, hq, num_probes, d, generator=gen).to(DTYPE)
    probe_pos = None
    if causal:  # each probe sees a random prefix of its rectangle's keys; probe 0 of each sees none
        starts = torch.tensor([keys.start + r * keys.stride for r in range(count)])
        probe_pos = starts[:, None] + torch.randint(-1, keys.length + 4, (count, num_probes), generator=gen)
        probe_pos[:, 0] = starts - 1
    scale = d ** -0.5
    want = probe_key_mass(probes.double(), k.double(), keys, count, scale, probe_pos, sinks, norm_keys)
    # poison: every element of the result must be written
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan")))
    positions = None if probe_pos is None else probe_pos.to(DEVICE)
    got = probe_key_mass_triton(probes.to(DEVICE), k.to(DEVICE), keys, count, scale, positions, sinks, norm_keys,
                                chunk_keys=chunk_keys)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-3, atol=2e-5)
    assert want.sum() > 0  # the case is not vacuous


COMPILE_FOR_HOPPER = """
import inspect, triton
from triton.backends.compiler import GPUTarget
from hyperattn.executors.triton import probes
for kernel in (probes.probe_lse_kernel, probes.probe_mass_kernel):
    for causal in (True, False):
        params = list(inspect.signature(kernel.fn).parameters)
        constexprs = dict(CAUSAL=causal, HEAD_DIM=64, D_PAD=64, BLOCK_P=64, BLOCK_N=64)
        pointers = dict(Probes="*bf16", K="*bf16", ProbePos="*i64", PartMax="*fp32", PartSum="*fp32",
                        Lse2="*fp32", Mass="*fp32")
        signature = {name: "constexpr" if name in constexprs else pointers.get(name, "fp32" if name == "scale_log2"
                     else "i32") for name in params}
        source = triton.compiler.ASTSource(kernel, signature,
                                           constexprs={(params.index(k),): v for k, v in constexprs.items()})
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))
"""


def test_probe_kernels_compile_for_hopper():
    """The interpreter runs what the compiler may refuse (a None that a branch leaves): compile
    both variants for sm_90a, without a GPU, in a process without TRITON_INTERPRET."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
