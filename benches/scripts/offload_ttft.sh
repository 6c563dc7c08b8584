#!/usr/bin/env bash
# TTFT of a ~2K-token prompt through `kvault serve` (SmolLM2-135M Q4_1): cold, pool hit, RAM-tier
# hit (after two other prompts pushed it out of a 200-block pool), and disk-tier hit after a
# restart on the same directory. TTFT = the time of a max_tokens=1 completion (prefill + one
# sampled token). Prints one line per case per round: case, seconds, cached tokens. With WARMUP=1
# each fresh server first answers a short unrelated prompt, so cold and disk-hit times exclude
# the first request's one-off costs (KV pool pages touched for the first time, thread start-up).
# Usage: benches/scripts/offload_ttft.sh [ROUNDS]   (KVAULT=path/to/kvault to pick a binary)
set -euo pipefail
ROUNDS=${1:-3}
BIN=${KVAULT:-target/release/kvault}
MODEL=../shared/models/smollm2-135m-instruct
TEXT=../shared/data/texts/moby_dick.txt
PORT=${PORT:-8411}
URL=http://127.0.0.1:$PORT

start() {
  "$BIN" serve --port "$PORT" --model "$MODEL" --served-model-name m --num-blocks 200 --max-model-len 3000 \
    --kv-offload-ram 1GiB --kv-offload-dir "$1" --kv-offload-disk 4GiB 2>"$1.log" &
  PID=$!
  until curl -sf "$URL/health" >/dev/null; do sleep 0.2; done
  if [ "${WARMUP:-0}" = 1 ]; then
    curl -s -o /dev/null -H 'content-type: application/json' -d '{"model":"m","prompt":"Hello there.","max_tokens":1}' "$URL/v1/completions"
  fi
}

# Prompt number $1: 8600 characters (~2K SmolLM2 tokens) of Moby Dick.
prompt() { tail -c +$((100000 + $1 * 20000)) "$TEXT" | head -c 8600 | jq -Rs .; }

ttft() {
  local out; out=$(mktemp)
  local t; t=$(curl -s -o "$out" -w '%{time_total}' -H 'content-type: application/json' \
    -d "{\"model\":\"m\",\"prompt\":$(prompt "$1"),\"max_tokens\":1,\"temperature\":0}" "$URL/v1/completions")
  echo "$2 $t $(jq -r '.usage.prompt_tokens_details.cached_tokens // 0' "$out") of $(jq -r .usage.prompt_tokens "$out")"
  rm -f "$out"
}

disk_blocks() { curl -s "$URL/metrics" | awk '/^kvault:kv_offload_blocks\{tier="disk"\}/ {print $2}'; }

for r in $(seq 1 "$ROUNDS"); do
  dir=$(mktemp -d)
  base=$((r * 3))
  start "$dir"
  ttft "$base" cold
  ttft "$base" pool_hit
  ttft $((base + 1)) other
  ttft $((base + 2)) other
  ttft "$base" ram_hit
  # Wait until the disk tier has published the three prompts' blocks, then restart.
  until [ "$(disk_blocks)" -ge 370 ] 2>/dev/null; do sleep 0.2; done
  kill -TERM "$PID"; wait "$PID" || true
  start "$dir"
  ttft "$base" disk_hit_after_restart
  kill -TERM "$PID"; wait "$PID" || true
  rm -rf "$dir" "$dir.log"
done
