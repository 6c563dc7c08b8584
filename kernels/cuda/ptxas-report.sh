#!/usr/bin/env bash
# Prints ptxas' resource use for every kernel in kernels/cuda/*.cu, for sm_80 and sm_90: registers
# per thread, static shared memory, stack, spills, and barriers, as a Markdown table.
# Dynamic shared memory is sized at launch (src/cuda/plan.rs, attention_smem_bytes), so ptxas
# cannot see it; the attention kernels use only dynamic shared memory.
#
# Same flags as the build (src/cuda/nvcc.rs), compiled to cubin so ptxas runs.
# Usage: kernels/cuda/ptxas-report.sh [arch...]      (default: sm_80 sm_90)
# nvcc: $KVAULT_NVCC, else the PyPI toolkit from kernels/cuda/install-nvcc.sh.
set -euo pipefail

DIR="$(cd "$(dirname "$0")" && pwd)"
NVCC="${KVAULT_NVCC:-$("$DIR/install-nvcc.sh" | tail -n 1)}"
ARCHS=("$@")
[[ ${#ARCHS[@]} -gt 0 ]] || ARCHS=(sm_80 sm_90)
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

echo "| source | kernel | arch | registers | static smem (B) | stack (B) | spill st/ld (B) | barriers |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for src in "$DIR"/*.cu; do
  stem="$(basename "$src" .cu)"
  for arch in "${ARCHS[@]}"; do
    if ! "$NVCC" -cubin "-arch=$arch" -std=c++17 -O3 -lineinfo --Werror all-warnings "-I$DIR" \
         -Xptxas -v -o "$SCRATCH/$stem.$arch.cubin" "$src" 2>"$SCRATCH/log"; then
      cat "$SCRATCH/log" >&2
      echo "ptxas-report.sh: nvcc failed on $stem.cu for $arch" >&2
      exit 1
    fi
    # ptxas prints, per entry: "Compiling entry function 'K' for 'sm_XX'", then
    # "N bytes stack frame, N bytes spill stores, N bytes spill loads", then
    # "Used N registers, used N barriers, N bytes smem, N bytes cmem[0]" (smem/barriers only if used).
    awk -v src="$stem.cu" -v arch="$arch" '
      function flush() {
        if (name != "") printf "| %s | %s | %s | %s | %s | %s | %s/%s | %s |\n", src, name, arch, regs, smem, stack, sst, sld, bars
      }
      /Compiling entry function/ {
        flush()
        name = $0; sub(/.*Compiling entry function \047/, "", name); sub(/\047.*/, "", name)
        regs = "?"; smem = 0; stack = 0; sst = 0; sld = 0; bars = 0
      }
      /bytes stack frame/ {
        for (i = 1; i <= NF; i++) {
          if ($(i+1) == "bytes" && $(i+2) == "stack") stack = $i
          if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /^stores/) sst = $i
          if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /^loads/) sld = $i
        }
      }
      /Used [0-9]+ registers/ {
        for (i = 1; i <= NF; i++) {
          if ($(i+1) ~ /^registers/) regs = $i
          if ($(i+1) ~ /^barriers/) bars = $i
          if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i
        }
      }
      END { flush() }
    ' "$SCRATCH/log"
  done
done
