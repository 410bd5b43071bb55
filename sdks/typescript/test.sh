#!/usr/bin/env bash
# Installs dependencies, builds the SDK and its tests, and runs every test
# (offline ones plus integration tests against $SPINWIRE_BIN, default
# /work/main/target/debug/spinwire). Exit code is the test runner's.
set -euo pipefail
cd "$(dirname "$0")"

# npm ci installs exactly what package-lock.json pins; fall back to npm install
# only if this npm rejects the lockfile.
npm ci --no-audit --no-fund || npm install --no-audit --no-fund

rm -rf dist build
npx tsc -p tsconfig.json
npx tsc -p tsconfig.test.json

# One file at a time: each starts its own server, and the box is small.
node --test --test-concurrency=1 build/test/*.test.js
