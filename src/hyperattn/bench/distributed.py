"""``hyperattn bench distributed``: context-parallel attention on several GPUs against one.

For each number of processes P (one per GPU, NCCL; gloo on the CPU for smoke runs) and each length
N, every rank holds its shard (1, H, N / P, D) of a random sequence and the ranks time, in step:

- ``hyper``: ``context_parallel_attention`` (the Ulysses form: all-to-all, HyperAttention over the
  whole sequence for H / P heads, all-to-all back);
- ``exact``: ``context_parallel_exact_attention``, the same form over PyTorch SDPA (cuDNN on
  H100/H200): the exact attention the same engine offers;

and their parts: ``all-to-all`` (the collectives of a call alone: q, k, v to heads and the output
back, and in forward+backward the gradients' way back) and the attention of one rank alone (its
H / P heads over all N positions). P = 1 is one GPU running the whole sequence. First, for each P
above 1, the context-parallel forward at the shortest length is checked against one process's call
on the whole sequence (same seed).

``triton.testing.do_bench`` picks its number of calls from each process's own estimate, which can
differ between ranks and would leave collectives unmatched, so every rank makes the same fixed
number of calls: after warm-up calls, each timed call starts after a barrier, its time is the
slowest rank's (an all-reduce of the maxima), and the reported time is the median over calls.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict

import torch
import torch.distributed as dist

from hyperattn.api import exact_attention, hyper_attention
from hyperattn.config import HyperAttentionConfig
from hyperattn.distributed import (_heads_to_sequence, _sequence_to_heads, context_parallel_attention,
                                   context_parallel_exact_attention)
from hyperattn.runinfo import environment

IMPLS = ("hyper", "exact")
PARTS = ("call", "all-to-all", "attention")
MODES = ("fwd", "fwd_bwd")
# How long a rank waits in a collective for the others before the run fails (a rank that died)
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def check_layout(world_sizes, seq_lens, heads: int, kv_heads: int, available: int | None) -> None:
    """ValueError unless every world size divides the kv heads and every length, ``kv_heads`` divides
    ``heads`` and (``available`` given: GPUs on this host) no world size exceeds ``available``."""
    if heads % kv_heads:
        raise ValueError(f"kv_heads must divide heads ({heads}), got {kv_heads}")
    for p in world_sizes:
        if kv_heads % p:
            raise ValueError(f"every GPU count must divide the kv heads ({kv_heads}): the Ulysses form splits them "
                             f"over the processes; got {p} (pass --kv-heads a multiple of it, or fewer GPUs)")
        bad = [n for n in seq_lens if n % p]
        if bad:
            raise ValueError(f"every length must split evenly over {p} processes, got {bad}")
        if available is not None and p > available:
            raise ValueError(f"{p} processes need {p} GPUs, this host has {available}; pass --gpus with at most "
                             f"{available}")


def _shard_inputs(seq_len: int, ranks: int, rank: int, heads: int, kv_heads: int, head_dim: int, dtype,
                  device, requires_grad: bool, seed: int):
    """This rank's shard of standard normal q (1, heads, N / P, D) and k, v (1, kv_heads, N / P, D)."""
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)
    n = seq_len // ranks
    return tuple(torch.randn(1, h, n, head_dim, generator=gen, device=device, dtype=dtype)
                 .requires_grad_(requires_grad) for h in (heads, kv_heads, kv_heads))


def _step(fn, inputs, mode: str, grad):
    """One call of ``fn(*inputs)`` forward, or forward+backward from no ``.grad``."""
    if mode == "fwd":
        with torch.no_grad():
            return fn(*inputs)
    for x in inputs:
        x.grad = None
    fn(*inputs).backward(grad)


def _all_to_all_step(inputs, mode: str, grad, ranks: int):
    """The collectives of one context-parallel call without its attention: q, k, v to heads and the
    output (here q's heads) back; forward+backward also returns the gradients the same way."""
    group = dist.group.WORLD
    if mode == "fwd":
        with torch.no_grad():
            moved = [_sequence_to_heads(x, ranks, group) for x in inputs]
            return _heads_to_sequence(moved[0], ranks, group)
    for x in inputs:
        x.grad = None
    moved = [_sequence_to_heads(x, ranks, group) for x in inputs]
    out = _heads_to_sequence(moved[0], ranks, group)
    torch.autograd.backward([out, moved[1], moved[2]], [grad, torch.ones_like(moved[1]), torch.ones_like(moved[2])])


