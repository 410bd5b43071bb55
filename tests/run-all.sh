#!/usr/bin/env bash
# The whole Spinwire test suite, from a fresh machine of this project's kind.
# Installs what it needs (Debian packages, cargo components and tools, npm and pip packages),
# then runs:
# formatting, clippy, codegen drift, buf lint, cargo audit, Rust unit + integration tests,
# and the interop suites that drive the official SDKs against the real binary on loopback.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
ADVISORY_DB="${ADVISORY_DB:-$REPO/../shared/advisory-db}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
START=$(date +%s)

# A clean checkout gains nothing from incremental compilation and it costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Each step also prints the free disk space: a full disk is the one failure with no other trace.
step() {
  printf '\n==> %s (%ss, %s free)\n' "$*" "$(( $(date +%s) - START ))" \
    "$(df -h --output=avail "$REPO" 2>/dev/null | tail -1 | tr -d ' ')"
}

step "system packages (Debian): chromium, redis-server, redis-sentinel, nats-server, postgresql, build and Kafka needs"
# Browser tests need chromium; the multi-node and engine tests start their own redis-server,
# redis-sentinel and nats-server processes on free loopback ports.
MISSING=()
for pair in chromium:chromium redis-server:redis-server redis-sentinel:redis-sentinel \
    redis-cli:redis-tools nats-server:nats-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || MISSING+=("${pair##*:}")
done
# PostgreSQL (the map broker's tests run their own server): Debian keeps initdb off the path.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  MISSING+=(postgresql)
fi
# librdkafka (the Kafka consumer) is built from source against OpenSSL and zlib; the Kafka
# broker the consumer tests run is Java (jars from Maven Central, fetched by Maven).
for pkg in libssl-dev zlib1g-dev pkg-config make; do
  dpkg -s "$pkg" >/dev/null 2>&1 || MISSING+=("$pkg")
done
command -v java >/dev/null 2>&1 || MISSING+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || MISSING+=(maven)
if [ "${#MISSING[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${MISSING[@]}"
fi
# The packages start system-wide services where an init system exists; the tests use their
# own instances, so those are not needed (and not relied on).

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p spinwire --lib --tests --features loom --locked -- -D warnings

step "proto tooling (buf, protoc-gen-es)"
# `npm install`, not `npm ci`: buf's per-platform optional packages are not all recorded in
# the lockfile under this machine's npm settings, which makes `npm ci` refuse. The versions are
# pinned exactly in codegen/package.json.
(cd codegen && npm install --no-audit --no-fund --loglevel=error)

step "generated code (Rust, Python, Go, TypeScript) matches proto/"
# First run installs the pinned generators under target/codegen-tools (pip, go install).
cargo run -q -p codegen --locked -- --check

step "codegen --check catches a proto edit that was not regenerated"
PROBE="$(mktemp -d)"
trap 'rm -rf "$PROBE"' EXIT
cp -r proto/. "$PROBE/"
sed -i '0,/^message PublishRequest {/s//message PublishRequest {\n  string drift_probe = 999;/' \
  "$PROBE/centrifugal/centrifugo/api/api.proto"
# Must fail, and fail for the right reason (drift reported), not a tool error.
if PROBE_OUT="$(cargo run -q -p codegen --locked -- --check --proto-dir "$PROBE" 2>&1)"; then
  echo "codegen --check accepted an edited proto without regeneration" >&2
  exit 1
fi
grep -q '^drift: server/src/proto/gen/centrifugal.centrifugo.api.rs' <<<"$PROBE_OUT" || {
  echo "codegen --check failed, but not with the expected drift report:" >&2
  echo "$PROBE_OUT" >&2
  exit 1
}

step "buf lint and buf breaking (against the previous commit)"
codegen/node_modules/.bin/buf lint
if git rev-parse --verify -q HEAD~1 >/dev/null; then
  codegen/node_modules/.bin/buf breaking --against '.git#ref=HEAD~1'
else
  echo "no previous commit (shallow clone?): skipping buf breaking" >&2
fi

step "cargo audit"
if ! command -v cargo-audit >/dev/null 2>&1; then
  cargo install cargo-audit --locked --quiet
fi
if [ -d "$ADVISORY_DB" ]; then
  # Exceptions, each explained in server/ARCHITECTURE.md ("Dependencies and advisories").
  cargo audit --db "$ADVISORY_DB" --no-fetch --ignore RUSTSEC-2023-0071
else
  echo "advisory database not found at $ADVISORY_DB; skipping cargo audit" >&2
fi

# One build of every target (binaries included) with the same features the tests use, so the
# test run and the binaries share artifacts instead of compiling dependencies twice.
step "cargo build (all targets)"
cargo build --workspace --all-targets --locked

step "cargo test (unit and in-process integration; the Redis and NATS engine suites must not skip)"
SPINWIRE_REQUIRE_REDIS=1 SPINWIRE_REQUIRE_NATS=1 SPINWIRE_REQUIRE_POSTGRES=1 cargo test --workspace --locked

step "loom models of the delivery path (R15; outbound queue, subscribe/unsubscribe/disconnect)"
cargo test -p spinwire --features loom --lib --locked node::models

step "interop: npm centrifuge, centrifuge-python, cent, gRPC"
SPINWIRE_BIN="$TARGET_DIR/debug/spinwire" bash tests/interop/run.sh

step "SDKs: Python, Go, TypeScript against the real binary"
export SPINWIRE_BIN="$TARGET_DIR/debug/spinwire"
bash sdks/python/test.sh
bash sdks/go/test.sh
bash sdks/typescript/test.sh

step "benchmark smoke run (every scenario at small scale, asserts zero loss)"
BENCH_PREBUILT=1 bash tests/bench/run.sh smoke

step "all tests passed"
