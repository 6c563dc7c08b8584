#!/usr/bin/env bash
# KV budgets against the full cache on SmolLM2-135M Q4_1, every policy in the same run:
#   1. how many 2K-token requests a 256 MiB KV pool runs at once (bench throughput);
#   2. batch-1 decode speed at 4K context (bench latency), budget 512;
#   3. serving 16 concurrent clients with 2K prompts on a 256 MiB pool (bench serve), budget 256.
# Usage: benches/scripts/kv_budget_bench.sh [OUT_DIR]   (needs a release build: cargo build --release -p kvault)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-target/kv-budget-bench}"
mkdir -p "$OUT"
BIN="${CARGO_TARGET_DIR:-target}/release/kvault"
GGUF=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
POLICIES=(full streaming h2o snapkv)
kv_flags() { # policy budget
  if [ "$1" = full ]; then echo ""; else echo "--kv-policy $1 --kv-budget $2"; fi
}

echo "== 1. concurrent 2K-token requests in a 256 MiB pool (budget 256)" | tee "$OUT/summary.txt"
for p in "${POLICIES[@]}"; do
  # shellcheck disable=SC2046
  "$BIN" bench throughput --model "$GGUF" --kv-cache-memory 256MiB --max-num-batched-tokens 512 \
    --input-len 2048 --output-len 128 --num-prompts 12 $(kv_flags "$p" 256) \
    --output-json "$OUT/throughput-$p.json" 2>/dev/null | tee -a "$OUT/summary.txt"
done

echo "== 2. batch-1 decode at 4K context (budget 512)" | tee -a "$OUT/summary.txt"
for p in "${POLICIES[@]}"; do
  # shellcheck disable=SC2046
  "$BIN" bench latency --model "$GGUF" --input-len 4096 --output-len 64 --num-iters 2 --num-iters-warmup 0 \
    $(kv_flags "$p" 512) --output-json "$OUT/latency-$p.json" 2>/dev/null | tee -a "$OUT/summary.txt"
done

echo "== 3. serving: 16 concurrent clients, 2K prompts, 128 output tokens, 256 MiB pool (budget 256)" | tee -a "$OUT/summary.txt"
for p in "${POLICIES[@]}"; do
  log="$OUT/serve-$p.log"
  # shellcheck disable=SC2046
  "$BIN" serve --model "$GGUF" --port 0 --kv-cache-memory 256MiB --max-num-batched-tokens 512 $(kv_flags "$p" 256) >"$log" 2>&1 &
  pid=$!
  url=""
  for _ in $(seq 1 300); do
    url=$(grep -o 'http://[0-9.:]*' "$log" | head -n 1 || true)
    if [ -n "$url" ] && curl -sf "$url/health" >/dev/null; then break; fi
    sleep 0.2
  done
  echo "-- $p" | tee -a "$OUT/summary.txt"
  "$BIN" bench serve --base-url "$url" --tokenizer "$GGUF" --num-prompts 16 --max-concurrency 16 \
    --input-len 2048 --output-len 128 --result-file "$OUT/serve-$p.json" 2>/dev/null \
    | grep -E "Successful requests|Output token throughput|P99 TTFT|Mean TTFT|Benchmark duration" | tee -a "$OUT/summary.txt"
  kill -TERM "$pid"; wait "$pid" || true
done
