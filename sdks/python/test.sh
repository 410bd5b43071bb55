#!/usr/bin/env bash
# Runs the Python SDK tests: creates .venv if missing, installs the package with its test
# extra (editable), then runs pytest against the server binary in $SPINWIRE_BIN
# (default: <repo>/target/debug/spinwire). Exit code is pytest's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export SPINWIRE_BIN="${SPINWIRE_BIN:-$(cd "$here/../.." && pwd)/target/debug/spinwire}"

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
exit "$status"
