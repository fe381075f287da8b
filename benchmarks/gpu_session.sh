#!/usr/bin/env bash
# One device call: check every kernel, then time. Usage: bash benchmarks/gpu_session.sh OUT_DIR [STEPS]
# STEPS (comma-separated, default all): check, leaves, bench64, bench128, profile, model
set -o pipefail
out=${1:?output folder}; steps=${2:-check,leaves,bench64,profile}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
has() { [[ ",$steps," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
if has check; then python3 -m hyperattn.testing.gpu --long 1048576:2,1048576:32 2>&1 | tee "$out/gpu-check.log" | grep -v "^PASS" || exit 1; fi
if has leaves; then python3 benchmarks/leaf_engines.py --head-dims 64 --json "$out/leaves.json" 2>&1 | tee "$out/leaves.log" | tail -12; fi
for d in 64 128; do
  if has bench$d; then python3 -m hyperattn.cli bench attention --head-dims $d --json "$out/attention-d$d.json" \
      --plot "$out/attention-d$d.png" 2>/dev/null | tee "$out/attention-d$d.txt" | tail -45; fi
done
if has profile; then python3 benchmarks/profile_attention.py --top 12 > "$out/profile-131k.txt" 2>&1; grep -A13 "^causal" "$out/profile-131k.txt"; fi
if has model; then python3 -m hyperattn.cli bench model --arch llama --json "$out/model-llama.json" \
    --plot "$out/model-llama.png" 2>/dev/null | tee "$out/model-llama.txt" | tail -12; fi
