#!/usr/bin/env bash
# Install the pinned test environment into .venv and run the whole suite.
# Idempotent; needs only python3 (3.10+) and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's and setuptools' chatter (the editable-install notice) goes to a log, shown on failure
install_log=$(mktemp)
if ! { .venv/bin/python -m pip install --quiet --upgrade pip \
       && .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"; } \
     >"$install_log" 2>&1; then
  cat "$install_log" >&2
  echo "test.sh: installing the test environment failed (output above)" >&2
  exit 1
fi
rm -f "$install_log"

# PostgreSQL server binaries: tests/support/pg.py starts a private server (initdb into a temp dir, on
# 127.0.0.1) for the PostgreSQL store and durability tests. In CI they fail without it.
have_pg() {
  local d
  for d in "${RLLM_PG_BINDIR:-}" "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin \
           /usr/local/pgsql/bin /usr/local/bin /usr/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then return 0; fi
  done
  return 1
}
if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing the PostgreSQL server (apt-get install postgresql)" >&2
    # only the binaries are needed: ask the package not to create (and start) a system cluster
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "test.sh: PostgreSQL server binaries (initdb, postgres) not found and cannot be installed" \
         "here (needs root and apt-get). Install them (e.g. sudo apt-get install postgresql) or set" \
         "RLLM_PG_BINDIR; without them the PostgreSQL tests are skipped, and fail in CI." >&2
  fi
fi

# The other servers and tools the tests start, from the system's packages, when missing:
# redis-server (tests/system/test_fleet.py: LiteLLM's Redis-backed session affinity), chromium
# (tests/system/test_viewer.py drives it headless through Playwright's Python package with
# executable_path: Playwright's own browser download is never used), curl (the README's quick
# start, run by tests/system/test_quick_start.py).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${missing[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test.sh: ${missing[*]} not found and cannot be installed here (needs root and apt-get);" \
         "the tests that need them are skipped here, and fail in CI." >&2
  fi
fi

# the property tests run 10,000 examples here (a plain `pytest tests/unit` runs a few hundred)
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-thorough}"
exec .venv/bin/python -m pytest "$@"
