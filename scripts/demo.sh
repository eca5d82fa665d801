#!/usr/bin/env bash
# Set everything up, load the demo routine and start the web UI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NUMEX_HOME=${NUMEX_HOME:-$PWD/var}
.venv/bin/numex db upgrade
.venv/bin/numex demo load
HOST=${NUMEX_HOST:-127.0.0.1}
PORT=${NUMEX_PORT:-5000}
exec .venv/bin/numex serve --host "$HOST" --port "$PORT"
