#!/usr/bin/env bash
# Install what the browser tests (tests/web) need, and nothing when it is already there:
#   - Debian's Chromium (/usr/bin/chromium), through apt-get;
#   - Node.js (node >= 20 with npm) when absent, through apt-get;
#   - the npm packages of tests/web (playwright-core, pinned by package-lock.json), through `npm ci`.
# Exits non-zero when something cannot be installed, so CI fails instead of skipping the browser tests
# (the tests themselves fail too when MOGA_REQUIRE_BROWSER=1 and something is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: need $*, but there is no apt-get on this machine" >&2
    return 1
  fi
  if [ "$APT_UPDATED" = "0" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

CHROMIUM="${MOGA_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  echo "setup-browser: installing Chromium (apt-get)"
  apt_install chromium
fi
[ -x "$CHROMIUM" ] || { echo "setup-browser: $CHROMIUM is still missing" >&2; exit 1; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup-browser: installing Node.js and npm (apt-get)"
  apt_install nodejs npm
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "setup-browser: Node.js >= 20 is needed (node --test, playwright-core); found $(node --version)" >&2
  exit 1
fi

if [ ! -f tests/web/node_modules/playwright-core/package.json ]; then
  echo "setup-browser: npm ci in tests/web"
  (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup-browser: Chromium $("$CHROMIUM" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1), node $(node --version), playwright-core $(node -p 'require("./tests/web/node_modules/playwright-core/package.json").version')"
