#!/usr/bin/env bash
# Cross-language acceptance tests for Spinwire (Centrifugo v6 drop-in).
#   node suite:   tests/interop/node   (centrifuge-js, JSON + Protobuf)   -> node --test
#   python suite: tests/interop/python (centrifuge-python, cent, gRPC, CLI) -> pytest
#   proxy backends both suites start: tests/interop/backends (HTTP: node, gRPC: the venv's python)
#   kafka broker the node suite starts (infra.mjs): jars from Maven Central via kafka/fetch.sh (needs java 17+, mvn)
# The server binary is $SPINWIRE_BIN (default <repo>/target/debug/spinwire); build it first.
# Exits non-zero if either suite fails.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export SPINWIRE_BIN="${SPINWIRE_BIN:-$REPO/target/debug/spinwire}"

echo "interop: SPINWIRE_BIN=$SPINWIRE_BIN"

# ---------------------------------------------------------------- python venv
# Set up before the node suite: its proxy tests run the gRPC backend
# (backends/grpc_backend.py) with the venv's python.
py_rc=0
VENV="$HERE/python/.venv"
(
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || exit 1
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$HERE/python/requirements.txt" || exit 1
) || { echo "interop: python venv setup failed"; py_rc=1; }

# ---------------------------------------------------------------- tools
# pebble, Let's Encrypt's test ACME server, for the tls_autocert scenario (35): from the Go
# module proxy, once. Without Go the scenario skips itself.
PEBBLE_VERSION=v2.10.3
if [ ! -x "$HERE/.tools/pebble" ] && command -v go >/dev/null 2>&1; then
  GOBIN="$HERE/.tools" go install "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION" \
    || echo "interop: pebble install failed; the tls_autocert scenario will skip"
fi

# ---------------------------------------------------------------- node
node_rc=0
# The jars of the Kafka broker that infra.mjs (class Kafka) runs, from Maven Central, once.
# No skipping here: without them the node suite fails.
bash "$HERE/kafka/fetch.sh" || { echo "interop: Kafka broker fetch failed (tests/interop/kafka/fetch.sh)"; node_rc=1; }
(
  cd "$HERE/node" || exit 1
  if [ -f package-lock.json ]; then
    # Reinstall only when the lockfile changed since the last install.
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      npm ci --no-audit --no-fund --loglevel=error || exit 1
    fi
  else
    npm install --no-audit --no-fund --loglevel=error || exit 1
  fi
) || { echo "interop: node dependency install failed"; node_rc=1; }

if [ "$node_rc" -eq 0 ]; then
  (cd "$HERE/node" && node --test --test-concurrency=1 test/)
  node_rc=$?
fi

# ---------------------------------------------------------------- python
if [ "$py_rc" -eq 0 ]; then
  (cd "$HERE/python" && "$VENV/bin/python" -m pytest -q)
  py_rc=$?
fi

echo "interop: node suite exit $node_rc, python suite exit $py_rc"
if [ "$node_rc" -ne 0 ] || [ "$py_rc" -ne 0 ]; then
  exit 1
fi
exit 0
