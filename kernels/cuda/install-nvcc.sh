#!/usr/bin/env bash
# Installs nvcc 13.0 (+ NVRTC, runtime headers, crt headers, NVVM) from PyPI into a venv at a
# fixed place, so CI and developers without a CUDA toolkit can compile kvault's kernels.
# Idempotent: a second run with everything present only prints the nvcc path.
# Usage: kernels/cuda/install-nvcc.sh            (prints the nvcc path on the last line)
#        KVAULT_CUDA_VENV=/some/dir kernels/cuda/install-nvcc.sh
set -euo pipefail

VENV="${KVAULT_CUDA_VENV:-$HOME/.cache/kvault/cuda-venv}"
PACKAGES=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-cccl==13.0.*"   # <nv/target>, needed by cuda_fp16.h (not pulled in by nvcc itself)
)

find_nvcc() {
  { find "$VENV" -path "*/nvidia/*/bin/nvcc" -type f 2>/dev/null || true; } | head -n 1
}

# Complete = nvcc plus the CCCL headers cuda_fp16.h needs (an older venv may lack the latter).
complete() {
  local nvcc="$1"
  [[ -n "$nvcc" && -e "$(dirname "$nvcc")/../include/nv/target" ]]
}

NVCC="$(find_nvcc)"
if ! complete "$NVCC"; then
  PY="${PYTHON:-python3}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
  NVCC="$(find_nvcc)"
fi

if ! complete "$NVCC"; then
  echo "install-nvcc.sh: pip finished but no complete nvcc (with include/nv/target) under $VENV" >&2
  exit 1
fi
chmod +x "$NVCC" 2>/dev/null || true
echo "$NVCC"
