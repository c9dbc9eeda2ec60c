#!/usr/bin/env bash
# On the GPU machine (staged CLI in /tmp/xlstm, XLSTM_CUSTOMOPS_PATH set): bf16 exports of every fixture and the shipped
# model, with the standard-op cell and with our custom ops, against transformers' fp32 references on the CUDA EP.
# Prints the worst logit error and whether greedy tokens are equal. Usage: bash tools/gpu/check_bf16.sh OUTDIR
set -uo pipefail
out=${1:?output folder}; mkdir -p "$out"
cli=/tmp/xlstm/.gpu/cli/xlstm-onnx
for k in onnx custom; do
  for d in tests/fixtures/*/ models/kjv-xlstm/; do
    m=$(basename "$d"); [ -f "$d/reference.safetensors" ] || continue
    rm -rf "/tmp/bf/$k/$m"
    "$cli" export --checkpoint "$d" --output "/tmp/bf/$k/$m" --dtype bf16 --mlstm-kernels "$k" > /dev/null 2>&1 || { echo "$k $m: export failed" >> "$out/bf16.txt"; continue; }
    "$cli" verify --model "/tmp/bf/$k/$m" --reference "$d/reference.safetensors" --device cuda --atol 1e9 2>/dev/null > "/tmp/bf/$k-$m.log"
    worst=$(grep -E ' logits ' "/tmp/bf/$k-$m.log" | awk '{print $4}' | sort -g | tail -1)
    greedy=$(grep greedy_ids "/tmp/bf/$k-$m.log" | awk '{print $6" differing ids; "$8" "$9" "$10" "$11}')   # $7: rel L2 ("-" for ids)
    echo "bf16 $k $m: worst |logit error| $worst; greedy: $greedy" >> "$out/bf16.txt"
  done
done
cat "$out/bf16.txt"
