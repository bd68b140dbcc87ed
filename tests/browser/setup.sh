#!/usr/bin/env bash
# Installs the pinned npm packages (npm ci) and bundles the test page into dist/.
# Idempotent: each step is skipped when its inputs have not changed since it last ran.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

fingerprint() { cat "$@" | sha256sum | cut -d' ' -f1; }

deps=$(fingerprint package.json package-lock.json)
if [ ! -f node_modules/.setup-stamp ] || [ "$(cat node_modules/.setup-stamp)" != "$deps" ]; then
  echo "tests/browser: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$deps" > node_modules/.setup-stamp
fi

bundle=$(fingerprint setup.sh package-lock.json build.mjs $(find src -type f | LC_ALL=C sort))
if [ ! -f dist/page.js ] || [ ! -f dist/.build-stamp ] || [ "$(cat dist/.build-stamp)" != "$bundle" ]; then
  echo "tests/browser: bundling src/page.js -> dist/page.js"
  node build.mjs
  echo "$bundle" > dist/.build-stamp
fi
echo "tests/browser: dependencies and bundle are up to date (dist/page.js)"
