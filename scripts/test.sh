#!/usr/bin/env bash
# Install the pinned test environment into .venv and run the whole suite.
# Idempotent; needs only python3 (3.10+) and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
exec .venv/bin/python -m pytest "$@"
