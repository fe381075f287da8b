"""What the accuracy options cost: HyperAttention's time with each option set, against cuDNN and the default.

    python tools/option_cost.py --seq-lens 131072 --head-dims 64,128 --kv-heads 32,8 --json out.json
    python tools/option_cost.py --options default --mixes 0.25,0.5,0.75    # layers with some heads exact
    python tools/option_cost.py --options bucket-heavy448-b64 --heavy-engines kernel,cudnn   # who attends heavy keys
    python tools/option_cost.py --options heavy448-sel4x16-p32-nosinks --selected-tile-rows 0,16,32   # the forward

Times (``hyperattn.bench.attention.time_case``: medians of ``triton.testing.do_bench``, one
process, one card) cuDNN's fused attention and HyperAttention with each option set in ``OPTIONS``
(``exact_up_to=0``, so every length runs the approximation), forward and forward+backward, batch
1, 32 query heads, bf16, and prints each one's time with its speed-up against cuDNN and its cost
against the library's default. Needs a CUDA GPU; ``tools/gpu_session.sh OUT options`` runs it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from unittest import mock

import torch

from hyperattn import HyperAttentionConfig, attention_by_head, exact_attention
from hyperattn.bench.attention import _sdpa, hyper_attention_runner, time_case
from hyperattn.config import PAPER_OVERRIDES
from hyperattn.executors.triton import executor, selected

HEAVY_NO_SAMPLES = dict(sample_size=0, sampling="mass")
BUCKET_HEAVY448 = dict(query_blocks="bucket", heavy_keys=448, block_size=64, **HEAVY_NO_SAMPLES)
# --heavy-engines: the executor's narrowest head dim for heavy keys by cuDNN under each choice
HEAVY_ENGINES = {"auto": executor.HEAVY_BY_CUDNN_MIN_HEAD_DIM, "kernel": 1 << 30, "cudnn": 0}
OPTIONS = {
    "paper": PAPER_OVERRIDES,
    "default": dict(),
    "rank": dict(query_blocks="rank"),
    "mass": dict(sampling="mass"),
    "mass-p16": dict(sampling="mass", probe_queries=16),
    "heavy256": dict(heavy_keys=256, sampling="mass"),
    "heavy448-b64": dict(query_blocks="rank", heavy_keys=448, block_size=64, **HEAVY_NO_SAMPLES),
    "heavy384-b128": dict(query_blocks="rank", heavy_keys=384, block_size=128, **HEAVY_NO_SAMPLES),
    "heavy256-b256": dict(query_blocks="rank", heavy_keys=256, block_size=256, **HEAVY_NO_SAMPLES),
    "bucket-heavy448-b64": BUCKET_HEAVY448,
    "bucket-heavy384-b128": dict(query_blocks="bucket", heavy_keys=384, block_size=128, **HEAVY_NO_SAMPLES),
    "bucket-heavy256-b64": dict(query_blocks="bucket", heavy_keys=256, block_size=64, **HEAVY_NO_SAMPLES),
    "bucket-heavy448-b64-p16": dict(BUCKET_HEAVY448, probe_queries=16),
    "bucket-heavy448-b64-p16-nosinks": dict(BUCKET_HEAVY448, probe_queries=16, exact_sinks=0),
    "bucket-heavy448-b64-p32-nosinks": dict(BUCKET_HEAVY448, probe_queries=32, exact_sinks=0),
    "bucket-heavy384-b64-p32-nosinks": dict(BUCKET_HEAVY448, heavy_keys=384, probe_queries=32, exact_sinks=0),
    "bucket-heavy448-b32-p32-nosinks": dict(BUCKET_HEAVY448, block_size=32, probe_queries=32, exact_sinks=0),
    "bucket-heavy448-b64-w1024": dict(BUCKET_HEAVY448, exact_window=1024),
    "centroid-heavy448-b64-p32-nosinks": dict(BUCKET_HEAVY448, query_blocks="centroid", probe_queries=32,
                                              exact_sinks=0),
    "centroid-heavy448-b32-p32-nosinks": dict(BUCKET_HEAVY448, query_blocks="centroid", block_size=32,
                                              probe_queries=32, exact_sinks=0),
    "heavy448-sel8x8-p32-nosinks": dict(heavy_keys=448, selected_blocks=8, selected_block_size=8, probe_queries=32,
                                        exact_sinks=0, **HEAVY_NO_SAMPLES),
    "heavy448-sel16x4-p32-nosinks": dict(heavy_keys=448, selected_blocks=16, selected_block_size=4, probe_queries=32,
                                         exact_sinks=0, **HEAVY_NO_SAMPLES),
    "heavy448-sel4x16-p32-nosinks": dict(heavy_keys=448, selected_blocks=4, selected_block_size=16, probe_queries=32,
                                         exact_sinks=0, **HEAVY_NO_SAMPLES),
    "heavy448-sel4x16c128-p32-nosinks": dict(heavy_keys=448, selected_blocks=4, selected_block_size=16,
                                             selection_coarse_size=128, probe_queries=32, exact_sinks=0,
                                             **HEAVY_NO_SAMPLES),
    "heavy448-sel4x16t16-p32-nosinks": dict(heavy_keys=448, selected_blocks=4, selected_block_size=16, selection_tile=16,
                                            probe_queries=32, exact_sinks=0, **HEAVY_NO_SAMPLES),
    "heavy448-sel4x16c128t16-p32-nosinks": dict(heavy_keys=448, selected_blocks=4, selected_block_size=16,
                                                selection_coarse_size=128, selection_tile=16, probe_queries=32,
                                                exact_sinks=0, **HEAVY_NO_SAMPLES),
    "heavy256-sel16x16-p32-nosinks": dict(heavy_keys=256, selected_blocks=16, selected_block_size=16, probe_queries=32,
                                          exact_sinks=0, **HEAVY_NO_SAMPLES),
    "window1024": dict(exact_window=1024),
    "rank-window1024": dict(query_blocks="rank", exact_window=1024),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="131072")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--kv-heads", default="32,8", help="key/value heads, one per head dim")
    parser.add_argument("--causal", default="causal", help="comma-separated: causal, non-causal")
    parser.add_argument("--modes", default="fwd,fwd_bwd")
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated names of OPTIONS")
    parser.add_argument("--mixes", default="",
                        help="comma-separated shares of query heads approximated in one layer call "
                             "(hyperattn.attention_by_head: the first heads take the default, the rest "
                             "exact_attention), timed beside exact_attention on every head, e.g. 0.25,0.5,0.75")
    parser.add_argument("--heavy-engines", default="auto",
                        help="comma-separated, for option sets with heavy keys: auto (the library's choice), kernel "
                             "(the fused kernel attends to them) or cudnn (cuDNN does, where it runs the leaves)")
    parser.add_argument("--selected-tile-rows", default="auto",
                        help="comma-separated, for option sets with selected blocks: auto (the library's forward), 0 "
                             "(the per-row forward) or the query rows of a tile of the tensor-core forward (option sets with "
                             "selection_tile always take tiles of that many rows)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    engines = args.heavy_engines.split(",")
    if any(e not in HEAVY_ENGINES for e in engines):
        parser.error(f"--heavy-engines: expected some of {list(HEAVY_ENGINES)}, got {args.heavy_engines!r}")
    tile_rows = args.selected_tile_rows.split(",")
    if any(t != "auto" and not (t.isdigit() and (int(t) == 0 or (int(t) >= 16 and int(t) & (int(t) - 1) == 0)))
           for t in tile_rows):
        parser.error(f"--selected-tile-rows: expected auto, 0 or a power of two >= 16, got {args.selected_tile_rows!r}")
    mixes = [float(x) for x in args.mixes.split(",") if x]
    head_dims = [int(d) for d in args.head_dims.split(",")]
    kv_heads = [int(h) for h in args.kv_heads.split(",")]
    if len(kv_heads) != len(head_dims):
        parser.error(f"--kv-heads needs one value per head dim ({len(head_dims)}), got {args.kv_heads!r}")
    names = args.options.split(",")
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        parser.error(f"--options: unknown {unknown}; known: {list(OPTIONS)}")
    rows = []
    print(f"{torch.cuda.get_device_name()}: 32 query heads, bf16; median ms, speed-up against cuDNN, cost against"
          " the default")
    for head_dim, kv in zip(head_dims, kv_heads):
        for causal in (name == "causal" for name in args.causal.split(",")):
            for seq_len in map(int, args.seq_lens.split(",")):
                for mode in args.modes.split(","):
                    case = dict(head_dim=head_dim, kv_heads=kv, causal=causal, seq_len=seq_len, mode=mode)
                    cudnn, _ = time_case(_sdpa("cudnn"), seq_len, 32, head_dim, causal, mode, kv_heads=kv,
                                         repeat_kv=True)
                    rows.append(dict(case, options="cudnn", config=None, ms=cudnn, vs_cudnn=1.0))
                    default = None
                    runs = [(name, engine, rows_) for name in names
                            for engine in (engines if OPTIONS[name].get("heavy_keys") else ["auto"])
                            for rows_ in (tile_rows if OPTIONS[name].get("selected_blocks")
                                          and not OPTIONS[name].get("selection_tile") else ["auto"])]
                    for name, engine, rows_ in runs:
                        config = HyperAttentionConfig(exact_up_to=0, **OPTIONS[name])
                        tiles = selected.SELECTED_TILE_ROWS if rows_ == "auto" else int(rows_)
                        with mock.patch.object(executor, "HEAVY_BY_CUDNN_MIN_HEAD_DIM", HEAVY_ENGINES[engine]), \
                                mock.patch.object(selected, "SELECTED_TILE_ROWS", tiles):
                            ms, peak = time_case(hyper_attention_runner(config), seq_len, 32, head_dim, causal, mode,
                                                 kv_heads=kv)
                        default = ms if name == "default" else default
                        label = name + ("" if engine == "auto" else f":{engine}") + (
                            "" if rows_ == "auto" else f":tile{rows_}")
                        rows.append(dict(case, options=label, config=OPTIONS[name], heavy_engine=engine,
                                         selected_tile_rows=tiles if OPTIONS[name].get("selected_blocks") else None,
                                         ms=ms, peak_gib=peak, vs_cudnn=cudnn / ms))
                    if mixes:
                        exact_ms, _ = time_case(lambda q, k, v, causal: exact_attention(q, k, v, causal=causal),
                                                seq_len, 32, head_dim, causal, mode, kv_heads=kv)
                        rows.append(dict(case, options="exact_attention", config=None, ms=exact_ms,
                                         vs_cudnn=cudnn / exact_ms))
                    for share in mixes:
                        approximated = round(share * 32)
                        treatments = [HyperAttentionConfig(exact_up_to=0) if h < approximated else None
                                      for h in range(32)]
                        ms, peak = time_case(lambda q, k, v, causal, t=treatments: attention_by_head(
                            q, k, v, t, causal=causal, seed=0), seq_len, 32, head_dim, causal, mode, kv_heads=kv)
                        share = approximated / 32
                        predicted = (1 - share) * exact_ms + share * default if default else None
                        rows.append(dict(case, options=f"mix{share:.2f}", config=dict(share=share), ms=ms,
                                         peak_gib=peak, vs_cudnn=cudnn / ms, predicted_ms=predicted))
                    for row in rows[-(len(runs) + (len(mixes) + 1 if mixes else 0)):]:
                        row["vs_default"] = row["ms"] / default if default else None
                        print(f"d{head_dim} kv{kv:<3} {'causal' if causal else 'non-causal':<10} {seq_len:>8} "
                              f"{mode:<8} {row['options']:<38} {row['ms']:9.2f} ms {row['vs_cudnn']:6.2f}x cuDNN"
                              + (f"  {row['vs_default']:5.2f}x default" if default else "")
                              + (f"  (predicted {row['predicted_ms']:.2f} ms)" if row.get("predicted_ms") else ""),
                              flush=True)
    if args.json:
        import triton

        with open(args.json, "w") as f:
            json.dump(dict(benchmark="option_cost", card=torch.cuda.get_device_name(),
                           date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           torch=torch.__version__, triton=triton.__version__, command=" ".join(sys.argv),
                           heads=32, batch=1, dtype="bfloat16", results=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
