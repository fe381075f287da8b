"""Probe key masses in two kernels: each probe's log-sum-exp over the keys it sees, then each
key's mass summed over the probes and the query heads of its kv head.

Computes what ``hyperattn.plan.sampling.probe_key_mass`` computes without materializing the
(probes x keys) scores: the keys are read where they lie in k (rows ``keys.start + r *
keys.stride + j`` of problem r), twice (with ``norm_keys``, the first pass reads only the last
``norm_keys`` of them). The first kernel splits each problem's keys into chunks
of ``chunk_keys`` and writes each probe's running max and sum per chunk (log2 domain); the
chunks' results are merged in PyTorch (a few numbers per probe); the second kernel sums
``exp2(score - lse)`` over the probes for one tile of keys per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hyperattn.executors.triton import on_device
from hyperattn.executors.triton.common import LOG2E, load_rows
from hyperattn.executors.triton.tiles import tile_width
from hyperattn.plan.sampling import PROBE_MAX_LOG2_WEIGHT
from hyperattn.plan.schedule import Rows


@triton.jit
def _probe_scores(probes, k_base, k_rows, kmask, probe_pos, pmask, offs_d, d_mask, stride_kn, sinks, scale_log2,
                  CAUSAL: tl.constexpr):
    """(BP, BN) log2 scores of the probes against the key rows ``k_rows``, -inf where the probe
    does not see the key (a padded probe or key, a sink, or with CAUSAL a key after the probe)."""
    k = load_rows(k_base, k_rows, stride_kn, offs_d, kmask, d_mask)
    visible = pmask[:, None] & (kmask & (k_rows >= sinks))[None, :]
    if CAUSAL:
        visible = visible & (k_rows[None, :] <= probe_pos[:, None])
    return tl.where(visible, tl.dot(probes, tl.trans(k)) * scale_log2, float("-inf"))


@triton.jit
def _load_probes(Probes, ProbePos, z, h, r, offs_p, pmask, stride_pz, stride_ph, stride_pp, offs_d, d_mask, n_probes,
                 CAUSAL: tl.constexpr):
    """The probe rows ``offs_p`` of (problem z, head h) (BP, D) and, with CAUSAL, their positions
    (int64 (BP,))."""
    base = Probes + z.to(tl.int64) * stride_pz + h.to(tl.int64) * stride_ph
    probes = load_rows(base, offs_p.to(tl.int64), stride_pp, offs_d, pmask, d_mask)
    if CAUSAL:
        probe_pos = tl.load(ProbePos + r.to(tl.int64) * n_probes + offs_p, mask=pmask, other=-1)
    else:  # unread: every probe sees every key
        probe_pos = offs_p.to(tl.int64)
    return probes, probe_pos


@triton.jit
def _problem_keys(K, z, hk, count, stride_kb, stride_kh, k_start, k_stride, HEAD_DIM: tl.constexpr,
                  D_PAD: tl.constexpr):
    """Where problem z's keys of kv head hk lie: (rectangle r, base pointer, first key row, the
    column offsets and their mask)."""
    r = z % count
    k_base = K + (z // count).to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    offs_d = tl.arange(0, D_PAD)
    return r, k_base, k_start + r.to(tl.int64) * k_stride, offs_d, offs_d < HEAD_DIM


@triton.jit
def probe_lse_kernel(
    Probes, K, ProbePos, PartMax, PartSum,
    scale_log2,
    stride_pz, stride_ph, stride_pp,
    stride_kb, stride_kh, stride_kn,
    n_probes, n_k, count, k_start, k_stride, sinks, num_heads, group, probe_tiles, first_key, chunk_keys, num_chunks,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: one tile of probes of one (problem, query head) over one chunk of its keys from
    ``first_key`` on; writes each probe's max and sum of exp2(score - max) there (PartMax, PartSum:
    (Z * H, num_chunks, n_probes) fp32; max -inf and sum 0 where it sees no key of the chunk)."""
    pid = tl.program_id(0)
    chunk = pid % num_chunks
    rest = pid // num_chunks
    p_tile = rest % probe_tiles
    zh = rest // probe_tiles
    z = zh // num_heads
    h = zh % num_heads
    r, k_base, row0, offs_d, d_mask = _problem_keys(K, z, h // group, count, stride_kb, stride_kh, k_start, k_stride,
                                                    HEAD_DIM, D_PAD)
    offs_p = p_tile * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < n_probes
    probes, probe_pos = _load_probes(Probes, ProbePos, z, h, r, offs_p, pmask, stride_pz, stride_ph, stride_pp,
                                     offs_d, d_mask, n_probes, CAUSAL)
    m_i = tl.full([BLOCK_P], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_P], tl.float32)
    lo = first_key + chunk * chunk_keys
    for start in range(lo, tl.minimum(lo + chunk_keys, n_k), BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kmask = offs_n < n_k
        s = _probe_scores(probes, k_base, row0 + offs_n, kmask, probe_pos, pmask, offs_d, d_mask, stride_kn, sinks,
                          scale_log2, CAUSAL)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    out = (zh.to(tl.int64) * num_chunks + chunk) * n_probes + offs_p
    tl.store(PartMax + out, m_i, mask=pmask)
    tl.store(PartSum + out, l_i, mask=pmask)


@triton.jit
def probe_mass_kernel(
    Probes, K, ProbePos, Lse2, Mass,
    scale_log2,
    stride_pz, stride_ph, stride_pp,
    stride_kb, stride_kh, stride_kn,
    n_probes, n_k, count, k_start, k_stride, sinks, num_kv_heads, group, key_tiles, max_log2_weight,
    CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: one tile of keys of one (problem, kv head); Mass (Z, Hkv, n_k) fp32 gets, per
    key, the sum over the group's query heads and their probes of exp2(min(score - lse2,
    max_log2_weight)) (Lse2:
    (Z * H, n_probes) fp32, log2 units, +inf for a probe that sees no key)."""
    pid = tl.program_id(0)
    tile = pid % key_tiles
    zk = pid // key_tiles
    z = zk // num_kv_heads
    hk = zk % num_kv_heads
    r, k_base, row0, offs_d, d_mask = _problem_keys(K, z, hk, count, stride_kb, stride_kh, k_start, k_stride,
                                                    HEAD_DIM, D_PAD)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    kmask = offs_n < n_k
    k_rows = row0 + offs_n
    mass = tl.zeros([BLOCK_N], tl.float32)
    for g in range(group):
        h = hk * group + g
        for p_start in range(0, n_probes, BLOCK_P):
            offs_p = p_start + tl.arange(0, BLOCK_P)
            pmask = offs_p < n_probes
            probes, probe_pos = _load_probes(Probes, ProbePos, z, h, r, offs_p, pmask, stride_pz, stride_ph,
                                             stride_pp, offs_d, d_mask, n_probes, CAUSAL)
            lse2 = tl.load(Lse2 + (z.to(tl.int64) * num_kv_heads * group + h) * n_probes + offs_p, mask=pmask,
                           other=float("inf"))
            s = _probe_scores(probes, k_base, k_rows, kmask, probe_pos, pmask, offs_d, d_mask, stride_kn, sinks,
                              scale_log2, CAUSAL)
            mass += tl.sum(tl.exp2(tl.minimum(s - lse2[:, None], max_log2_weight)), 0)
    tl.store(Mass + zk.to(tl.int64) * n_k + offs_n, mass, mask=kmask)


def probe_key_mass_triton(probes: torch.Tensor, k: torch.Tensor, keys: Rows, count: int, scale: float,
                          probe_pos: torch.Tensor | None, sinks: int, norm_keys: int = 0,
                          chunk_keys: int = 1024) -> torch.Tensor:
    """``hyperattn.plan.probe_key_mass`` in two kernels (same arguments and result, float32):
    probes (B * count, Hq, P, D) and k (B, Hkv, N, D) fp16/bf16/fp32 on CUDA (or under the
    interpreter). ``chunk_keys``: keys per program of the log-sum-exp pass (a multiple of its
    key tile, rounded up)."""
    z, heads, n_probes, d = probes.shape
    num_kv_heads, n_k = k.shape[1], keys.length
    probes = probes.detach().contiguous()
    k = k.detach()
    if k.stride(-1) != 1:
        k = k.contiguous()
    mass = torch.empty(z, num_kv_heads, n_k, dtype=torch.float32, device=k.device)
    if n_k == 0 or n_probes == 0:
        return mass.zero_()
    causal = probe_pos is not None
    positions = probe_pos.to(device=k.device, dtype=torch.int64).contiguous() if causal else probes
    interpret = not k.is_cuda
    block_p = min(16 if interpret else 64, tile_width(n_probes))
    block_n = 16 if interpret else 64
    chunk_keys = triton.cdiv(max(chunk_keys, 1), block_n) * block_n
    first_key = max(0, n_k - norm_keys) if norm_keys else 0
    num_chunks = max(1, triton.cdiv(n_k - first_key, chunk_keys))
    probe_tiles = triton.cdiv(n_probes, block_p)
    part_max = torch.empty(z * heads, num_chunks, n_probes, dtype=torch.float32, device=k.device)
    part_sum = torch.empty_like(part_max)
    common = dict(CAUSAL=causal, HEAD_DIM=d, D_PAD=tile_width(d), BLOCK_P=block_p, BLOCK_N=block_n)
    strides = (*probes.stride()[:3], *k.stride()[:3])
    geometry = (n_probes, n_k, count, keys.start, keys.stride, sinks)
    scale_log2 = scale * LOG2E.value
    with on_device(k):
        probe_lse_kernel[(z * heads * probe_tiles * num_chunks,)](
            probes, k, positions, part_max, part_sum, scale_log2, *strides, *geometry, heads,
            heads // num_kv_heads, probe_tiles, first_key, chunk_keys, num_chunks, **common)
        top = part_max.amax(1, keepdim=True)
        top = torch.where(torch.isneginf(top), 0.0, top)
        total = (part_sum * torch.exp2(part_max - top)).sum(1)
        lse2 = torch.where(total > 0, top.squeeze(1) + torch.log2(total), torch.inf)
        key_tiles = triton.cdiv(n_k, block_n)
        probe_mass_kernel[(z * num_kv_heads * key_tiles,)](
            probes, k, positions, lse2, mass, scale_log2, *strides, *geometry, num_kv_heads,
            heads // num_kv_heads, key_tiles, PROBE_MAX_LOG2_WEIGHT, **common)
    return mass
