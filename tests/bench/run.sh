#!/usr/bin/env bash
# Spinwire benchmarks, side by side with Centrifugo. Server pinned to CPU 0, load generator to
# CPU 1 (2-core box).
#
#   tests/bench/run.sh [all|fanout|many|latency|cpu|idle|connect|api|cluster|proxy|sync]   # full runs (minutes)
#   tests/bench/run.sh render          # rewrite RESULTS.md from results.jsonl
#   tests/bench/run.sh reliability     # R13 storm (5k clients), R14 soak (30 min), R2 churn (2k clients), by hand
#   tests/bench/run.sh metrics_cost   # the metrics' cost: this build against "metrics off", by hand
#   tests/bench/run.sh consumers      # consumer throughput per type, by hand
#                                     # (BASELINE_BIN=<binary> compares with another build instead)
#   tests/bench/run.sh smoke                                         # CI: seconds, asserts zero loss
#
# The servers measured:
#   SPINWIRE_BIN    a spinwire binary (default: this checkout's release build)
#   CENTRIFUGO_BIN  a Centrifugo v6 binary; when set, every scenario runs against it too, on the
#                   same config file, core and load generator (never needed by CI)
#   SERVERS         which of them to run (default: "spinwire centrifugo", those with a binary)
# The floor server (tokio + tungstenite, no protocol) and the kernel floor are built here and
# measured in the fan-out and CPU scenarios.
#
# Full runs repeat every measurement REPEAT times (default 3), alternating the servers inside
# each repetition so that drift on a shared VM hits all of them; each run is on a freshly
# started server. RESULTS.md shows the median run with the min–max spread and the ratio of
# Spinwire's median to Centrifugo's.
#
# Each full scenario appends raw JSON lines (each naming its `server`) to
# tests/bench/results.jsonl; `all` empties it first and rewrites tests/bench/RESULTS.md (render.py).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
MODE="${1:-all}"
REPEAT="${REPEAT:-3}"
WORK="$(mktemp -d)"
SERVER_PID=""
PORT=18200
FLOOR_PORT=18201
GRPC_PORT=18202
GRPC_STREAM_PORT=18203
KERNEL_FLOOR_PORT=18290
REDIS_PORT=18210
NODE_A_PORT=18220
NODE_B_PORT=18221
PROXY_HTTP_PORT=18230
PROXY_GRPC_PORT=18231
BACKEND_PID=""
CLUSTER_PIDS=()

if [ "$MODE" = smoke ]; then
  PROFILE=debug
  # tests/run-all.sh has already built every target; elsewhere build what the smoke run needs.
  if [ -z "${BENCH_PREBUILT:-}" ]; then
    (cd "$REPO" && cargo build -q -p spinwire -p spinwire-bench)
  fi
else
  PROFILE=release
  (cd "$REPO" && cargo build -q --release -p spinwire -p spinwire-bench)
fi
BIN="$TARGET_DIR/$PROFILE"
RESULTS="${RESULTS_FILE:-$HERE/results.jsonl}"
SPINWIRE_BIN="${SPINWIRE_BIN:-$BIN/spinwire}"
if [ -z "${SERVERS:-}" ]; then
  SERVERS="spinwire"
  if [ -n "${CENTRIFUGO_BIN:-}" ]; then SERVERS="spinwire centrifugo"; fi
fi
read -r -a SERVER_LIST <<<"$SERVERS"
for server in "${SERVER_LIST[@]}"; do
  case "$server" in
    spinwire) [ -x "$SPINWIRE_BIN" ] || { echo "no spinwire binary at $SPINWIRE_BIN" >&2; exit 2; } ;;
    centrifugo) [ -x "${CENTRIFUGO_BIN:-}" ] || { echo "SERVERS has centrifugo: set CENTRIFUGO_BIN" >&2; exit 2; } ;;
    *) echo "unknown server $server in SERVERS (spinwire, centrifugo)" >&2; exit 2 ;;
  esac
done

