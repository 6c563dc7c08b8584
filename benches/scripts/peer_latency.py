#!/usr/bin/env python3
"""Batch-1 prefill and decode speed of kvault next to llama.cpp on the same GGUF, in one run.

llama.cpp comes from PyPI's llama-cpp-python (built from source on install):
    python3 -m venv .venv-peer && .venv-peer/bin/pip install llama-cpp-python
    .venv-peer/bin/python benches/scripts/peer_latency.py --gguf ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf

Both engines get the same 128-token prompt (token ids from the text, re-used as given) and
generate 128 tokens greedily without stopping at EOS, on the same number of threads.
"""
import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def prompt_text(n_tokens: int, tokenize) -> str:
    text = (REPO.parent / "shared/data/texts/pride_and_prejudice.txt").read_text()[5000:20000]
    words = text.split()
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix with at most n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(tokenize(" ".join(words[:mid]))) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def llama_cpp_run(llm, prompt: str, n_new: int, reps: int):
    toks = llm.tokenize(prompt.encode(), add_bos=False)
    best = None
    for _ in range(reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        t1 = time.perf_counter()
        for _ in range(n_new):
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
        t2 = time.perf_counter()
        r = (len(toks) / (t1 - t0), n_new / (t2 - t1))
        best = r if best is None or r[1] > best[1] else best
    return len(toks), best


def kvault_run(binary: str, gguf: str, prompt: str, n_new: int, reps: int):
    best = None
    n_prompt = None
    for _ in range(reps):
        out = subprocess.run(
            [binary, "generate", prompt, "--model", gguf, "--temperature", "0", "--max-tokens", str(n_new),
             "--ignore-eos", "--num-blocks", "128"],
            capture_output=True, text=True, check=True,
        )
        m = re.search(r"prompt (\d+) tokens, time to first token ([\d.]+) ms \(([\d.]+) tok/s prefill\); "
                      r"generated (\d+) tokens, ([\d.]+) tok/s decode", out.stderr)
        if not m:
            raise SystemExit(f"unexpected kvault stats: {out.stderr}")
        n_prompt = int(m.group(1))
        r = (float(m.group(3)), float(m.group(5)))
        best = r if best is None or r[1] > best[1] else best
    return n_prompt, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--kvault", default=str(REPO / "target/release/kvault"))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    from llama_cpp import Llama

    # (llama.cpp's vocab_only mode crashed here; one full instance serves both purposes.)
    llm = Llama(model_path=args.gguf, n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, verbose=False)
    prompt = prompt_text(args.prompt_tokens, lambda s: llm.tokenize(s.encode(), add_bos=False))
    n_l, (pp_l, tg_l) = llama_cpp_run(llm, prompt, args.new_tokens, args.reps)
    n_k, (pp_k, tg_k) = kvault_run(args.kvault, args.gguf, prompt, args.new_tokens, args.reps)
    rows = [("kvault", n_k, pp_k, tg_k), ("llama.cpp (llama-cpp-python)", n_l, pp_l, tg_l)]
    print(f"| engine | prompt tokens | prefill tok/s | decode tok/s ({args.new_tokens} new) |")
    print("|---|---:|---:|---:|")
    for name, n, pp, tg in rows:
        print(f"| {name} | {n} | {pp:.1f} | {tg:.1f} |")
    print(f"kvault / llama.cpp: prefill {pp_k / pp_l:.2f}x, decode {tg_k / tg_l:.2f}x "
          f"(best of {args.reps}, {args.threads} threads)")
    print(json.dumps({"kvault": {"prefill": pp_k, "decode": tg_k}, "llama_cpp": {"prefill": pp_l, "decode": tg_l}}))


if __name__ == "__main__":
    main()
