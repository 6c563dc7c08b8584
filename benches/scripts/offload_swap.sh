#!/usr/bin/env bash
# Swap vs recompute preemption under memory pressure, same workload: N random prompts sent at
# once to a server whose 48-block pool cannot hold them all (aggressive admission, so requests
# are preempted as they grow). Prints bench serve's throughput and TTFT lines and the server's
# preemption and swap counters for --preemption recompute, swap and auto.
# Usage: benches/scripts/offload_swap.sh [N]   (KVAULT=path/to/kvault)
set -euo pipefail
N=${1:-16}
BIN=${KVAULT:-target/release/kvault}
MODEL=../shared/models/smollm2-135m-instruct
PORT=${PORT:-8414}
URL=http://127.0.0.1:$PORT
for mode in recompute swap auto; do
  log=$(mktemp)
  "$BIN" serve --port "$PORT" --model "$MODEL" --served-model-name m --num-blocks 48 --max-model-len 512 \
    --scheduler aggressive --kv-offload-ram 1GiB --preemption "$mode" 2>"$log" &
  pid=$!
  until curl -sf "$URL/health" >/dev/null; do sleep 0.2; done
  echo "== --preemption $mode"
  "$BIN" bench serve --base-url "$URL" --model m --tokenizer "$MODEL" --num-prompts "$N" --input-len 200 \
    --output-len 96 --seed 2 --temperature 0 2>&1 \
    | grep -E "Benchmark duration|Request throughput|Output token throughput|Total token throughput|Mean TTFT|P99 TTFT"
  curl -s "$URL/metrics" | grep -E '^kvault:(num_preemptions_total|kv_swap_outs_total|kv_swap_ins_total|prompt_tokens_total) ' | sed 's/^/  /'
  kill -TERM "$pid"; wait "$pid" || true
  rm -f "$log"
done
