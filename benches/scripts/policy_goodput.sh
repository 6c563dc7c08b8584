#!/usr/bin/env bash
# Real goodput of each admission policy on this machine: `kvault serve` with a KV budget small
# enough that memory is the bottleneck, driven by `kvault bench serve` closed-loop clients, with
# an SLA the unconstrained server meets at light load. Prints each policy's goodput line and its
# preemption count from /metrics; results land in ${OUT:-/tmp/policy_goodput}.
#
#   cargo build --release -p kvault && benches/scripts/policy_goodput.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
KVAULT=${KVAULT:-target/release/kvault}
OUT=${OUT:-/tmp/policy_goodput}
PORT=${PORT:-18100}
SLA_TTFT_MS=${SLA_TTFT_MS:-15000}
SLA_MAX_ITL_MS=${SLA_MAX_ITL_MS:-3000}
mkdir -p "$OUT"
for policy in aggressive conservative past-future; do
  "$KVAULT" serve --model "$MODEL" --port "$PORT" --served-model-name model --scheduler "$policy" \
    --num-blocks 40 --max-num-batched-tokens 256 \
    --sla-ttft-ms "$SLA_TTFT_MS" --sla-max-itl-ms "$SLA_MAX_ITL_MS" 2>"$OUT/serve-$policy.log" &
  server=$!
  for _ in $(seq 120); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 1; done
  "$KVAULT" bench serve --base-url "http://127.0.0.1:$PORT" --model model --tokenizer "$MODEL" \
    --closed-loop-clients 8 --num-prompts 24 --input-len 128 --output-len 128 --range-ratio 0.5 --seed 1 \
    --goodput "ttft:$SLA_TTFT_MS" "max_itl:$SLA_MAX_ITL_MS" --result-file "$OUT/$policy.json" >"$OUT/bench-$policy.txt"
  curl -s "localhost:$PORT/metrics" | grep -E '^kvault:(num_preemptions_total|good_requests_total|sla_checked_requests_total)' >"$OUT/metrics-$policy.txt"
  kill -TERM "$server"
  wait "$server"
  echo "== $policy"
  grep -E 'Request (throughput|goodput)' "$OUT/bench-$policy.txt"
  cat "$OUT/metrics-$policy.txt"
done
