#!/usr/bin/env bash
# Node >= 20 and npm for the browser client (clients/js) and its tests (tests/tests/js_client.rs).
# Uses the machine's node when it is new enough; else Debian's nodejs and npm, and when those
# are older than 20, the node binary that the npm registry's `node` package carries.
set -euo pipefail
major() { node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }
ok() { [ "$(major || echo 0)" -ge 20 ] 2>/dev/null && command -v npm >/dev/null 2>&1; }
if ok; then
  echo "node present: $(node --version), npm $(npm --version)"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if [ "$(major || echo 0)" -lt 20 ]; then
  $SUDO npm install -g --no-audit --no-fund node@20 >/dev/null
  hash -r
fi
ok || { echo "could not install node >= 20 (have $(node --version 2>/dev/null || echo none))"; exit 1; }
echo "installed: node $(node --version), npm $(npm --version)"
