#!/usr/bin/env bash
# Builds kvault with the `cuda` feature so that the binary still starts on a machine without an
# NVIDIA driver (the CUDA libraries are opened at run time, not linked).
#
# Why a script: candle-core 0.11.1's `cuda` feature hard-wires cudarc's `dynamic-linking`, which
# puts libcuda, libnvrtc, libcublas, libcublasLt and libcurand into the binary's DT_NEEDED list
# (the loader refuses to start it without a driver, and the link needs all five libraries).
# cudarc cannot have `dynamic-loading` on at the same time (its build script panics), and
# candle-core offers no switch. So this script:
#   1. copies candle-core's registry source under the target dir and flips only its Cargo.toml
#      feature `dynamic-linking` -> `dynamic-loading` (no third-party code is committed);
#   2. builds a snapshot of the work tree (tracked + untracked, not ignored files; mtimes kept,
#      so rebuilds stay incremental) with `[patch.crates-io] candle-core = <copy>`; the patch
#      rewrites Cargo.lock, so it must not run in the real tree, where it would flip the lock
#      under everyone else's builds;
#   3. links the CUDA runtime statically (candle-kernels asks for `-lcudart`; a directory holding
#      only `libcudart.a` -> the toolkit's libcudart_static.a satisfies it): the static runtime
#      also opens libcuda lazily, on the first runtime call.
# The default build (`cargo build`) is untouched and never links CUDA.
#
# Usage:
#   scripts/build-cuda.sh                       release build of the kvault binary; prints its path
#   scripts/build-cuda.sh --check               the same, then proves the binary starts here: on a
#                                               machine without a driver, `kvault doctor` says so,
#                                               `generate --device cuda:0` fails cleanly (exit 1),
#                                               and `generate` on the CPU works
#   scripts/build-cuda.sh test -p kvault-kernels --features cuda   any cargo command, same setup
# Environment:
#   CARGO_TARGET_DIR   default: <repo>/../target-cuda (never the shared target dir: flipping
#                      candle's features there would rebuild everyone's workspace)
#   KVAULT_NVCC        nvcc to use (default: kernels/cuda/install-nvcc.sh, nvcc 13.0 from PyPI)
#   CUDA_COMPUTE_CAP   arch of candle's own kernels (default 80; PTX for sm_80 JIT-compiles on
#                      newer GPUs); kvault's kernels are always built for sm_80 and sm_90
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(dirname "$ROOT")/target-cuda}"
mkdir -p "$CARGO_TARGET_DIR"
export CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"
case "$CARGO_TARGET_DIR/" in
  "$ROOT/target/"*) echo "build-cuda.sh: CARGO_TARGET_DIR must not be the shared target dir ($ROOT/target)" >&2; exit 1 ;;
esac

# --- the CUDA toolkit (nvcc, headers, static runtime) ------------------------------------------
if [[ -z "${KVAULT_NVCC:-}" ]]; then
  KVAULT_NVCC="$("$ROOT/kernels/cuda/install-nvcc.sh" | tail -n 1)"
fi
export KVAULT_NVCC
CUDA_BIN="$(cd "$(dirname "$KVAULT_NVCC")" && pwd)"
CUDA_ROOT="$(dirname "$CUDA_BIN")"
CUDART_STATIC="$(find "$CUDA_ROOT/lib" "$CUDA_ROOT/lib64" -name libcudart_static.a 2>/dev/null | head -n 1 || true)"
if [[ -z "$CUDART_STATIC" ]]; then
  echo "build-cuda.sh: no libcudart_static.a under $CUDA_ROOT (install nvidia-cuda-runtime)" >&2
  exit 1
fi
# cudarc's build script runs `nvcc --version` from PATH to pick its CUDA API version, and
# candle-kernels' build (cudaforge) looks for nvcc on PATH as well.
export PATH="$CUDA_BIN:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"

LINK_DIR="$CARGO_TARGET_DIR/kvault-cuda-link"
mkdir -p "$LINK_DIR"
ln -sfn "$CUDART_STATIC" "$LINK_DIR/libcudart.a"
# Only the static runtime may be found: with a libcudart.so beside it, -lcudart would link the
# shared one and the binary would need it at start-up.
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK_DIR"

# --- patched candle-core ------------------------------------------------------------------------
CANDLE_VERSION="$(awk '/^name = "candle-core"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")"
if [[ -z "$CANDLE_VERSION" ]]; then
  echo "build-cuda.sh: candle-core not found in $ROOT/Cargo.lock" >&2
  exit 1
