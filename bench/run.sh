#!/usr/bin/env bash
# bench/run.sh: proglog against its baselines, measured in one run on this machine.
#
#   bench/run.sh            # about 3-4 minutes; SECONDS_PER_CASE=5 bench/run.sh for longer runs
#
# Builds proglog-node and proglog-loadgen in release, then on 127.0.0.1 only starts, one at a
# time: proglog-node --durability interval, proglog-node --durability always (fresh temp data
# dirs, one node per record size so `consume` reads records of one size), the tonic echo floor
# (`proglog-loadgen echo-server`) and nats-server with JetStream (file storage in a temp dir,
# a random free port). Runs every case at 100 B and 1 KiB, prints each result as it comes,
# then the table and the ratios against the baselines. Everything started is stopped on exit.
#
# NATS JetStream 2.9 acknowledges a publish without fsync, so the fair comparison is proglog
# `--durability interval`; `always` (fsync before every acknowledgement, group commit) is
# reported separately. Installs nothing: needs `nats-server` on PATH (Debian/Ubuntu:
# `apt-get install nats-server`).
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_CASE="${SECONDS_PER_CASE:-3}"
CONSUME_MESSAGES="${CONSUME_MESSAGES:-300000}"
SIZES=(100 1024)

if ! command -v nats-server >/dev/null 2>&1; then
    echo "bench/run.sh: nats-server not found; install it with: apt-get install nats-server" >&2
    exit 1
fi

echo "== building (release)" >&2
cargo build --release --quiet -p proglog-node -p proglog-bench
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
NODE="$TARGET_DIR/release/proglog-node"
LOADGEN="$TARGET_DIR/release/proglog-loadgen"

WORK="$(mktemp -d -t proglog-bench.XXXXXX)"
RESULTS="$WORK/results.jsonl"
SERVER_PID=""

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for LOGFILE PATTERN: polls (deadline 20 s) until the server's log shows PATTERN.
wait_for() {
    local log="$1" pattern="$2" deadline=$((SECONDS + 20))
    until grep -q "$pattern" "$log" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench/run.sh: server exited early; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "bench/run.sh: server not ready after 20 s; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# start_grpc NAME COMMAND...: starts a server that logs "message":"serving" with its rpc_addr;
# sets ADDR.
start_grpc() {
    local name="$1"
    shift
    local log="$WORK/$name.log"
    "$@" 2>"$log" >/dev/null &
    SERVER_PID=$!
    wait_for "$log" '"message":"serving"'
    ADDR="$(grep -m1 '"message":"serving"' "$log" | sed -E 's/.*"rpc_addr":"([^"]+)".*/\1/')"
}

# run_case LABEL TARGET SIZE CASE [FLAGS...]; CASE_SECONDS overrides the time bound.
run_case() {
    local label="$1" target="$2" size="$3" case="$4"
    shift 4
    "$LOADGEN" --target "$target" --addr "$ADDR" --label "$label" --case "$case" \
        --size "$size" --seconds "${CASE_SECONDS:-$SECONDS_PER_CASE}" --results "$RESULTS" "$@"
}

# The gRPC cases, identical for proglog and the echo floor.
grpc_cases() {
    local label="$1" target="$2" size="$3"
    run_case "$label" "$target" "$size" produce-unary --concurrency 1
    run_case "$label" "$target" "$size" produce-unary --concurrency 64
    run_case "$label" "$target" "$size" produce-stream --window 1024
    run_case "$label" "$target" "$size" produce-batch --batch 100 --concurrency 4
    CASE_SECONDS=20 run_case "$label" "$target" "$size" consume --messages "$CONSUME_MESSAGES"
}

echo "== results: one line per case (msgs/s, payload MB/s, latency in microseconds)" >&2
printf '%-17s %-15s %5s %-12s %11s %8s %9s %9s %9s\n' \
    target case bytes shape msgs/s MB/s "p50 us" "p99 us" "p99.9 us"

for durability in interval always; do
    for size in "${SIZES[@]}"; do
        start_grpc "node-$durability-$size" "$NODE" --data-dir "$WORK/node-$durability-$size" \
            --rpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --durability "$durability"
        grpc_cases "proglog-$durability" proglog "$size"
        stop_server
        rm -rf "$WORK/node-$durability-$size"
    done
done

for size in "${SIZES[@]}"; do
    start_grpc "echo-$size" "$LOADGEN" echo-server --rpc-addr 127.0.0.1:0
    grpc_cases echo echo "$size"
    stop_server
done

NATS_PORT="$("$LOADGEN" free-port)"
cat >"$WORK/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
jetstream {
  store_dir: "$WORK/nats"
}
CONF
nats-server -js -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
SERVER_PID=$!
wait_for "$WORK/nats.log" "Server is ready"
ADDR="127.0.0.1:$NATS_PORT"
for size in "${SIZES[@]}"; do
    run_case nats nats "$size" produce-unary --concurrency 1
    run_case nats nats "$size" produce-stream --window 1024
    CASE_SECONDS=20 run_case nats nats "$size" consume --messages "$CONSUME_MESSAGES"
done
stop_server

echo
echo "== summary ($(nproc) cores; nats-server $(nats-server --version 2>&1 | awk '{print $2}'); $SECONDS_PER_CASE s per case)"
"$LOADGEN" report "$RESULTS"
