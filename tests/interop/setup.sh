#!/usr/bin/env bash
# Installs the interop peers once: Python `websockets` 17.4 in a venv and Node `ws` 8.x.
#   tests/interop/setup.sh  -> prints the directory they live in
set -euo pipefail
dir="${WSRPC_INTEROP_DIR:-$HOME/.cache/wsrpc/interop}"
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c "import websockets" 2>/dev/null; then
  python3 -m venv "$dir/venv" >&2
  "$dir/venv/bin/pip" install --quiet websockets==17.4 >&2
fi
if [ ! -d "$dir/node/node_modules/ws" ]; then
  mkdir -p "$dir/node"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund ws@8 >&2)
fi
echo "$dir"
