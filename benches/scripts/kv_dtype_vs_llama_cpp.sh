#!/usr/bin/env bash
# KV cache dtypes against llama.cpp's KV types, one run: batch-1 decode of 128 tokens and 64 tokens
# decoded at 4K context, kvault (f32, f16, int8 caches) then llama-bench (f16 and q8_0 KV).
# Builds llama.cpp once (build-llama-cpp.sh, cached). Needs `cargo build --release -p kvault`.
# Env: KVAULT (binary, default target/release/kvault), GGUF (default SmolLM2-135M-Instruct Q4_1).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="$(benches/scripts/build-llama-cpp.sh | tail -n 1)"
K="${KVAULT:-${CARGO_TARGET_DIR:-target}/release/kvault}"
M="${GGUF:-../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
for d in f32 f16 int8; do
  "$K" bench latency --model "$M" --input-len 128 --output-len 128 --num-iters 3 --kv-cache-dtype $d
done
for t in f16 q8_0; do
  "$BIN/llama-bench" -m "$M" -t 2 -p 0 -n 128 -fa on -ctk $t -ctv $t -r 3 -o md
done
for d in f32 f16 int8; do
  "$K" bench latency --model "$M" --input-len 4096 --output-len 64 --num-iters 1 --num-iters-warmup 0 --kv-cache-dtype $d
done
for t in f16 q8_0; do
  "$BIN/llama-bench" -m "$M" -t 2 -p 0 -n 64 -d 4096 -fa on -ctk $t -ctv $t -r 1 -o md
done
