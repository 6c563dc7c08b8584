#!/usr/bin/env bash
# Creates (once) the virtualenv the OpenAI-SDK compatibility tests run in, and prints its python
# as the last line of output. Idempotent: a venv that already imports a suitable `openai` is
# reused without touching the network.
#
# Usage: PY="$(scripts/install-openai-venv.sh | tail -n 1)"
set -euo pipefail

VENV="${KVAULT_OPENAI_VENV:-$HOME/.cache/kvault/openai-venv}"
PY="$VENV/bin/python"
# The range the tests are written against (the v1 client API).
SPEC='openai>=1.50,<3'

if [ -x "$PY" ] && "$PY" - "$SPEC" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
major, minor = (int(x) for x in version("openai").split(".")[:2])
sys.exit(0 if (major, minor) >= (1, 50) and major < 3 else 1)
PYEOF
then
  echo "$PY"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV" >&2
"$PY" -m pip install --quiet --disable-pip-version-check "$SPEC" >&2
echo "$PY"
