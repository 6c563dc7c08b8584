#!/usr/bin/env python3
"""Serving throughput and latency of `kvault serve` next to llama.cpp's OpenAI-compatible server.

Both servers serve the same GGUF on this machine, one at a time (they would otherwise share the
cores), and the same `kvault bench serve` workloads run against each: batch 1; 8, 32 and 64
concurrent clients; and a Poisson sweep. Writes a markdown table, a PNG plot (output throughput
and p99 TTFT against load) and every raw result file to --out-dir.

llama.cpp comes from PyPI (`llama-cpp-python[server]`, built from source on install). The script
creates its virtualenv on first use; the build flags turn off AMX, which llama.cpp's native build
would otherwise select on CPUs that report it but where it runs slower than AVX-512 here.

    python3 benches/scripts/peer_serve.py \
        --gguf ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf

Needs a release build of kvault (`cargo build --release -p kvault`).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LLAMA_CPP_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
    "-DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)


def ensure_llama_cpp_venv(venv: Path) -> Path:
    python = venv / "bin/python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp.server"],
                                          capture_output=True).returncode == 0:
        return python
    print(f"installing llama-cpp-python[server] into {venv} (builds llama.cpp from source)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, CMAKE_ARGS=LLAMA_CPP_CMAKE_ARGS)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "llama-cpp-python[server]"], check=True, env=env)
    return python


def wait_ready(base_url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {base_url} not ready after {timeout_s} s")


def start_kvault(args, port: int) -> subprocess.Popen:
    cmd = [args.kvault, "serve", "--model", args.gguf, "--port", str(port),
           "--served-model-name", "model", "--max-num-seqs", "64",
           "--kv-cache-memory", args.kv_cache_memory, "--max-model-len", "2048"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_llama_cpp(args, python: Path, port: int) -> subprocess.Popen:
    cmd = [str(python), "-m", "llama_cpp.server", "--model", args.gguf, "--port", str(port),
           "--model_alias", "model", "--n_ctx", "2048", "--n_threads", str(args.threads),
           "--n_threads_batch", str(args.threads),
           # By default a new request interrupts the one being generated; a serving comparison
           # needs every request to run to completion (the server then serves them one by one).
           "--interrupt_requests", "False"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_llama_server(args, port: int) -> subprocess.Popen:
    """llama.cpp's own C++ server: continuous batching over --parallel slots sharing one context."""
    slots = max(args.concurrency)
    cmd = [args.llama_server, "--model", args.gguf, "--port", str(port), "--alias", "model",
           "--parallel", str(slots), "--ctx-size", str(slots * (args.input_len + args.output_len + 16)),
           "--threads", str(args.threads), "--threads-batch", str(args.threads), "--cont-batching"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def workloads(args):
    """(label, load value for the plot's x axis, bench serve flags)."""
    out = []
    for c in args.concurrency:
        n = max(args.min_prompts, args.prompts_per_client * c)
        out.append((f"concurrency {c}", c, ["--max-concurrency", str(c), "--num-prompts", str(n)]))
    for rate in args.rates:
        out.append((f"poisson {rate} req/s", rate,
                    ["--request-rate", str(rate), "--num-prompts", str(args.poisson_prompts)]))
    return out


def run_bench(args, base_url: str, flags, result_file: Path) -> dict:
    cmd = [args.kvault, "bench", "serve", "--base-url", base_url, "--endpoint", "/v1/completions",
           "--model", "model", "--tokenizer", args.gguf, "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--seed", "0", "--result-file", str(result_file), *flags]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    result = json.loads(result_file.read_text())
    # ignore_eos is a vLLM extension other servers may drop, so a request can end early at EOS.
    # Throughput counts the tokens actually produced, so the numbers stay comparable; say so.
    # (A server that sends no usage has its tokens counted by re-tokenizing the streamed text,
    # which can merge a few tokens across chunk boundaries: hence the 10% slack.)
    short = [r for r in result.get("requests", [])
             if r.get("success") and r.get("output_tokens", 0) < 0.9 * args.output_len]
    if short:
        print(f"note: {result_file.name}: {len(short)} requests ended before {args.output_len} tokens "
              "(the server stopped at EOS)", file=sys.stderr)
    return result


def metric(result: dict, key: str) -> float:
    value = result.get(key)
    if value is None:
        value = result.get("summary", {}).get(key)
    if value is None:
        raise SystemExit(f"result file has no {key!r}: keys {sorted(result)}")
    return float(value)


def write_table(rows, path: Path) -> str:
    lines = [
        "| workload | server | req/s | output tok/s | mean TTFT ms | p99 TTFT ms | mean TPOT ms | p99 ITL ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, server, r in rows:
        lines.append(
            f"| {label} | {server} | {metric(r, 'request_throughput'):.2f} | {metric(r, 'output_throughput'):.1f} "
            f"| {metric(r, 'mean_ttft_ms'):.0f} | {metric(r, 'p99_ttft_ms'):.0f} | {metric(r, 'mean_tpot_ms'):.1f} "
            f"| {metric(r, 'p99_itl_ms'):.1f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(rows, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, kind in enumerate(["concurrency", "poisson"]):
        for server, style in [("kvault", "o-"), ("llama.cpp", "s--"), ("llama-server", "^:")]:
            pts = sorted((x, r) for label, srv, r, x in rows if srv == server and label.startswith(kind))
            if not pts:
                continue
            xs = [x for x, _ in pts]
            axes[0][col].plot(xs, [metric(r, "output_throughput") for _, r in pts], style, label=server)
            axes[1][col].plot(xs, [metric(r, "p99_ttft_ms") / 1000 for _, r in pts], style, label=server)
        xlabel = "concurrent clients" if kind == "concurrency" else "request rate (req/s, Poisson)"
        axes[0][col].set_title(f"output throughput vs {xlabel}")
        axes[0][col].set_ylabel("output tok/s")
        axes[1][col].set_title(f"p99 TTFT vs {xlabel}")
        axes[1][col].set_ylabel("p99 TTFT (s)")
        for row in axes:
            row[col].set_xlabel(xlabel)
            row[col].grid(alpha=0.3)
            row[col].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--kvault", default=str(REPO / "target/release/kvault"))
    ap.add_argument("--llama-cpp-venv", default=str(Path.home() / ".cache/kvault/llama-cpp-venv"))
    ap.add_argument("--out-dir", default=str(REPO / "benches/results/peer_serve"))
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 64])
    ap.add_argument("--rates", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--min-prompts", type=int, default=8)
    ap.add_argument("--prompts-per-client", type=int, default=2)
    ap.add_argument("--poisson-prompts", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--kv-cache-memory", default="1GiB")
    ap.add_argument("--servers", nargs="*", default=["kvault", "llama.cpp"],
                    help="kvault, llama.cpp (llama-cpp-python[server]), llama-server (needs --llama-server)")
    ap.add_argument("--llama-server", help="path to llama.cpp's C++ llama-server binary (optional third peer)")
    args = ap.parse_args()
    args.gguf = str(Path(args.gguf).resolve())

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_llama_cpp_venv(Path(args.llama_cpp_venv)) if "llama.cpp" in args.servers else None
    rows = []
    for server in args.servers:
        port = {"kvault": 18000, "llama.cpp": 18001, "llama-server": 18002}[server]
        base_url = f"http://127.0.0.1:{port}"
        if server == "kvault":
            proc = start_kvault(args, port)
        elif server == "llama.cpp":
            proc = start_llama_cpp(args, python, port)
        else:
            proc = start_llama_server(args, port)
        try:
            wait_ready(base_url, proc)
            for label, x, flags in workloads(args):
                print(f"== {server}: {label}", file=sys.stderr)
                slug = label.replace(" ", "_").replace("/", "")
                result = run_bench(args, base_url, flags, out / f"{server}-{slug}.json")
                rows.append((label, server, result, x))
        finally:
            stop(proc)
    # Servers not run this time keep their results from an earlier run into the same directory.
    for server in ["kvault", "llama.cpp", "llama-server"]:
        if server in args.servers:
            continue
        for label, x, _ in workloads(args):
            slug = label.replace(" ", "_").replace("/", "")
            earlier = out / f"{server}-{slug}.json"
            if earlier.exists():
                rows.append((label, server, json.loads(earlier.read_text()), x))
    rows.sort(key=lambda r: (["kvault", "llama.cpp", "llama-server"].index(r[1]), r[0].split()[0], r[3]))
    table = write_table([(label, server, r) for label, server, r, _ in rows], out / "peer_serve.md")
    plot(rows, out / "peer_serve.png",
         f"{Path(args.gguf).name}: {args.input_len} prompt / {args.output_len} output tokens, {args.threads} threads")
    print(table)
    print(f"wrote {out / 'peer_serve.md'} and {out / 'peer_serve.png'}")


if __name__ == "__main__":
    main()