def _timed(step, device, warmup: int, reps: int) -> tuple[list[float], float | None]:
    """Every call's time in ms (the slowest rank's) and the peak GiB allocated on any rank (None
    off CUDA): ``warmup`` untimed calls, then ``reps`` calls, each after a barrier."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        dist.barrier()
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    stats = torch.tensor(times + [torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else -1.0],
                         dtype=torch.float64, device=device)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    stats = stats.tolist()
    return stats[:-1], (stats[-1] if stats[-1] >= 0 else None)


def _runners(impl: str, causal: bool, config: HyperAttentionConfig, seed: int, ranks: int, rank: int,
             kv_heads: int) -> dict:
    """``impl``'s callables: ``call`` on the shards, ``attention`` on one rank's share of the heads
    over the whole sequence."""
    share = kv_heads // ranks
    if impl == "hyper":
        def call(q, k, v):
            return context_parallel_attention(q, k, v, causal=causal, config=config, seed=seed)

        def local(q, k, v):
            shard = (rank * share, kv_heads) if ranks > 1 else None
            return hyper_attention(q, k, v, causal=causal, config=config, seed=seed, head_shard=shard)
    else:
        def call(q, k, v):
            return context_parallel_exact_attention(q, k, v, causal=causal)

        def local(q, k, v):
            return exact_attention(q, k, v, causal=causal)

    return {"call": call, "attention": local}


def _timed_part(world_size: int, seq_len: int, impl: str, part: str, exact_max_len: int) -> bool:
    """Whether a run times ``part`` of ``impl``: exact attention up to ``exact_max_len`` tokens, the
    parts of a call only where there are several processes, the all-to-alls once (HyperAttention's)."""
    if impl == "exact" and seq_len > exact_max_len:
        return False
    if part == "all-to-all":
        return impl == "hyper" and world_size > 1
    return part == "call" or world_size > 1


def _cases(world_size, seq_lens, modes, impls, exact_max_len):
    return [(n, mode, impl, part) for n in seq_lens for mode in modes for impl in impls for part in PARTS
            if _timed_part(world_size, n, impl, part, exact_max_len)]


def _worker(rank: int, world_size: int, init_method: str, settings: dict, out_path: str) -> None:
    """One process of a run over ``world_size`` processes; rank 0 writes the rows to ``out_path``."""
    on_cuda = settings["device"] == "cuda"
    device = torch.device("cuda", rank) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    else:  # the processes share the host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("nccl" if on_cuda else "gloo", init_method=init_method, rank=rank,
                            world_size=world_size, timeout=COLLECTIVE_TIMEOUT, **({"device_id": device} if on_cuda
                                                                                   else {}))
    try:
        check = _check_against_one_process(rank, world_size, device, settings) if world_size > 1 else None
        rows = _run_cases(rank, world_size, device, settings)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(dict(rows=rows, check=check), f)
    finally:
        dist.destroy_process_group()


