"""GPU check: every fused kernel against the reference executor at realistic sizes.

Run on a CUDA machine before any timing: ``python -m hyperattn.testing.gpu``. Inputs are
fresh random tensors every run; outputs and gradients are poisoned with NaN so unwritten rows
fail; forward and backward are compared with the float64 reference on the same plan (the
backward with and without an lse gradient: without one, cuDNN runs the diagonal leaves;
``dq_o``, ``dk_o``, ``dv_o`` are those errors). The op, forward and backward, is also captured
in a CUDA graph and replayed on new inputs (``check_cuda_graph``; ``--no-graph`` skips it).
Exits non-zero on any failure and prints a table last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import fields, replace

import torch

from hyperattn import HyperAttentionConfig
from hyperattn.config import PAPER_OVERRIDES
from hyperattn.executors import causal_hyper_attention_reference, cudnn, reference_attention
from hyperattn.executors.triton.executor import attention_backward, attention_forward
from hyperattn.executors.triton.hashing import lsh_buckets_triton
from hyperattn.executors.triton.op import triton_attention
from hyperattn.executors.triton.probes import probe_key_mass_triton
from hyperattn.executors.triton.selection import refine_selection_triton, select_key_blocks_triton
from hyperattn.plan.selection import block_centroids
from hyperattn.plan import (AttentionPlan, CausalPlan, Rows, _probe_mass, causal_schedule, plan_hyper_attention,
                            probe_key_mass)
from hyperattn.plan.launch import parts_of

# Relative Frobenius error allowed against float64, per input dtype.
TOLERANCE = {torch.float16: {"fwd": 3e-3, "bwd": 6e-3}, torch.bfloat16: {"fwd": 2e-2, "bwd": 4e-2}}

# A CUDA graph's replay against eager calls of the same kernels, gradients only (the forward
# must match bit for bit): the fp32 atomic additions into gradient rows, and cuDNN's backward,
# may add in another order; a replay on stale inputs would be off by about 1.4.
GRAPH_TOLERANCE = 1e-3
# The selection kernel's largest shortfall (``selection_shortfall``): bf16 block means swap near-ties
SELECTION_TOLERANCE = 2e-2

# name: (batch, Hq, Hkv, Nq, Nk, D, Dv, causal, config overrides of the library's default, with
# exact sinks and tail); None config = exact part only
RANK = dict(query_blocks="rank")
CASES = [
    ("causal d64", 1, 8, 8, 16384, 16384, 64, 64, True, {}),
    ("causal batch 2", 2, 4, 4, 9001, 9001, 128, 128, True, dict(min_seq_len=2048)),  # a 1-row head
    ("prefill mha", 1, 4, 4, 6000, 16384, 64, 64, True, dict(min_seq_len=2048)),
    ("causal gqa d128", 1, 8, 2, 12000, 12000, 128, 128, True, {}),
    ("rank causal gqa d128", 1, 8, 2, 12000, 12000, 128, 128, True, RANK),  # the paper's rule: tiles per key block
    ("rank causal batch 2", 2, 4, 4, 9001, 9001, 64, 64, True, dict(min_seq_len=2048, **RANK)),
    ("causal d256", 1, 4, 2, 9000, 9000, 256, 256, True, dict(min_seq_len=2048)),
    ("prefill chunk", 1, 8, 2, 6003, 16384, 64, 64, True, dict(min_seq_len=2048)),  # a 3-row head
    ("prefill no head", 1, 4, 2, 6000, 16384, 64, 64, True, dict(min_seq_len=2048)),
    ("non-causal odd", 2, 4, 4, 10000, 12345, 64, 64, False, {}),
    ("value_norm", 1, 4, 4, 16384, 16384, 64, 64, True, dict(sampling="value_norm")),
    ("small blocks", 1, 4, 2, 8192, 8192, 64, 64, True, dict(block_size=64, sample_size=128, min_seq_len=512)),
    # wider index registers
    ("large blocks", 1, 4, 2, 16384, 16384, 64, 64, True, dict(block_size=512, sample_size=384)),
    ("head dim 32", 1, 4, 4, 12000, 12000, 32, 32, True, {}),  # 32 columns under the head-dim-64 tiles
    ("head dim 80", 1, 4, 2, 10000, 12345, 80, 80, False, {}),  # padded to 128 columns
    ("exact lse", 1, 8, 2, 3000, 4000, 64, 64, True, None),
    ("paper causal", 1, 8, 8, 16384, 16384, 64, 64, True, PAPER_OVERRIDES),  # cuDNN leaves, no sinks or tail
    ("paper non-causal", 1, 4, 2, 10000, 12345, 64, 64, False, PAPER_OVERRIDES),
    ("sinks prefill", 1, 4, 2, 6000, 16384, 128, 128, True, dict(min_seq_len=2048, exact_sinks=64)),
    ("tail only", 1, 8, 2, 20000, 32768, 64, 64, True, dict(exact_sinks=0, exact_tail=100)),  # 7 key chunks + rest
    ("non-causal sinks", 2, 4, 4, 9000, 20000, 128, 128, False, dict(exact_sinks=100, exact_tail=0)),
    # heavy keys: sorted between the live keys and the sinks, run as samples of weight one
    ("heavy keys", 1, 8, 2, 16384, 16384, 128, 128, True,
     dict(heavy_keys=448, block_size=64, sample_size=0, min_seq_len=2048, **RANK)),
    ("heavy mass", 1, 4, 4, 12000, 12000, 64, 64, True, dict(heavy_keys=100, sampling="mass", exact_sinks=32, **RANK)),
    ("heavy non-causal", 1, 4, 2, 9000, 10000, 64, 64, False, dict(heavy_keys=200, sampling="mass", **RANK)),
    # the bucket rule (the default): tiles of consecutive sorted queries, each row attending to its own key block
    ("bucket causal", 1, 8, 2, 16384, 16384, 128, 128, True, dict(query_blocks="bucket")),
    ("bucket heavy", 1, 4, 4, 12000, 12000, 64, 64, True,
     dict(query_blocks="bucket", heavy_keys=448, block_size=64, sample_size=0, min_seq_len=2048)),
    ("bucket non-causal", 2, 4, 2, 9000, 10000, 64, 64, False,
     dict(query_blocks="bucket", heavy_keys=100, sampling="mass", exact_sinks=16)),
    # the centroid rule: keys in order, each query's block by its score against the blocks' mean keys
    ("centroid heavy", 1, 4, 4, 12000, 12000, 64, 64, True,
     dict(query_blocks="centroid", heavy_keys=448, block_size=64, sample_size=0, exact_sinks=0, min_seq_len=2048)),
    ("centroid gqa d128 mass", 1, 8, 2, 6000, 16384, 128, 128, True,
     dict(query_blocks="centroid", heavy_keys=100, sampling="mass", exact_sinks=16)),
    # the exact window: the approximated parts skip each query's window, exact parts attend to it
    ("window", 1, 8, 2, 16384, 16384, 64, 64, True, dict(exact_window=1024, min_seq_len=2048)),
    ("rank window", 1, 4, 2, 16384, 16384, 64, 64, True, dict(exact_window=1024, min_seq_len=2048, **RANK)),
    ("window wide prefill", 1, 4, 2, 6000, 16384, 128, 128, True,
     dict(exact_window=3000, query_blocks="bucket", heavy_keys=448, block_size=64, sample_size=0, min_seq_len=2048)),
    # selected blocks: each query's own runs of keys, gathered per row, besides the heavy keys
    ("selected heavy", 1, 4, 4, 12000, 12000, 64, 64, True,
     dict(selected_blocks=8, selected_block_size=8, heavy_keys=448, sample_size=0, exact_sinks=0, min_seq_len=2048)),
    ("selected gqa d128 window", 1, 8, 2, 6000, 16384, 128, 128, True,
     dict(selected_blocks=16, selected_block_size=4, heavy_keys=256, sample_size=0, exact_window=512,
          min_seq_len=2048)),
    ("selected coarse", 1, 4, 2, 12000, 12000, 64, 64, True,
     dict(selected_blocks=4, selected_block_size=16, selection_coarse_size=128, heavy_keys=448, sample_size=0,
          exact_sinks=0, min_seq_len=2048)),
    ("selected shared", 1, 8, 2, 12000, 12000, 128, 128, True,  # tiles of 16 queries share earlier rows' blocks
     dict(selected_blocks=4, selected_block_size=16, selection_tile=16, heavy_keys=448, sample_size=0,
          exact_sinks=0, min_seq_len=2048)),
    ("selected non-causal sinks", 2, 4, 2, 9000, 10000, 64, 64, False,
     dict(selected_blocks=8, selected_block_size=8, heavy_keys=100, sample_size=0, sampling="mass")),
]

# Cases whose cuDNN leaf backward runs one kv head (and its query heads) a call, as it does
# over groups of heads from 2**29 query elements (cudnn.LEAF_BACKWARD_ELEMENTS) on: GQA and a
# batch of 2.
ONE_KV_HEAD_A_LEAF_CALL = ("causal gqa d128", "causal batch 2")


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def _passes(errors: dict, unwritten: int, dtype) -> bool:
    """Every element written, out, lse and the probe masses (where checked) within the forward
    tolerance, gradients ("d...") within the backward's."""
    tol = TOLERANCE[dtype]
    return (unwritten == 0 and errors["out"] <= tol["fwd"] and errors.get("lse", 0.0) <= 10 * tol["fwd"]
            and errors.get("mass", 0.0) <= tol["fwd"] and errors.get("selection", 0.0) <= SELECTION_TOLERANCE
            and all(value <= tol["bwd"] for key, value in errors.items() if key.startswith("d")))


