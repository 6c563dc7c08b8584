#!/usr/bin/env bash
# Runs every kvault test, optimized (model tests are 10-50x slower in debug builds).
# Installs what the tests need on a fresh machine (the CUDA compiler from PyPI for the kernel
# compile checks, the openai SDK, selenium and schemathesis from PyPI, Debian's chromium and
# chromium-driver); needs only a Rust toolchain, Python 3.11 with pip, gcc, and root for apt-get
# (or chromium already installed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d ../shared/models ]; then
  echo "error: the shared test assets are missing: expected $(cd .. && pwd)/shared/models" >&2
  exit 1
fi

if [ -x kernels/cuda/install-nvcc.sh ]; then
  KVAULT_NVCC="$(kernels/cuda/install-nvcc.sh | tail -n 1)"
  export KVAULT_NVCC
fi
# The OpenAI-SDK compatibility tests (cli/tests/serve_openai_sdk.rs) run in this venv.
KVAULT_TEST_PYTHON="$(scripts/install-openai-venv.sh | tail -n 1)"
export KVAULT_TEST_PYTHON
# The web-page test (headless Chromium through selenium) and the OpenAPI fuzz test
# (schemathesis) run with this venv (cli/tests/serve_web_ui.rs, cli/tests/serve_openapi.rs).
KVAULT_WEB_TEST_PYTHON="$(scripts/install-web-test-deps.sh | tail -n 1)"
export KVAULT_WEB_TEST_PYTHON

cargo test --release --workspace "$@"
