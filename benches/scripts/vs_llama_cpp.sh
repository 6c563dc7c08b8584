#!/usr/bin/env bash
# kvault against llama.cpp (built by build-llama-cpp.sh) on the same GGUF, every row of the CPU-speed table in one
# run, one engine at a time, back to back:
#   prefill 128 and decode 128 at batch 1   bench latency --input-len 128 --output-len 128  | llama-bench -p 128 -n 128
#   prefill 4096 and decode at 4K depth     bench latency --input-len 4096 --output-len 64  | llama-bench -p 4096 / -d 4096 -n 64
#   batched 32 × (256 in, 128 out), total   bench throughput                                | llama-batched-bench -npl 32
#   serving 32 clients, output tok/s        bench serve against kvault serve               | against llama-server -np 32 -cb
# Usage: benches/scripts/vs_llama_cpp.sh [OUT_DIR]
#   env: REPS (iterations of the batch-1 rows, default 3), THREADS (default 2), KVAULT_FLAGS (extra flags for every
#   kvault command, e.g. "--matmul-precision exact"), SKIP_LONG=1 (no 4K rows), GGUF.
# Needs a release build (cargo build --release -p kvault). Prints a markdown table with kvault / llama.cpp ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-target/vs-llama-cpp}"
mkdir -p "$OUT"
REPS="${REPS:-3}"
THREADS="${THREADS:-2}"
GGUF="${GGUF:-../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}"
KV="${CARGO_TARGET_DIR:-target}/release/kvault"
# shellcheck disable=SC2206
EXTRA=(${KVAULT_FLAGS:-})
LBIN=$(benches/scripts/build-llama-cpp.sh | tail -1)
export LD_LIBRARY_PATH="$LBIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log() { echo "== $*" >&2; }

log "batch 1, 128 tokens"
"$KV" bench latency --model "$GGUF" "${EXTRA[@]}" --input-len 128 --output-len 128 --num-iters "$REPS" \
  --output-json "$OUT/kvault-latency-128.json" >&2
"$LBIN/llama-bench" -m "$GGUF" -t "$THREADS" -r "$REPS" -p 128 -n 128 -o json >"$OUT/llama-bench-128.json"

if [ "${SKIP_LONG:-0}" != 1 ]; then
  log "batch 1, 4096-token prompt"
  "$KV" bench latency --model "$GGUF" "${EXTRA[@]}" --input-len 4096 --output-len 64 --num-iters 2 --num-iters-warmup 0 \
    --max-model-len 4224 --output-json "$OUT/kvault-latency-4096.json" >&2
  "$LBIN/llama-bench" -m "$GGUF" -t "$THREADS" -r 2 -p 4096 -n 0 -o json >"$OUT/llama-bench-p4096.json"
  "$LBIN/llama-bench" -m "$GGUF" -t "$THREADS" -r 2 -p 0 -n 64 -d 4096 -o json >"$OUT/llama-bench-d4096.json"
fi

log "batched: 32 × (256 in, 128 out)"
"$KV" bench throughput --model "$GGUF" "${EXTRA[@]}" --input-len 256 --output-len 128 --num-prompts 32 --max-num-seqs 32 \
  --output-json "$OUT/kvault-throughput.json" >&2
"$LBIN/llama-batched-bench" -m "$GGUF" -t "$THREADS" -c $((32 * 384)) -b 2048 -ub 512 -npp 256 -ntg 128 -npl 32 \
  --output-format jsonl >"$OUT/llama-batched.jsonl" 2>"$OUT/llama-batched.log"

serve_bench() { # name url
  "$KV" bench serve --base-url "$2" --endpoint /v1/completions --model model --tokenizer "$GGUF" \
    --input-len 256 --output-len 128 --num-prompts 64 --max-concurrency 32 --seed 0 \
    --result-file "$OUT/serve-$1.json" >&2
}
wait_up() { # url pid
  for _ in $(seq 1 600); do
    curl -sf "$1/v1/models" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited before answering" >&2; return 1; }
    sleep 0.5
  done
  echo "server did not come up" >&2
  return 1
}
log "serving: 32 concurrent clients, 256 in, 128 out"
port=18431
"$KV" serve --model "$GGUF" "${EXTRA[@]}" --port $port --served-model-name model --max-num-seqs 32 >"$OUT/kvault-serve.log" 2>&1 &
pid=$!
wait_up "http://127.0.0.1:$port" $pid && serve_bench kvault "http://127.0.0.1:$port"
kill $pid; wait $pid 2>/dev/null || true
port=18432
"$LBIN/llama-server" -m "$GGUF" --port $port --alias model -np 32 -cb -c $((32 * 400)) -t "$THREADS" -tb "$THREADS" \
  >"$OUT/llama-server.log" 2>&1 &
pid=$!
wait_up "http://127.0.0.1:$port" $pid && serve_bench llama-server "http://127.0.0.1:$port"
kill $pid; wait $pid 2>/dev/null || true

python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
def lb(name, n_prompt, n_gen):
    runs = load(name) or []
    for r in runs:
        if r["n_prompt"] == n_prompt and r["n_gen"] == n_gen:
            return r["avg_ts"]
    return None
k128, k4k = load("kvault-latency-128.json"), load("kvault-latency-4096.json")
kt, ks, ls = load("kvault-throughput.json"), load("serve-kvault.json"), load("serve-llama-server.json")
batched = None
jl = out / "llama-batched.jsonl"
if jl.exists():
    for line in jl.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("pl") == 32:
                batched = r.get("speed")
def serve(r):
    if r is None:
        return None
    return r.get("output_throughput", r.get("summary", {}).get("output_throughput"))
rows = [
    ("prefill 128 tokens", k128 and k128["prefill_tokens_per_s"]["mean"], lb("llama-bench-128.json", 128, 0)),
    ("decode 128 tokens, batch 1", k128 and k128["decode_tokens_per_s"]["mean"], lb("llama-bench-128.json", 0, 128)),
    ("prefill 4096 tokens", k4k and k4k["prefill_tokens_per_s"]["mean"], lb("llama-bench-p4096.json", 4096, 0)),
    ("decode at 4K depth", k4k and k4k["decode_tokens_per_s"]["mean"], lb("llama-bench-d4096.json", 0, 64)),
    ("batched 32 × (256 in, 128 out), total tok/s", kt and kt["tokens_per_second"], batched),
    ("serving, 32 concurrent clients, output tok/s", serve(ks), serve(ls)),
]
print("| measure | kvault | llama.cpp | ratio |")
print("|---|---:|---:|---:|")
fmt = lambda v: "–" if v is None else f"{v:.1f}"
for name, a, b in rows:
    ratio = f"{a / b:.2f}×" if a and b else "–"
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
PY