def check_case(name, batch, hq, hkv, nq, nk, d, dv, causal, overrides, dtype, device="cuda"):
    with cudnn.leaf_backward_elements(1 if name in ONE_KV_HEAD_A_LEAF_CALL else cudnn.LEAF_BACKWARD_ELEMENTS):
        return _check_case(batch, hq, hkv, nq, nk, d, dv, causal, overrides, dtype, device)


def _check_case(batch, hq, hkv, nq, nk, d, dv, causal, overrides, dtype, device):
    q = torch.randn(batch, hq, nq, d, device=device, dtype=dtype)
    k = torch.randn(batch, hkv, nk, d, device=device, dtype=dtype)
    v = torch.randn(batch, hkv, nk, dv, device=device, dtype=dtype)
    scale = d ** -0.5
    plan, tail = None, 0
    if overrides is not None:
        cfg = HyperAttentionConfig(**overrides)
        plan = plan_hyper_attention(q, k, v, causal, cfg, torch.Generator().manual_seed(int(torch.seed() % 2**31)),
                                    lsh_buckets_triton, probe_mass=probe_key_mass_triton,
                                    select_blocks=select_key_blocks_triton, refine_blocks=refine_selection_triton)
        tail = cfg.exact_tail
    parts = parts_of(plan, nq, nk, causal)
    out, lse = attention_forward(q, k, v, parts, scale, tail, causal, poison=True)
    unwritten = (~torch.isfinite(out)).sum().item() + (~torch.isfinite(lse)).sum().item()

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = reference_attention(q64, k64, v64, plan, scale, causal, tail)
    dout = torch.randn_like(ref_out)
    dlse = torch.randn_like(ref_lse)
    ref_grads = torch.autograd.grad((ref_out * dout).sum() + (ref_lse * dlse).sum(), (q64, k64, v64),
                                    retain_graph=True)
    ref_out_grads = torch.autograd.grad((ref_out * dout).sum(), (q64, k64, v64))  # no lse gradient: cuDNN leaves

    poisoned = attention_backward(dout.to(dtype), dlse.float(), q, k, v, out, lse, parts, scale, tail, causal,
                                  poison=True)
    unwritten += sum((~torch.isfinite(g)).sum().item() for g in poisoned)
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    out2, lse2 = triton_attention(qg, kg, vg, plan, scale, causal, tail)
    grads = torch.autograd.grad((out2.float() * dout.float()).sum() + (lse2 * dlse.float()).sum(), (qg, kg, vg))
    out_grads = attention_backward(dout.to(dtype), None, q, k, v, out, lse, parts, scale, tail, causal, poison=True)
    unwritten += sum((~torch.isfinite(g)).sum().item() for g in out_grads)
    errors = {"out": _rel(out, ref_out), "lse": (lse.double() - ref_lse).abs().max().item()}
    if overrides is not None and cfg.uses_probes:
        errors["mass"] = _probe_mass_error(q, k, causal, cfg, scale)
    if overrides is not None and cfg.selected_blocks:
        errors["selection"] = _selection_error(q, k, causal, cfg)
    errors.update({label: _rel(g, r) for label, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    errors.update({label + "_o": _rel(g, r) for label, g, r in zip(("dq", "dk", "dv"), out_grads, ref_out_grads)})
    return _passes(errors, unwritten, dtype) and torch.equal(out, out2), unwritten, errors


def _probe_mass_error(q, k, causal, config, scale) -> float:
    """Relative error of the probe-mass kernels against ``probe_key_mass`` in float64 on the same
    inputs: the first causal level's rectangles (the plan's probes, ``_probe_mass``), or all keys."""
    if causal:
        schedule = causal_schedule(q.shape[2], k.shape[2], config.min_seq_len)
        args = (schedule, schedule.level(1), config, scale, config.exact_sinks)
        got = _probe_mass(q, k, *args, probe_key_mass_triton)
        return _rel(got, _probe_mass(q.double(), k.double(), *args, probe_key_mass))
    probes = q[:, :, torch.randint(q.shape[2], (config.probe_queries,), device=q.device)]
    args = (Rows(start=0, stride=0, length=k.shape[2]), 1, scale, None, config.exact_sinks)
    return _rel(probe_key_mass_triton(probes, k, *args), probe_key_mass(probes.double(), k.double(), *args))


def selection_shortfall(q, k, live, block_size, selected):
    """Per row, how far the weakest chosen block's score (float64, live blocks only) falls below the
    row's count-th best, relative to the row's largest |score| (a dead block where enough live ones
    exist falls short by far); inf for a repeated choice."""
    centroids, has_live = block_centroids(k.double(), live, block_size)
    groups = q.shape[1] // k.shape[1]
    scores = torch.einsum("zhqd,zhbd->zhqb", q.double(), centroids.repeat_interleave(groups, 1))
    alive = has_live.repeat_interleave(groups, 1)[:, :, None, :].expand_as(scores)
    scale = scores.masked_fill(~alive, 0).abs().amax(-1).clamp_min(1e-12)
    scores = scores.masked_fill(~alive, -1e300)  # dead blocks: below every live one
    count = selected.shape[-1]
    kth = scores.topk(count, -1).values[..., -1]
    chosen = scores.gather(-1, selected)
    worst = chosen.min(-1).values
    shortfall = (kth - worst) / scale
    repeated = (selected[..., 1:] == selected[..., :-1]).any(-1)
    return torch.where(repeated, torch.inf, shortfall)


def _selection_error(q, k, causal, config) -> float:
    """``selection_shortfall`` of the selection kernel on the first causal level's rectangles (or
    every key), every key live."""
    rows = causal_schedule(q.shape[2], k.shape[2], config.min_seq_len).level(1).take(q, k) if causal else (q, k)
    chosen = select_key_blocks_triton(*rows, None, config.selected_block_size, config.selected_blocks)
    return selection_shortfall(*rows, None, config.selected_block_size, chosen).max().item()


def _sync(device) -> None:
    """Wait for the device's queued work (nothing to wait for off CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _problem_at_scale(seq_len, heads, head_dim, dtype, config, device):
    """Fresh causal q, k, v (1, heads, seq_len, head_dim), their plan (seed 0, fused hashing) and parts."""
    q, k, v = (torch.randn(1, heads, seq_len, head_dim, device=device, dtype=dtype) for _ in range(3))
    plan = plan_hyper_attention(q, k, v, True, config, torch.Generator().manual_seed(0), lsh_buckets_triton)
    return q, k, v, plan, parts_of(plan, seq_len, seq_len, True)


def _peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else float("nan")


def _free(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def check_long(seq_len, heads, device="cuda"):
    """Causal forward at a length where 32-bit offsets overflow. Every row must be written;
    with at most 4 heads the output is also compared with the float32 reference (same plan).
    Returns (ok, seconds of the fused forward, peak GiB, {"out": relative error, nan unchecked})."""
    q, k, v, plan, parts = _problem_at_scale(seq_len, heads, 64, torch.bfloat16, HyperAttentionConfig(), device)
    _sync(device)
    start = time.perf_counter()
    out, lse = attention_forward(q, k, v, parts, 64 ** -0.5, poison=True)
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = _peak_gib(device)
    ok = bool(torch.isfinite(out).all() and torch.isfinite(lse).all())
    error = float("nan")
    if heads <= 4:
        with torch.no_grad():
            ref_out, _ = causal_hyper_attention_reference(q.float(), k.float(), v.float(), plan, 64 ** -0.5)
        error = _rel(out, ref_out.double())
        ok = ok and error <= TOLERANCE[torch.bfloat16]["fwd"]
    del q, k, v, out, lse, plan, parts
    _free(device)
    return ok, elapsed, peak, {"out": error}


def _head_of_plan(plan: CausalPlan, h: int) -> CausalPlan:
    """``plan`` restricted to head ``h`` (inputs with as many kv heads as query heads)."""
    def one(p: AttentionPlan | None) -> AttentionPlan | None:
        if p is None:
            return None
        tensors = {f.name: getattr(p, f.name) for f in fields(p)}  # q_block is None under the rank rule
        return replace(p, **{name: t[:, h:h + 1] for name, t in tensors.items() if isinstance(t, torch.Tensor)})

    return replace(plan, level_plans=[one(p) for p in plan.level_plans], prefix_plan=one(plan.prefix_plan))


def check_long_backward(seq_len, heads, head_dim=64, dtype=torch.bfloat16, config=None, device="cuda"):
    """Causal forward and backward with ``config``'s exact tail (no lse gradient, so cuDNN runs the
    leaves where it can) at a length where element offsets pass 2**31 (more than 1M tokens at 32
    heads of 64): every output and gradient element must be written, and the last head (the
    largest offsets) must match the float32 reference on the same plan. Returns (ok, seconds of
    the fused forward+backward, peak GiB, relative errors of out, dq, dk, dv)."""
    config = config or HyperAttentionConfig()
    q, k, v, plan, parts = _problem_at_scale(seq_len, heads, head_dim, dtype, config, device)
    dout = torch.randn_like(q)
    scale = head_dim ** -0.5
    _sync(device)
    start = time.perf_counter()
    out, lse = attention_forward(q, k, v, parts, scale, config.exact_tail, True, poison=True)
    grads = attention_backward(dout, None, q, k, v, out, lse, parts, scale, config.exact_tail, True, poison=True)
    _sync(device)
    elapsed = time.perf_counter() - start
    peak = _peak_gib(device)
    unwritten = sum(int((~torch.isfinite(x)).sum()) for x in (out, lse, *grads))
    last = [x[:, -1:].clone() for x in (out, *grads)]
    q1, k1, v1 = (x[:, -1:].float().requires_grad_() for x in (q, k, v))
    dout1 = dout[:, -1:].float()
    del q, k, v, dout, out, lse, grads, parts  # room for the reference
    _free(device)
    ref_out, _ = reference_attention(q1, k1, v1, _head_of_plan(plan, heads - 1), scale, True, config.exact_tail)
    ref_grads = torch.autograd.grad((ref_out * dout1).sum(), (q1, k1, v1))
    errors = {"out": _rel(last[0], ref_out.detach().double())}
    errors.update({label: _rel(got, ref.double()) for label, got, ref in zip(("dq", "dk", "dv"), last[1:], ref_grads)})
    del q1, k1, v1, ref_out, ref_grads, plan
    _free(device)
    return _passes(errors, unwritten, dtype), elapsed, peak, errors


def check_cuda_graph(dtype=torch.bfloat16, device="cuda", replays=2):
    """The fused op, forward and backward, captured in one CUDA graph (its plan made outside)
    and replayed ``replays`` times, each on new values of the captured inputs and against
    eager calls on the same inputs and plan. Returns (whether every forward output equals
    the eager one, the largest relative errors of dq, dk, dv, whether every element was
    written)."""
    cfg = HyperAttentionConfig()
    q, k, v = (torch.randn(1, 4, 16384, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    dout = torch.randn(1, 4, 16384, 64, device=device, dtype=dtype)
    plan = plan_hyper_attention(q, k, v, True, cfg, torch.Generator().manual_seed(0), lsh_buckets_triton)

    def step():
        out, _ = triton_attention(q, k, v, plan, q.shape[-1] ** -0.5, True, cfg.exact_tail)
        return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))

    side = torch.cuda.Stream()  # warm-up (compiles, cuDNN's graphs) off the capturing stream, as CUDA graphs need
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    same_out, errors, written = True, dict.fromkeys(("dq", "dk", "dv"), 0.0), True
    for _ in range(replays):
        with torch.no_grad():
            for x in (q, k, v, dout):
                x.copy_(torch.randn_like(x))
            for x in captured:
                x.fill_(float("nan"))
        graph.replay()
        eager = step()
        written = written and all(bool(torch.isfinite(x).all()) for x in captured)
        same_out = same_out and torch.equal(captured[0], eager[0])
        for name, x, y in zip(errors, captured[1:], eager[1:]):
            errors[name] = max(errors[name], _rel(x, y.double()))
    return same_out, errors, written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", default="1048576:2,2097152:2,1048576:32",
                        help="comma-separated LENGTH:HEADS causal forward runs at scale, compared with the "
                        "reference where HEADS <= 4 ('' to skip)")
    parser.add_argument("--long-backward", default="1114112:32",
                        help="comma-separated LENGTH:HEADS causal forward+backward runs at scale, head dim 64 "
                        "(element offsets pass 2**31 past 1M tokens at 32 heads), the last head compared with the "
                        "reference ('' to skip)")
    parser.add_argument("--no-cases", action="store_true", help="skip the realistic-size cases")
    parser.add_argument("--no-graph", action="store_true", help="skip the CUDA graph replay check")
    parser.add_argument("--dtypes", default="bfloat16,float16", help="comma-separated input dtypes to check")
    parser.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times (fresh inputs), >= 1")
    parser.add_argument("--shard", default="1/1", help="K/N: only every N-th chosen case from the K-th on, so "
                        "that N processes share the cases (tools/gpu_session.sh check)")
    parser.add_argument("--leaves", choices=("cudnn", "triton"), default="cudnn",
                        help="engine of the diagonal leaves wherever cuDNN can run them (HYPERATTN_LEAVES; the "
                        "default 'auto' would switch engines between the calls compared)")
    parser.add_argument("--selected-tile-rows", type=int, default=None,
                        help="query rows of a tile of the selected blocks' forward: 0 (per row) or a power of two "
                        ">= 16 (the tensor-core forward; default: the library's)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    known = [case[0] for case in CASES]
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"--cases: unknown case(s) {sorted(unknown)}; expected names from {known}")
    if args.cases and not names:
        parser.error(f"--cases: no case named in {args.cases!r}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    shard, _, shards = args.shard.partition("/")
    if not (shard.isdigit() and shards.isdigit() and 1 <= int(shard) <= int(shards)):
        parser.error(f"--shard: expected K/N with 1 <= K <= N, got {args.shard!r}")
    chosen = [case for case in CASES if not names or case[0] in names][int(shard) - 1::int(shards)]
    tile_rows = args.selected_tile_rows
    if tile_rows is not None:
        if tile_rows and (tile_rows < 16 or tile_rows & (tile_rows - 1)):
            parser.error(f"--selected-tile-rows: expected 0 or a power of two >= 16, got {tile_rows}")
        from hyperattn.executors.triton import selected
        selected.SELECTED_TILE_ROWS = tile_rows
    os.environ["HYPERATTN_LEAVES"] = args.leaves
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, leaves: {args.leaves}")
    rows, failed = [], 0
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    for dtype in () if args.no_cases else dtypes:
        for case in chosen * args.repeat:
            ok, unwritten, errors = check_case(*case, dtype=dtype)
            failed += not ok
            rows.append(f"{'PASS' if ok else 'FAIL'} {case[0]:<16} {str(dtype)[6:]:<9} unwritten={unwritten} "
                        + " ".join(f"{key}={value:.2e}" for key, value in errors.items()))
            print(rows[-1], flush=True)
    runs = [(check_long, "causal fwd", "", spec) for spec in filter(None, args.long.split(","))]
    runs += [(check_long_backward, "causal fwd+bwd", ", last head", spec)
             for spec in filter(None, args.long_backward.split(","))]
    for check, label, compared, spec in runs:
        seq_len, heads = map(int, spec.split(":"))
        torch.cuda.reset_peak_memory_stats()
        ok, elapsed, peak, errors = check(seq_len, heads)
        failed += not ok
        rows.append(f"{'PASS' if ok else 'FAIL'} {label} {seq_len} tokens, {heads} heads{compared}: "
                    + " ".join(f"{key}={value:.2e}" for key, value in errors.items())
                    + f" {elapsed * 1e3:.0f} ms (first call), peak {peak:.1f} GiB")
        print(rows[-1], flush=True)
    if not args.no_graph:  # last: a capture that fails may leave the device unusable for the rest
        try:
            same_out, errors, written = check_cuda_graph()
            ok = same_out and written and all(value <= GRAPH_TOLERANCE for value in errors.values())
            row = (f"unwritten={int(not written)} out={'equal' if same_out else 'DIFFERS'} "
                   + " ".join(f"{key}={value:.2e}" for key, value in errors.items()))
        except Exception as error:  # a failed case with the rest of the summary; the traceback on stderr
            traceback.print_exc()
            ok, row = False, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        failed += not ok
        rows.append(f"{'PASS' if ok else 'FAIL'} cuda graph       bfloat16  {row}")
        print(rows[-1], flush=True)
    print("\n".join(["", "summary:"] + rows))
    print(f"{len(rows) - failed} passed, {failed} failed")
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
