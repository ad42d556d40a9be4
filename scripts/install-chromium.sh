#!/usr/bin/env bash
# Installs Debian's chromium for the cross-site WebSocket hijacking test (tests/tests/browser.rs).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium present: $(chromium --version 2>/dev/null || true)"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
echo "installed: $(chromium --version 2>/dev/null || true)"