fi
REGISTRY_SRC="${CARGO_HOME:-$HOME/.cargo}/registry/src"
find_candle() { find "$REGISTRY_SRC" -maxdepth 2 -type d -name "candle-core-$CANDLE_VERSION" 2>/dev/null | head -n 1; }
CANDLE_SRC="$(find_candle)"
if [[ -z "$CANDLE_SRC" ]]; then
  (cd "$ROOT" && cargo fetch --locked)
  CANDLE_SRC="$(find_candle)"
fi
if [[ -z "$CANDLE_SRC" ]]; then
  echo "build-cuda.sh: candle-core $CANDLE_VERSION is not in $REGISTRY_SRC even after cargo fetch" >&2
  exit 1
fi
PATCHED="$CARGO_TARGET_DIR/kvault-patched/candle-core-$CANDLE_VERSION"
if [[ ! -f "$PATCHED/.kvault-patched" ]]; then
  rm -rf "$PATCHED"
  mkdir -p "$(dirname "$PATCHED")"
  cp -a "$CANDLE_SRC" "$PATCHED"
  # Exactly one occurrence, inside cudarc's feature list; anything else means candle changed
  # and this script must be re-checked.
  if [[ "$(grep -c '"dynamic-linking"' "$PATCHED/Cargo.toml")" != 1 ]]; then
    echo "build-cuda.sh: expected one \"dynamic-linking\" in $CANDLE_SRC/Cargo.toml; re-check the patch" >&2
    exit 1
  fi
  sed -i 's/"dynamic-linking"/"dynamic-loading"/' "$PATCHED/Cargo.toml"
  touch "$PATCHED/.kvault-patched"
fi

# --- work-tree snapshot -------------------------------------------------------------------------
# Under <target>/kvault-src/workspace, with ../shared next to it so tests find the shared assets
# the same way they do in the real tree, and .git linked read-only for the version stamp.
SNAP_PARENT="$CARGO_TARGET_DIR/kvault-src"
SNAP="$SNAP_PARENT/workspace"
rm -rf "$SNAP"
mkdir -p "$SNAP"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done \
  | tar --null -T - -cf -) | tar -xpf - -C "$SNAP"
ln -sfn "$ROOT/.git" "$SNAP/.git"
ln -sfn "$(dirname "$ROOT")/shared" "$SNAP_PARENT/shared"

cd "$SNAP"
PATCH_ARG="patch.crates-io.candle-core.path=\"$PATCHED\""
if [[ $# -gt 0 && "$1" != "--check" ]]; then
  exec cargo "$@" --config "$PATCH_ARG"
fi

cargo build --release -p kvault --features cuda --config "$PATCH_ARG"
BIN="$CARGO_TARGET_DIR/release/kvault"
# The whole point: no CUDA library may be a load-time dependency.
if readelf -d "$BIN" | grep -E 'NEEDED.*(cuda|nvrtc|cublas|curand)'; then
  echo "build-cuda.sh: $BIN links a CUDA library at load time (see above)" >&2
  exit 1
fi

if [[ "${1:-}" == "--check" ]]; then
  fail() { echo "build-cuda.sh --check: $*" >&2; exit 1; }
  doctor="$("$BIN" doctor)" || fail "kvault doctor failed"
  echo "$doctor"
  grep -q "^cuda: built in" <<<"$doctor" || fail "doctor does not report CUDA as built in"
  if grep -qE "^  libcuda +NOT FOUND" <<<"$doctor"; then
    # No driver here: the GPU path must be a clean error, the CPU path must work.
    set +e
    err="$("$BIN" generate --device cuda:0 --max-tokens 4 "Once upon a time" 2>&1 >/dev/null)"
    code=$?
    set -e
    echo "generate --device cuda:0 -> exit $code: $err"
    [[ $code -eq 1 ]] || fail "expected exit status 1, got $code"
    grep -q "no NVIDIA driver found" <<<"$err" || fail "the error does not say that the driver is missing"
    if grep -q "panicked" <<<"$err"; then fail "panic instead of an error"; fi
  else
    echo "a CUDA driver is present: run the device tests with scripts/build-cuda.sh test --release -p kvault-kernels --features cuda"
  fi
  out="$("$BIN" generate --max-tokens 16 "Once upon a time")" || fail "generate on the CPU failed"
  [[ -n "$out" ]] || fail "generate on the CPU printed nothing"
  echo "generate (cpu): $out"
  echo "build-cuda.sh --check: ok"
fi
echo "$BIN"
