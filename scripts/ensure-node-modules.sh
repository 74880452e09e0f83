#!/bin/sh
# Installs the npm dependencies when they are missing or older than package-lock.json, so that
# `npm test` and `npm run demo` work on a fresh clone without a separate `npm install`.
set -eu
cd "$(dirname "$0")/.."
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "vmlet: installing npm dependencies (npm ci) ..."
  npm ci --no-audit --no-fund
fi
