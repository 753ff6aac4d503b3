#!/usr/bin/env bash
# Run the whole test suite with the venv that tools/install.sh made. Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLOWSSL_VENV:-$REPO/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[flowssl test] no virtual environment at $VENV; run 'bash tools/install.sh' first" >&2
  exit 1
fi
cd "$REPO"
exec "$VENV/bin/python" -m pytest "$@"
