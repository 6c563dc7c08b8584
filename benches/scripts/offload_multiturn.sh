#!/usr/bin/env bash
# More conversations than the KV pool holds, with and without the offload tier: CONV documents
# (~500 SmolLM2 tokens each, from a public-domain text) each asked TURNS questions; the prompts
# are shuffled by `kvault bench serve`, so a conversation's next turn usually finds its document
# pushed out of a 120-block pool by the others. Prints bench serve's summary and the server's
# prefix-cache hit rate for: pool only, pool + RAM tier, pool + RAM + disk tier.
# Usage: benches/scripts/offload_multiturn.sh [CONV] [TURNS]   (KVAULT=path/to/kvault)
set -euo pipefail
CONV=${1:-12}
TURNS=${2:-3}
BIN=${KVAULT:-target/release/kvault}
MODEL=../shared/models/smollm2-135m-instruct
PORT=${PORT:-8413}
URL=http://127.0.0.1:$PORT
DATA=$(mktemp --suffix .json)
python3 - "$CONV" "$TURNS" "$DATA" <<'PY'
import json, sys
conv, turns, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
text = open("../shared/data/texts/sherlock_holmes.txt", encoding="utf-8").read()
entries = []
for c in range(conv):
    doc = text[50000 + c * 4000: 50000 + c * 4000 + 2000]
    for t in range(turns):
        q = f"\n\nQuestion {t + 1}: in one sentence, what happens in this passage{'?' * (t + 1)}"
        entries.append({"conversations": [{"from": "human", "value": doc + q}, {"from": "gpt", "value": "An answer of a few words here."}]})
json.dump(entries, open(out, "w"))
PY
run() {
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  "$BIN" serve --port "$PORT" --model "$MODEL" --served-model-name m --num-blocks 120 --max-model-len 1536 "$@" 2>"$dir.log" &
  local pid=$!
  until curl -sf "$URL/health" >/dev/null; do sleep 0.2; done
  echo "== $name"
  "$BIN" bench serve --base-url "$URL" --model m --tokenizer "$MODEL" --dataset-path "$DATA" \
    --num-prompts $((CONV * TURNS)) --output-len 16 --max-concurrency 3 --seed 1 2>&1 \
    | grep -E "Successful|Benchmark duration|Total input|Request throughput|Output token throughput|Total token throughput|Mean TTFT|P99 TTFT"
  curl -s "$URL/metrics" | awk '/^kvault:prefix_cache_queries_total/ {q=$2} /^kvault:prefix_cache_hits_total/ {h=$2}
    /^kvault:kv_offload_hits_total/ {print "  " $1 " " $2} END {printf "  prefix cache hit rate: %.1f%% (%d of %d prompt tokens)\n", 100*h/q, h, q}'
  kill -TERM "$pid"; wait "$pid" || true
  rm -rf "$dir" "$dir.log"
}
tier=$(mktemp -d)
run "pool only"
run "pool + RAM tier (1GiB)" --kv-offload-ram 1GiB
run "pool + RAM (256MiB) + disk tier" --kv-offload-ram 256MiB --kv-offload-dir "$tier" --kv-offload-disk 4GiB
rm -rf "$tier" "$DATA"
