#!/usr/bin/env bash
# Installs Debian's redis-server (7.0 or later) for the broker-bridge tests (adapters/redis,
# tests/tests/cluster.rs). Tests start their own redis-server on a free port; this only
# installs the binary and never starts the system service.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  echo "redis-server present: $(redis-server --version 2>/dev/null || true)"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
echo "installed: $(redis-server --version 2>/dev/null || true)"