def _check_against_one_process(rank: int, ranks: int, device, settings: dict) -> dict:
    """The context-parallel forward at the shortest length against ``hyper_attention`` over the whole
    sequence on rank 0 (same seed): the largest difference of any output element, and the largest
    output element for scale (every rank returns the same dict)."""
    seq_len = min(settings["seq_lens"])
    config = HyperAttentionConfig(**settings["config"])
    check = dict(seq_len=seq_len)
    try:
        with torch.no_grad():
            shards = _shard_inputs(seq_len, ranks, rank, settings["heads"], settings["kv_heads"],
                                   settings["head_dim"], getattr(torch, settings["dtype"]), device, False,
                                   settings["seed"])
            out = context_parallel_attention(*shards, causal=settings["causal"], config=config, seed=settings["seed"])
            whole = []
            for x in (*shards, out):  # rank 0 gathers the whole sequence
                pieces = [torch.empty_like(x) for _ in range(ranks)] if rank == 0 else None
                dist.gather(x, pieces, dst=0)
                whole.append(torch.cat(pieces, 2) if rank == 0 else None)
                del pieces
            stats = torch.zeros(2, dtype=torch.float64, device=device)
            if rank == 0:
                q, k, v, gathered = whole
                one = hyper_attention(q, k, v, causal=settings["causal"], config=config, seed=settings["seed"])
                stats[0] = (gathered.double() - one.double()).abs().max()
                stats[1] = one.double().abs().max()
            whole = None
        failed = torch.zeros(1, device=device)
    except torch.OutOfMemoryError:
        whole, stats, failed = None, torch.zeros(2, dtype=torch.float64, device=device), torch.ones(1, device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item():
        return dict(check, error="out of memory")
    dist.broadcast(stats, 0)
    return dict(check, max_abs_diff=stats[0].item(), out_max_abs=stats[1].item())


def _run_cases(rank: int, ranks: int, device, settings: dict) -> list[dict]:
    config = HyperAttentionConfig(**settings["config"])
    dtype = getattr(torch, settings["dtype"])
    heads, kv_heads, head_dim = settings["heads"], settings["kv_heads"], settings["head_dim"]
    rows = []
    runners = {impl: _runners(impl, settings["causal"], config, settings["seed"], ranks, rank, kv_heads)
               for impl in settings["impls"]}
    cases = _cases(ranks, settings["seq_lens"], settings["modes"], settings["impls"], settings["exact_max_len"])
    for seq_len, mode, impl, part in cases:
        row = dict(gpus=ranks, seq_len=seq_len, mode=mode, impl=impl, part=part)
        try:
            inputs = _shard_inputs(seq_len, ranks, rank, heads, kv_heads, head_dim, dtype, device, mode == "fwd_bwd",
                                   settings["seed"])
            if part == "attention":  # one rank's heads, every position: what the first all-to-all hands it
                with torch.no_grad():
                    inputs = tuple(_sequence_to_heads(x, ranks, dist.group.WORLD).detach()
                                   .requires_grad_(mode == "fwd_bwd") for x in inputs)
            grad = None
            if mode == "fwd_bwd":
                out_shape = (*inputs[0].shape[:-1], head_dim)
                grad = torch.randn(out_shape, device=device, dtype=dtype)
            if part == "all-to-all":
                step = lambda: _all_to_all_step(inputs, mode, grad, ranks)  # noqa: E731
            else:
                step = lambda: _step(runners[impl][part], inputs, mode, grad)  # noqa: E731
            times, peak = _timed(step, device, settings["warmup"], settings["reps"])
            row.update(ms=statistics.median(times), ms_per_call=times, peak_gib=peak)
        except torch.OutOfMemoryError:
            row.update(ms=None, peak_gib=None, error="out of memory")
        # every rank leaves a case together, also where one ran out of memory
        failed = torch.tensor([float("error" in row)], device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item() and "error" not in row:
            row.update(ms=None, peak_gib=None, error="out of memory on another rank")
        inputs = grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_benchmark(world_sizes, seq_lens, *, heads: int = 32, kv_heads: int | None = None, head_dim: int = 64,
                  causal: bool = True, modes=MODES, impls=IMPLS, exact_max_len: int = 1 << 20,
                  config: HyperAttentionConfig | None = None, device: str = "cuda", dtype: str = "bfloat16",
                  warmup: int = 1, reps: int = 5, seed: int = 0, command: str = "", progress=None) -> dict:
    """Every case for every number of processes in ``world_sizes`` (each run in fresh processes
    started here, one per GPU: ranks 0..P-1 on cuda:0..P-1; ``device="cpu"``: gloo processes on the
    CPU). Returns the results with the card, versions, date and command."""
    import torch.multiprocessing as mp

    kv_heads = kv_heads or heads
    check_layout(world_sizes, seq_lens, heads, kv_heads, torch.cuda.device_count() if device == "cuda" else None)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' needs CUDA; pass device='cpu' for a smoke run on gloo processes")
    config = config or HyperAttentionConfig()
    settings = dict(seq_lens=list(seq_lens), heads=heads, kv_heads=kv_heads, head_dim=head_dim, causal=causal,
                    modes=list(modes), impls=list(impls), exact_max_len=exact_max_len, config=asdict(config),
                    device=device, dtype=dtype, warmup=warmup, reps=reps, seed=seed)
    results, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for p in world_sizes:
            if progress:
                progress(f"{p} process{'es' if p > 1 else ''}")
            out_path = os.path.join(tmp, f"rows-{p}.json")
            mp.spawn(_worker, args=(p, f"tcp://127.0.0.1:{_free_port()}", settings, out_path), nprocs=p)
            with open(out_path) as f:
                saved = json.load(f)
            results.extend(saved["rows"])
            if saved["check"] is not None:
                checks.append(dict(gpus=p, **saved["check"]))
    return dict(benchmark="distributed", **environment(torch.device(device), command),
                gpus_on_host=torch.cuda.device_count() if device == "cuda" else 0,
                batch=1, **{k: v for k, v in settings.items() if k not in ("seq_lens",)}, results=results,
                checks=checks)


def _count(processes: int, result: dict) -> str:
    """"1 GPU", "4 GPUs", or "2 processes" for a CPU run."""
    if result["device"] == "cuda":
        return f"{processes} GPU{'s' if processes > 1 else ''}"
    return f"{processes} process{'es' if processes > 1 else ''}"


def _find(result: dict, **key):
    for row in result["results"]:
        if all(row[k] == v for k, v in key.items()):
            return row
    return None


def _ms(row) -> float | None:
    return row["ms"] if row and row.get("ms") is not None else None


def format_table(result: dict) -> str:
    """Per mode a table: tokens, processes, hyper ms (its all-to-all and one rank's attention), peak
    GiB, exact ms, speed-up over exact, and speed-up over one process at the same length."""
    what = "causal" if result["causal"] else "non-causal"
    unit = "GPUs" if result["device"] == "cuda" else "procs"
    lines = [f"{result['card']}, batch 1, {result['heads']} query / {result['kv_heads']} kv heads, head dim "
             f"{result['head_dim']}, {result['dtype']}, {what}; median ms over {result['reps']} calls (each the "
             f"slowest rank's)"]

    def cell(value, fmt="{:.2f}"):
        return fmt.format(value) if value is not None else "-"

    for mode in result["modes"]:
        lines.append(f"\n{mode.replace('_', '+')}")
        lines.append(f"{'tokens':>9} {unit:>6} {'hyper':>9} {'all2all':>9} {'attn':>9} {'GiB':>7} "
                     f"{'exact':>10} {'vs exact':>9} {'vs one':>7}")
        keys = sorted({(r["seq_len"], r["gpus"]) for r in result["results"] if r["mode"] == mode})
        for seq_len, gpus in keys:
            call = _find(result, seq_len=seq_len, gpus=gpus, mode=mode, impl="hyper", part="call")
            exact = _ms(_find(result, seq_len=seq_len, gpus=gpus, mode=mode, impl="exact", part="call"))
            one = _ms(_find(result, seq_len=seq_len, gpus=1, mode=mode, impl="hyper", part="call"))
            ours = _ms(call)
            comm = _ms(_find(result, seq_len=seq_len, gpus=gpus, mode=mode, impl="hyper", part="all-to-all"))
            attn = _ms(_find(result, seq_len=seq_len, gpus=gpus, mode=mode, impl="hyper", part="attention"))
            if gpus == 1:
                attn = ours
            peak = cell(call["peak_gib"]) if call and call.get("peak_gib") is not None else (
                call.get("error", "-") if call else "-")
            ours_text = cell(ours) if call and "error" not in call else "OOM" if call else "-"
            lines.append(f"{seq_len:>9} {gpus:>6} {ours_text:>9} {cell(comm):>9} {cell(attn):>9} {peak:>7} "
                         f"{cell(exact):>10} {cell(exact / ours if exact and ours else None, '{:.2f}x'):>9} "
                         f"{cell(one / ours if one and ours else None, '{:.2f}x'):>7}")
    for check in result.get("checks", []):
        what = (check["error"] if "error" in check else
                f"largest |difference| {check['max_abs_diff']:.3g} (largest |output| {check['out_max_abs']:.3g})")
        lines.append(f"\ncheck, {_count(check['gpus'], result)} against one at {check['seq_len']} tokens "
                     f"(forward, same seed): {what}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Log-log time against length: one line per process count, HyperAttention solid, exact dashed;
    a panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    counts = sorted({r["gpus"] for r in result["results"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, mode in zip(axes.flat, modes):
        for i, gpus in enumerate(counts):
            for impl, style in (("hyper", "o-"), ("exact", "^--")):
                points = sorted((r["seq_len"], r["ms"]) for r in result["results"]
                                if (r["gpus"], r["mode"], r["impl"], r["part"]) == (gpus, mode, impl, "call")
                                and r.get("ms") is not None)
                if points:
                    ax.plot(*zip(*points), style, color=colors[i % len(colors)],
                            label=f"{'HyperAttention' if impl == 'hyper' else 'exact'}, {_count(gpus, result)}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="median ms",
               title=f"{'causal' if result['causal'] else 'non-causal'} {mode.replace('_', '+')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['card']}: context parallel (Ulysses), {result['heads']} heads, d{result['head_dim']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(result: dict, json_path: str | None, plot_path: str | None) -> None:
    """Write the JSON (first, so that no later failure loses the measurements), print the table, plot."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {json_path}")
    print(format_table(result))
    if plot_path:
        try:
            plot(result, plot_path)
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)
