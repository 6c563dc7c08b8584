#!/usr/bin/env bash
# Installs (once) what the web-page and OpenAPI tests need and prints, as the last line, the
# python of the virtualenv that has selenium and schemathesis:
#   - Debian's chromium + chromium-driver (headless browser; a browser that downloads its own
#     build cannot be installed on these machines), through apt-get when missing;
#   - selenium and schemathesis from PyPI in a venv.
# Idempotent: present tools and a venv that imports both packages are reused without network.
#
# Usage: PY="$(scripts/install-web-test-deps.sh | tail -n 1)"
set -euo pipefail

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: chromium and chromium-driver are missing; run as root or: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2
fi

VENV="${KVAULT_WEB_VENV:-$HOME/.cache/kvault/web-venv}"
PY="$VENV/bin/python"
SPECS=('selenium>=4.20,<5' 'schemathesis>=4.30,<5')

if [ -x "$PY" ] && "$PY" -c 'import selenium, schemathesis' >/dev/null 2>&1 && [ -x "$VENV/bin/schemathesis" ]; then
  echo "$PY"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV" >&2
"$PY" -m pip install --quiet --disable-pip-version-check "${SPECS[@]}" >&2
echo "$PY"
