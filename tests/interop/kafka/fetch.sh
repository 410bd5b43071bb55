#!/usr/bin/env bash
# Puts the jars of a single-node KRaft Kafka broker (tests/interop/kafka/pom.xml, from Maven
# Central) into tests/interop/.tools/kafka/libs, where infra.mjs (class Kafka) runs them.
# Idempotent: does nothing while the jars are there and pom.xml is not newer than them.
# Exits non-zero, saying why, when it cannot.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
DEST="$(cd "$HERE/.." && pwd)/.tools/kafka"
LIBS="$DEST/libs"
STAMP="$LIBS/.fetched"

fail() { echo "kafka/fetch.sh: $*" >&2; exit 1; }

if [ -f "$STAMP" ] && [ ! "$POM" -nt "$STAMP" ] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
  exit 0
fi

command -v mvn >/dev/null 2>&1 || fail "mvn (Maven) is not installed; it fetches Kafka from Maven Central"
command -v java >/dev/null 2>&1 || fail "java is not installed; the Kafka broker needs Java 17+"

mkdir -p "$DEST"
TMP="$(mktemp -d "$DEST/libs.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "kafka/fetch.sh: fetching the Kafka broker jars from Maven Central"
if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DoutputDirectory="$TMP" -DincludeScope=runtime >"$TMP.log" 2>&1; then
  cat "$TMP.log" >&2
  rm -f "$TMP.log"
  fail "mvn dependency:copy-dependencies failed (see above)"
fi
rm -f "$TMP.log"
compgen -G "$TMP/kafka_2.13-*.jar" >/dev/null || fail "no kafka_2.13 jar came down"

touch "$TMP/.fetched"
rm -rf "$LIBS"
mv "$TMP" "$LIBS"
trap - EXIT
echo "kafka/fetch.sh: $(ls "$LIBS" | grep -c '\.jar$') jars in $LIBS"
