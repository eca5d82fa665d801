#!/usr/bin/env bash
# Set up and run every test: lint, the suite on SQLite, then the suite again on a real
# PostgreSQL 15 server started here on a loopback port (installed from Debian if missing)
# and stopped afterwards. Browser tests drive Debian's chromium (installed if missing).
# Extra arguments go to pytest (e.g. -k sign_off).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing Debian's chromium for the browser tests"
  apt_install chromium
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "==> installing PostgreSQL 15 from Debian"
  apt_install postgresql-15 || apt_install postgresql
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -50; exit 1; }

# pytest exits 5 when a selection collects nothing: not a failure of the code.
run_pytest() {
  local rc=0
  .venv/bin/python -m pytest "$@" || rc=$?
  if [ "$rc" = 5 ]; then echo "(no tests selected)"; return 0; fi
  return "$rc"
}

echo "==> tests on SQLite"
run_pytest "$@"

echo "==> tests on PostgreSQL ($pg_bin)"
pgdir=$(mktemp -d /tmp/numex-pg.XXXXXX)
port=${NUMEX_TEST_PG_PORT:-55432}
pg_user=postgres
run_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$pgdir" || pg_user=$(id -un)
stop_pg() { run_pg "'$pg_bin/pg_ctl' -D '$pgdir/data' -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$pgdir"; }
trap stop_pg EXIT
run_pg "'$pg_bin/initdb' -D '$pgdir/data' -A trust -U $pg_user -E UTF8 >/dev/null"
run_pg "'$pg_bin/pg_ctl' -D '$pgdir/data' -l '$pgdir/log' -w -o \"-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" start >/dev/null"
NUMEX_TEST_POSTGRES_URL="postgresql+psycopg://$pg_user@127.0.0.1:$port/postgres" run_pytest "$@"
