#!/usr/bin/env bash
# Create .venv and install numex with its test tools; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.numex-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing numex and its dependencies into .venv"
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null
  .venv/bin/python -m pip install -q --upgrade pip uv
  # uv resolves and installs in seconds; plain pip is the fallback.
  if ! VIRTUAL_ENV="$PWD/.venv" .venv/bin/uv pip install -q -e ".[test]"; then
    .venv/bin/python -m pip install -q -e ".[test]"
  fi
  echo "$want" > "$stamp"
fi
