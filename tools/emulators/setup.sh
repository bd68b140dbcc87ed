#!/usr/bin/env bash
# Installs the pinned Kinesis (kinesalite) and DynamoDB (dynalite) emulators: npm ci from
# package-lock.json. Idempotent: skipped when package.json and package-lock.json have not changed
# since it last ran. The LevelDB bindings (leveldown, classic-level) ship prebuilt N-API binaries
# that node-gyp-build loads at run time, so install scripts are not run (no compiler needed); if the
# binaries do not load on this platform, `npm rebuild` builds them from source.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "tools/emulators: node and npm (Node >= 20) are needed" >&2
  exit 1
fi

deps=$(fingerprint package.json package-lock.json)
if [ ! -f node_modules/.setup-stamp ] || [ "$(cat node_modules/.setup-stamp)" != "$deps" ]; then
  echo "tools/emulators: npm ci"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  check='require("kinesalite"); require("dynalite"); require("leveldown")'
  if ! node -e "$check" 2>/dev/null; then
    echo "tools/emulators: no usable prebuilt LevelDB binding here; building from source" >&2
    npm rebuild leveldown classic-level --foreground-scripts --loglevel=error
    node -e "$check"
  fi
  echo "$deps" > node_modules/.setup-stamp
fi
echo "tools/emulators: kinesalite and dynalite are up to date"
