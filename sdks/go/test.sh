#!/usr/bin/env bash
# Vet and test the Go SDK. The integration tests start the real server binary:
# $SPINWIRE_BIN (default /work/main/target/debug/spinwire). Modules come from the Go
# module proxy as needed. Exit code is go's.
set -euo pipefail
cd "$(dirname "$0")"
go vet ./...
go test -count=1 ./...
