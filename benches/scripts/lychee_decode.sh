#!/usr/bin/env bash
# LycheeDecode decode speed, one run: batch-1 decode of 64 tokens after a 4K and an 8K prompt,
# `full` against `lychee` at budgets 256/512/1024 (the shipped SmolLM2 head roles), then the same
# at 4K with an int8 KV cache, then llama.cpp's decode at the same depths (llama-bench -d, f16 KV,
# flash attention; built once by build-llama-cpp.sh, cached). Needs `cargo build --release -p kvault`.
# Env: KVAULT (binary, default target/release/kvault), GGUF (default SmolLM2-135M-Instruct Q4_1),
# ROLES (default the shipped roles), CONTEXTS (default "4096 8000").
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(benches/scripts/build-llama-cpp.sh | tail -n 1)"
K="${KVAULT:-${CARGO_TARGET_DIR:-target}/release/kvault}"
M="${GGUF:-../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
R="${ROLES:-gates/smollm2-135m-instruct/lychee_heads.safetensors}"
run() { # input-len, extra flags…
  local len=$1
  shift
  "$K" bench latency --model "$M" --head-roles "$R" --input-len "$len" --output-len 64 --num-iters 1 \
    --num-iters-warmup 0 "$@" | grep tg64
}
for len in ${CONTEXTS:-4096 8000}; do
  run "$len"
  for b in 256 512 1024; do
    run "$len" --kv-policy lychee --kv-budget $b
  done
done
run 4096 --kv-cache-dtype int8
run 4096 --kv-cache-dtype int8 --kv-policy lychee --kv-budget 512
for len in ${CONTEXTS:-4096 8000}; do
  "$BIN/llama-bench" -m "$M" -t 2 -p 0 -n 64 -d "$len" -fa on -r 1 -o md | grep tg64
done