cleanup() {
  local status=$?
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null || true
  for pid in "${CLUSTER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "bench: failed; server logs:" >&2
    tail -n 50 "$WORK"/*.log >&2 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# CPU pinning prefixes (taskset execs the program, so `$!` is the program's own pid).
if command -v taskset >/dev/null 2>&1; then PIN0=(taskset -c 0); PIN1=(taskset -c 1); else PIN0=(); PIN1=(); fi

cat > "$WORK/config.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $PORT},
  "log": {"level": "warn"},
  "client": {"token": {"hmac_secret_key": "bench-secret"}, "channel_limit": 1000},
  "http_api": {"key": "bench-key"},
  "grpc_api": {"enabled": true, "address": "127.0.0.1", "port": $GRPC_PORT, "key": "bench-key"},
  "grpc_stream": {"enabled": true, "address": "127.0.0.1", "port": $GRPC_STREAM_PORT},
  "channel": {"namespaces": [
    {"name": "bench", "allow_subscribe_for_client": true, "allow_publish_for_client": true}
  ]}
}
EOF

# State sync: a delta namespace (fossil, every publication a delta candidate) and a map
# namespace; Centrifugo reads the same file.
cat > "$WORK/config-sync.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $PORT},
  "log": {"level": "warn"},
  "client": {"token": {"hmac_secret_key": "bench-secret"}},
  "http_api": {"key": "bench-key"},
  "channel": {"namespaces": [
    {"name": "delta", "allow_subscribe_for_client": true, "allowed_delta_types": ["fossil"],
     "delta_publish": true, "history_size": 10, "history_ttl": "300s", "force_positioning": true},
    {"name": "map", "allow_subscribe_for_client": true, "subscription_type": "map",
     "map": {"mode": "recoverable", "key_ttl": "3600s", "max_page_size": 1000}}
  ]}
}
EOF

# R13/R14: a connection rate limit (RATE_LIMIT: Centrifugo's bucket, that many at once then one
# per second), presence and join/leave, and `info` metrics sampled every second (the soak reads
# the task count from them).
write_reliability_config() {
cat > "$WORK/config-reliability.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $PORT},
  "log": {"level": "warn"},
  "client": {"token": {"hmac_secret_key": "bench-secret"}, "connection_rate_limit": ${RATE_LIMIT:-500},
             "recovery_max_publication_limit": 300},
  "http_api": {"key": "bench-key"},
  "node": {"info_metrics_aggregate_interval": "1s"},
  "channel": {"namespaces": [
    {"name": "bench", "allow_subscribe_for_client": true},
    {"name": "soak", "allow_subscribe_for_client": true, "presence": true, "join_leave": true,
     "force_push_join_leave": true, "history_size": 10, "history_ttl": "60s"},
    {"name": "churn", "allow_subscribe_for_client": true, "force_recovery": true,
     "history_size": 1000, "history_ttl": "600s"}
  ]}
}
EOF
}

# The bench config with a connect proxy and an RPC proxy on the trivial backend (`proxy_bench
# backend`), over HTTP or gRPC; a token still connects without the proxy.
for kind in http grpc; do
  if [ "$kind" = http ]; then
    connect_endpoint="http://127.0.0.1:$PROXY_HTTP_PORT/connect"; rpc_endpoint="http://127.0.0.1:$PROXY_HTTP_PORT/rpc"
  else
    connect_endpoint="grpc://127.0.0.1:$PROXY_GRPC_PORT"; rpc_endpoint="$connect_endpoint"
  fi
  python3 - "$WORK/config.json" "$connect_endpoint" "$rpc_endpoint" > "$WORK/config-proxy-$kind.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["client"]["proxy"] = {"connect": {"enabled": True, "endpoint": sys.argv[2]}}
config["proxies"] = [{"name": "rpc", "endpoint": sys.argv[3]}]
config["rpc"] = {"without_namespace": {"proxy_enabled": True, "proxy_name": "rpc"}}
print(json.dumps(config))
PY
done

# start_server [config] — Spinwire on CPU 0 (the bench config by default).
start_server() {
  start_named spinwire "${1:-$WORK/config.json}"
}

# start_named spinwire|centrifugo [config] — either server on CPU 0, on the same config file
# (Centrifugo warns about Spinwire's own keys, such as grpc_stream, and ignores them).
start_named() {
  stop_server
  local bin="$SPINWIRE_BIN"
  [ "$1" = centrifugo ] && bin="$CENTRIFUGO_BIN"
  "${PIN0[@]}" "$bin" --config "${2:-$WORK/config.json}" >"$WORK/$1.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$PORT"
}

start_floor() {
  stop_server
  "${PIN0[@]}" "$BIN/floor" --addr "127.0.0.1:$FLOOR_PORT" --protocol "$1" >"$WORK/floor.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$FLOOR_PORT"
}

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    sleep 1
  fi
}

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2
  cat "$WORK"/*.log >&2 || true
  exit 1
}

# loadgen <scenario> [options] — against the server (or the floor with --floor)
loadgen() {
  local addr="127.0.0.1:$PORT"
  if [[ " $* " == *" --floor "* ]]; then addr="127.0.0.1:$FLOOR_PORT"; fi
  # `--grpc` (a no-op flag for loadgen) marks runs aimed at the gRPC API listener.
  if [[ " $* " == *" --grpc "* ]]; then addr="127.0.0.1:$GRPC_PORT"; fi
  "${PIN1[@]}" "$BIN/loadgen" "$@" --addr "$addr" --grpc-stream-addr "127.0.0.1:$GRPC_STREAM_PORT" \
    --server-pid "$SERVER_PID"
}

# measure <server> <loadgen args…> — starts that server (spinwire, centrifugo, or floor on the
# protocol in the args) with the bench config and records one loadgen run against it.
measure() {
  local server="$1"
  shift
  if [ "$server" = floor ]; then
    local proto=json
    [[ " $* " == *" --protocol protobuf "* ]] && proto=protobuf
    start_floor "$proto"
    loadgen "$@" --floor | record
  else
    start_named "$server"
    loadgen "$@" --server "$server" | record
  fi
}

# Whether a server has what a run needs: Centrifugo OSS has no bidirectional gRPC stream
# transport (Spinwire's grpc_stream), so gRPC-stream rows are Spinwire's alone.
serves() {
  local server="$1"
  shift
  [[ "$server" = centrifugo && " $* " == *" --transport grpc "* ]] && return 1
  return 0
}

record() { tee -a "$RESULTS"; }

# The trivial proxy backend shares the generator's core: what it costs is not the server's.
start_proxy_backend() {
  "${PIN1[@]}" "$BIN/proxy_bench" backend --http-port "$PROXY_HTTP_PORT" --grpc-port "$PROXY_GRPC_PORT" \
    >"$WORK/backend.log" 2>&1 &
  BACKEND_PID=$!
  wait_port "$PROXY_HTTP_PORT"
}

stop_proxy_backend() {
  [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null || true
  wait "$BACKEND_PID" 2>/dev/null || true
  BACKEND_PID=""
}

# proxy_bench connect|rpc [options] — against the server
proxy_bench() {
  "${PIN1[@]}" "$BIN/proxy_bench" "$@" --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID"
}

# start_cluster [spinwire|centrifugo] — two nodes of that server on one redis-server (all three
# on CPU 0, the load generator on CPU 1): subscribers on node B, the publisher on node A, so
# every delivery crosses Redis PUB/SUB. Channels keep history (the Lua publish path). `--server-pid` is Redis, so the server CPU
# figures are Redis's: publishes per Redis CPU-second = 1e6 / (cpu_s_per_1m_deliveries * subs);
# the two nodes' CPU is `nodes_cpu_s_per_1m`.
start_cluster() {
  local bin="$SPINWIRE_BIN"
  [ "${1:-spinwire}" = centrifugo ] && bin="$CENTRIFUGO_BIN"
  stop_cluster
  "${PIN0[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
  CLUSTER_PIDS+=($!)
  REDIS_PID=$!
  wait_port "$REDIS_PORT"
  NODE_PIDS=()
  for port in "$NODE_A_PORT" "$NODE_B_PORT"; do
    cat > "$WORK/node-$port.json" <<EOF
{
  "http_server": {"address": "127.0.0.1", "port": $port},
  "log": {"level": "warn"},
  "engine": {"type": "redis", "redis": {"address": ["127.0.0.1:$REDIS_PORT"], "prefix": "bench"}},
  "client": {"token": {"hmac_secret_key": "bench-secret"}, "channel_limit": 1000},
  "http_api": {"key": "bench-key"},
  "channel": {"namespaces": [
    {"name": "bench", "allow_subscribe_for_client": true, "allow_publish_for_client": true,
     "history_size": 100, "history_ttl": "60s"}
  ]}
}
EOF
    "${PIN0[@]}" "$bin" --config "$WORK/node-$port.json" >"$WORK/node-$port.log" 2>&1 &
    CLUSTER_PIDS+=($!)
    NODE_PIDS+=($!)
    wait_port "$port"
  done
}

stop_cluster() {
  for pid in "${CLUSTER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CLUSTER_PIDS=()
}

cluster_loadgen() {
  "${PIN1[@]}" "$BIN/loadgen" fanout --addr "127.0.0.1:$NODE_B_PORT" --publish-addr "127.0.0.1:$NODE_A_PORT" \
    --server-pid "$REDIS_PID" --node-pids "$(IFS=,; echo "${NODE_PIDS[*]}")" "$@" | python3 -c '
import json, sys
row = json.loads(sys.stdin.read())
row["scenario"] = "cross-node"
row["engine"] = "redis"
print(json.dumps(row))'
}

smoke() {
  # Each scenario at a tiny scale: proves the tooling end to end and asserts no loss.
  : > "$WORK/smoke.jsonl"
  for proto in json protobuf; do
    start_server
    loadgen fanout --subs 200 --rate 20000 --duration 2 --warmup 0.5 --protocol "$proto" --assert-clean | tee -a "$WORK/smoke.jsonl"
    loadgen many --subs 200 --rate 5000 --duration 2 --warmup 0.5 --protocol "$proto" --assert-clean | tee -a "$WORK/smoke.jsonl"
    if [ "$proto" = protobuf ]; then
      loadgen fanout --transport grpc --subs 200 --rate 20000 --duration 2 --warmup 0.5 --protocol protobuf --assert-clean | tee -a "$WORK/smoke.jsonl"
    fi
    start_floor "$proto"
    loadgen fanout --floor --subs 200 --rate 20000 --duration 2 --warmup 0.5 --protocol "$proto" --assert-clean | tee -a "$WORK/smoke.jsonl"
  done
  start_server
  loadgen idle --subs 500 --channels 2 | tee -a "$WORK/smoke.jsonl"
  loadgen connect --subs 500 | tee -a "$WORK/smoke.jsonl"
  loadgen connect --transport grpc --protocol protobuf --subs 500 | tee -a "$WORK/smoke.jsonl"
  loadgen api --conns 2 --duration 1 --api-key bench-key | tee -a "$WORK/smoke.jsonl"
  loadgen grpc-api --grpc --conns 2 --streams 4 --duration 1 --api-key bench-key | tee -a "$WORK/smoke.jsonl"
  start_proxy_backend
  for kind in http grpc; do
    start_server "$WORK/config-proxy-$kind.json"
    proxy_bench connect --conns 4 --duration 1 --label "$kind" | tee -a "$WORK/smoke.jsonl"
    proxy_bench rpc --conns 4 --duration 1 --label "$kind" | tee -a "$WORK/smoke.jsonl"
  done
  proxy_bench connect --conns 4 --duration 1 --token bench-secret --label jwt | tee -a "$WORK/smoke.jsonl"
  stop_proxy_backend
  # Every subscriber rebuilds every delta publication exactly, or the run fails.
  start_server "$WORK/config-sync.json"
  sync_bench delta --subs 10 --publications 50 | tee -a "$WORK/smoke.jsonl"
  sync_bench map --keys 2000 --subs 20 --page 500 | tee -a "$WORK/smoke.jsonl"
  stop_server
  kernel_floor 2000 200 1 | tee -a "$WORK/smoke.jsonl"
  start_cluster
  cluster_loadgen --subs 100 --rate 5000 --duration 2 --warmup 0.5 --assert-clean | tee -a "$WORK/smoke.jsonl"
  stop_cluster
  # R13, R14 and R2 at CI scale: 1,500 clients against a bucket of 1,490 (then 1/s); 45 s of
  # connect churn; 25 s of 200 recovering subscribers dropping and coming back.
  RATE_LIMIT=1490 write_reliability_config
  start_server "$WORK/config-reliability.json"
  reliability_run storm --clients 1500 --rate-limit 1490 | tee -a "$WORK/smoke.jsonl"
  start_server "$WORK/config-reliability.json"
  reliability_run soak --seconds 45 | tee -a "$WORK/smoke.jsonl"
  RATE_LIMIT=0 write_reliability_config
  start_server "$WORK/config-reliability.json"
  reliability_run churn --clients 200 --seconds 25 --rate 40 | tee -a "$WORK/smoke.jsonl"
  stop_server
  python3 - "$WORK/smoke.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
api = [r for r in rows if r["scenario"] == "api"]
assert len(api) == 2 and all(r["errors"] == 0 and r["publishes_per_s"] > 0 for r in api), api
assert all(r["conns"] > 0 for r in rows if r["scenario"] in ("idle", "connect"))
proxied = [r for r in rows if r["scenario"] in ("proxy_connect", "proxy_rpc")]
assert len(proxied) == 5 and all(r["failed"] == 0 and r["done"] > 0 for r in proxied), proxied
floor = [r for r in rows if r["scenario"] == "kernel-floor"]
assert len(floor) == 1 and floor[0]["writes_per_s"] > 0, floor
print(f"bench smoke: {len(rows)} scenario runs clean")
PY
}

reps() { seq 1 "$REPEAT"; }

# Fan-out searches on one channel: each server, then the floor, in every repetition.
fanout() {
  # FANOUT_SUBS picks the subscriber counts (for re-running one size).
  local subs proto server args
  for subs in ${FANOUT_SUBS:-1000 10000}; do
    for proto in json protobuf; do
      args=(fanout --subs "$subs" --protocol "$proto" --rate 50000 --duration 4 --warmup 1 --search)
      for _ in $(reps); do
        for server in "${SERVER_LIST[@]}" floor; do measure "$server" "${args[@]}"; done
      done
    done
    args=(fanout --transport grpc --subs "$subs" --protocol protobuf --rate 50000 --duration 4 --warmup 1 --search)
    for _ in $(reps); do
      for server in "${SERVER_LIST[@]}"; do
        if serves "$server" "${args[@]}"; then measure "$server" "${args[@]}"; fi
      done
    done
  done
}

many() {
  local server
  for _ in $(reps); do
    for server in "${SERVER_LIST[@]}"; do
      measure "$server" many --subs 10000 --protocol json --rate 50000 --duration 4 --warmup 1 --search
    done
  done
}

# The many-channel maximum with p99 < 50 ms (deliveries/s) that the fixed loads are a share
# of: the median of Centrifugo's recorded searches when there are any (the issue's yardstick),
# else Spinwire's, else 75,000.
many_max() {
  python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    row = json.loads(line)
    if row.get("scenario") == "many" and "steps" in row and row.get("max"):
        rates.setdefault(row.get("server", "spinwire"), []).append(row["max"]["deliveries_per_s"])
chosen = rates.get("centrifugo") or rates.get("spinwire")
print(int(statistics.median(chosen)) if chosen else 75000)
PY
}

latency() {
  # 10k subscriber connections, JSON, at 10 %, 50 % and 80 % of the many-channel maximum: each
  # connection has a personal and a group channel; publications go to the groups of 10.
  local max pct server
  max="$(many_max)"
  for pct in 10 50 80; do
    for _ in $(reps); do
      for server in "${SERVER_LIST[@]}"; do
        measure "$server" many --subs 10000 --protocol json --rate "$(( max * pct / 100 ))" --duration 8 --warmup 2
      done
    done
  done
}
# kernel_floor <writes/s, 0 = flat out> <conns> <seconds>: the bare cost of one small write per
# delivery (a writer on CPU 0, an epoll reader on CPU 1, no server), for the CPU table. Stop the
# server first: this runs in a pipeline's subshell, so it cannot clear the caller's SERVER_PID.
kernel_floor() {
  # The reader's output stays off the pipe, or the pipe would stay open while it runs.
  "${PIN1[@]}" "$BIN/kernel_floor" read --addr "127.0.0.1:$KERNEL_FLOOR_PORT" --conns "$2" \
    >>"$WORK/kernel_floor.log" 2>&1 &
  local reader=$!
  # The writer retries its first connect until the reader listens. The reader exits by itself
  # once the writer's connections close; if the writer failed, it may still wait in accept().
  if ! "${PIN0[@]}" "$BIN/kernel_floor" write --addr "127.0.0.1:$KERNEL_FLOOR_PORT" --conns "$2" \
    --rate "$1" --duration "$3"; then
    kill "$reader" 2>/dev/null || true
    wait "$reader" 2>/dev/null || true
    return 1
  fi
  wait "$reader"
}

cpu() {
  # One channel with 10k subscribers at fixed loads, each server and the floor server: CPU per
  # 1M deliveries in latency mode (no write delay). At 25k/s (2.5 publications/s) every
  # delivery is its own write; from 250k/s on, writes coalesce what queued during the previous
  # pass. The same rows give the one-channel latency table.
  local rate server
  for rate in 25000 250000 1000000; do
    for _ in $(reps); do
      for server in "${SERVER_LIST[@]}" floor; do
        measure "$server" fanout --subs 10000 --protocol json --rate "$rate" --duration 8 --warmup 2
      done
    done
  done
  # The kernel's own price of one write per delivery, paced like 25k/s above and flat out.
  stop_server
  for rate in 25000 0; do
    for _ in $(reps); do
      kernel_floor "$rate" 10000 6 | record
    done
  done
}

idle() {
  local conns channels server
  for conns in ${IDLE_CONNS:-1000 10000 19000}; do
    for channels in 0 1 2; do
      for _ in $(reps); do
        for server in "${SERVER_LIST[@]}"; do
          measure "$server" idle --subs "$conns" --channels "$channels"
        done
      done
    done
  done
}

connect() {
  local server args
  for _ in $(reps); do
    for server in "${SERVER_LIST[@]}"; do
      measure "$server" connect --subs 10000 --connect-batch 500
      args=(connect --transport grpc --protocol protobuf --subs 10000 --connect-batch 500)
      if serves "$server" "${args[@]}"; then measure "$server" "${args[@]}"; fi
    done
  done
}

cluster() {
  # Fixed loads: 100, 500 and 2000 publications/s to 100 subscribers across nodes.
  local rate server
  stop_server
  for rate in 10000 50000 200000; do
    for _ in $(reps); do
      for server in "${SERVER_LIST[@]}"; do
        start_cluster "$server"
        cluster_loadgen --subs 100 --protocol json --rate "$rate" --duration 8 --warmup 2 --server "$server" | record
      done
    done
  done
  stop_cluster
}

api() {
  local server
  for _ in $(reps); do
    for server in "${SERVER_LIST[@]}"; do
      start_named "$server"
      loadgen api --conns 4 --duration 5 --api-key bench-key --server "$server" | record
      loadgen grpc-api --grpc --conns 4 --streams 32 --duration 5 --api-key bench-key --server "$server" | record
    done
  done
}

# Connects through the connect proxy (HTTP, gRPC) against connects with a token, and RPC round
# trips through the RPC proxy; closed loops of 16 workers for 5 s, each server in turn.
proxy() {
  local server kind
  start_proxy_backend
  for _ in $(reps); do
    for server in "${SERVER_LIST[@]}"; do
      for kind in http grpc; do
        start_named "$server" "$WORK/config-proxy-$kind.json"
        proxy_bench connect --conns 16 --duration 5 --label "$kind" --server "$server" | record
        proxy_bench rpc --conns 16 --duration 5 --label "$kind" --server "$server" | record
      done
      start_named "$server" "$WORK/config.json"
      proxy_bench connect --conns 16 --duration 5 --token bench-secret --label jwt --server "$server" | record
    done
  done
  stop_proxy_backend
}

# State sync (issue 15): fossil delta bytes on the wire for a 4 KB JSON document changing by
# about 1 % per publication (100 delta and 100 plain subscribers, 500 publications), and a map
# channel of 10k keys paged to 1k subscribers at once, each server in turn.
sync() {
  local server
  for _ in $(reps); do
    for server in "${SERVER_LIST[@]}"; do
      start_named "$server" "$WORK/config-sync.json"
      sync_bench delta --subs 100 --publications 500 --doc-bytes 4096 | label_server "$server" | record
      start_named "$server" "$WORK/config-sync.json"
      sync_bench map --keys 10000 --subs 1000 --page 1000 | label_server "$server" | record
    done
  done
}

reliability_run() {
  "${PIN1[@]}" "$BIN/reliability" "$@" --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID"
}

# R13 and R14 (STORM_CLIENTS, SOAK_SECONDS; the smoke run uses a small scale).
reliability() {
  RATE_LIMIT="${RATE_LIMIT:-4950}" write_reliability_config
  start_server "$WORK/config-reliability.json"
  reliability_run storm --clients "${STORM_CLIENTS:-5000}" --rate-limit "${RATE_LIMIT:-4950}" | tee -a "$RESULTS"
  start_server "$WORK/config-reliability.json"
  reliability_run soak --seconds "${SOAK_SECONDS:-1800}" | tee -a "$RESULTS"
  RATE_LIMIT=0 write_reliability_config
  start_server "$WORK/config-reliability.json"
  reliability_run churn --clients "${CHURN_CLIENTS:-2000}" --seconds "${CHURN_SECONDS:-120}" | tee -a "$RESULTS"
  stop_server
}

sync_bench() {
  "${PIN1[@]}" "$BIN/sync_bench" "$@" --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID"
}

# Adds `"server": <name>` to each JSON line.
label_server() { python3 -c 'import json,sys
for line in sys.stdin:
    row = json.loads(line); row["server"] = sys.argv[1]; print(json.dumps(row))' "$1"; }


# What recording the metrics costs (issue 17): fan-out and many-channel searches against this
# build and BASELINE_BIN, a spinwire binary built from a commit before the metrics (for example
# `git worktree add /tmp/base a7f4a3f~1` and a release build there), alternating servers each
# repetition. By hand; rows go to results.jsonl with `"server": "spinwire"` / `"baseline"`.
metrics_cost() {
  if [ -z "${BASELINE_BIN:-}" ]; then
    # The same commit with every count and its clock reads compiled out (its own target
    # directory, so the two builds never overwrite each other).
    (cd "$REPO" && cargo build -q --release -p spinwire --features metrics-off --target-dir "$TARGET_DIR/metrics-off")
    BASELINE_BIN="$TARGET_DIR/metrics-off/release/spinwire"
  fi
  [ -x "$BASELINE_BIN" ] || { echo "metrics_cost: no baseline binary at $BASELINE_BIN" >&2; exit 2; }
  local scenario
  for _ in $(reps); do
    for which in baseline spinwire; do
      for scenario in fanout many; do
        stop_server
        local bin="$BIN/spinwire"
        [ "$which" = baseline ] && bin="$BASELINE_BIN"
        "${PIN0[@]}" "$bin" --config "$WORK/config.json" >"$WORK/server.log" 2>&1 &
        SERVER_PID=$!
        wait_port "$PORT"
        loadgen "$scenario" --subs 10000 --protocol json --rate 50000 --duration 4 --warmup 1 --search \
          | python3 -c 'import json,sys
row = json.loads(sys.stdin.read()); row["scenario"] = "metrics_cost_" + row["scenario"]; row["server"] = sys.argv[1]
print(json.dumps(row))' "$which" | record
      done
    done
  done
  stop_server
}

# Consumer throughput (issue 18): every consumer type drains a pre-filled source; with
# CENTRIFUGO_BIN set, Centrifugo drains the same kind of source in the same run, alternating.
# By hand; rows go to results.jsonl (scenario "consumer").
consumers() {
  [ -d "$REPO/tests/interop/node/node_modules/kafkajs" ] || (cd "$REPO/tests/interop/node" && npm ci --no-audit --no-fund --loglevel=error)
  bash "$REPO/tests/interop/kafka/fetch.sh"
  node "$HERE/consumers.mjs" "$BIN/spinwire" "${CONSUMER_COMMANDS:-100000}" "$REPEAT" | record
}

case "$MODE" in
  smoke) smoke ;;
  metrics_cost) metrics_cost ;;
  consumers) consumers ;;
  fanout | many | latency | cpu | idle | connect | api | cluster | proxy | sync | reliability) "$MODE" ;;
  render)
    python3 "$HERE/render.py" "$RESULTS" > "$HERE/RESULTS.md"
    echo "wrote $HERE/RESULTS.md"
    ;;
  all)
    : > "$RESULTS"
    # The many-channel shape first (the fixed loads need its maximum), the long searches last.
    many; latency; idle; connect; api; cluster; proxy; sync; cpu; fanout
    stop_server
    python3 "$HERE/render.py" "$RESULTS" > "$HERE/RESULTS.md"
    echo "wrote $HERE/RESULTS.md"
    ;;
  *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
