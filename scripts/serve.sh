#!/usr/bin/env bash
# Install litellm-rllm into .venv (once) and run the LiteLLM proxy with configs/rllm.yaml.
#
#   bash scripts/serve.sh [LITELLM ARGS...]      e.g. --port 4001 --host 127.0.0.1
#
# - Installs only when .venv has no litellm-rllm yet, or pyproject.toml or
#   requirements/constraints.txt changed since it was installed (quietly; a minute or two).
# - LiteLLM needs a master key: LITELLM_MASTER_KEY if set, else the one in .rllm-master-key,
#   made on the first run (git-ignored, readable by you only).
# - Model `policy` goes to $VLLM_API_BASE; unset, to the demo upstream on 127.0.0.1:8000
#   (`.venv/bin/litellm-rllm demo-upstream`), never silently to api.openai.com.
# - Prints the proxy's address and the key once the proxy answers, as the last lines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/litellm-rllm ] || [ pyproject.toml -nt .venv/bin/litellm-rllm ] \
   || [ requirements/constraints.txt -nt .venv/bin/litellm-rllm ]; then
  echo "serve.sh: installing litellm-rllm and LiteLLM into .venv (once)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e .
  touch .venv/bin/litellm-rllm   # pip keeps an unchanged script's time: mark this install
fi

if [ -z "${LITELLM_MASTER_KEY:-}" ]; then
  if [ ! -s .rllm-master-key ]; then
    (umask 077 && "$PY" -c 'import secrets; print("sk-" + secrets.token_hex(24))' > .rllm-master-key)
  fi
  LITELLM_MASTER_KEY="$(cat .rllm-master-key)"
  key_from=".rllm-master-key"
else
  key_from="LITELLM_MASTER_KEY"
fi
export LITELLM_MASTER_KEY
if [ -z "${VLLM_API_BASE:-}" ]; then
  export VLLM_API_BASE="http://127.0.0.1:8000/v1"
  policy_note="policy -> the demo upstream ($VLLM_API_BASE; export VLLM_API_BASE for your vLLM)"
else
  policy_note="policy -> $VLLM_API_BASE"
fi

port=4000
prev=""
for arg in "$@"; do
  case "$arg" in --port=*) port="${arg#--port=}" ;; esac
  if [ "$prev" = "--port" ]; then port="$arg"; fi
  prev="$arg"
done

.venv/bin/litellm --config configs/rllm.yaml "$@" &
proxy=$!
trap 'kill -TERM "$proxy" 2>/dev/null || true' INT TERM
until "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "http://127.0.0.1:$port/health/liveliness" 2>/dev/null; do
  if ! kill -0 "$proxy" 2>/dev/null; then
    wait "$proxy" || exit $?
    exit 1
  fi
  sleep 0.5
done
cat <<MSG

litellm-rllm proxy ready on http://localhost:$port   (Ctrl-C stops it)
  models: demo -> the demo upstream (.venv/bin/litellm-rllm demo-upstream); $policy_note
  master key from $key_from; in another shell:
export LITELLM_MASTER_KEY=$LITELLM_MASTER_KEY
MSG
status=0
wait "$proxy" || status=$?
if [ "$status" -gt 128 ]; then
  # a trapped signal ended the wait (status 128+N), not the proxy: wait for the proxy's own status
  status=0
  wait "$proxy" || status=$?
fi
exit "$status"
