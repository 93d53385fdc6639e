#!/usr/bin/env bash
# bench/cluster.sh: a 3-node proglog cluster against a 3-node NATS JetStream cluster (R3), and
# proglog's leader failover time, measured in one run on this machine.
#
#   bench/cluster.sh        # about 6-8 minutes
#   SECONDS_PER_CASE=10 SIZES="1024" FAILOVER_RUNS=5 bench/cluster.sh
#
# Builds proglog-node and proglog-loadgen in release, then on 127.0.0.1 only, one system at a
# time, each in fresh temp dirs on free ports:
#
# 1. proglog, 3 voters, `--durability always` (an acknowledged record is fsynced on a majority:
#    the leader and one follower). Waits for a leader (Admin/ClusterStatus), runs the cases
#    against it at each size, then measures failover FAILOVER_RUNS times: under a steady unary
#    produce load (c=1, 1 KiB) `proglog-loadgen failover` kills -9 the leader and times the
#    first produce a survivor acknowledges; the killed node is restarted on the same data dir
#    and ports and the next run waits until it has caught up.
# 2. proglog, 3 voters, `--durability interval` (no fsync before the acknowledgement: the
#    like-for-like comparison with JetStream 2.9).
# 3. nats-server x3 with JetStream, one cluster over routes, a file-storage stream with 3
#    replicas per record size; the loadgen talks to the server that leads the stream. JetStream
#    2.9 acknowledges once a quorum of replicas has the message, WITHOUT fsync.
#
# 4. The gRPC floor: one `proglog-loadgen echo-server` (the same `log.v1.Log` service over
#    tonic, storing and replicating nothing), under the same unary cases. No replicated log
#    served over gRPC can beat it, so its rows say how much of a gap to JetStream's own
#    protocol is gRPC's: a replicated commit costs at least two gRPC round trips (client to
#    leader, leader to follower and back), each as dear as one echo call.
#
# Cases: produce-unary c=1, produce-unary c=64, produce-stream (window 1024), produce-batch
# (100 records a call, 4 callers; NATS has none, its row is compared with NATS produce-stream).
# Prints each result as it comes, then the table, proglog/NATS and proglog/floor ratios with
# both p99s, and the failover times with their median. Everything started is stopped on exit.
# Needs `nats-server` on PATH (Debian/Ubuntu: `apt-get install nats-server`); installs nothing.
#
# CORES_EACH=N gives every server N cores' worth of threads (proglog `--worker-threads N`,
# nats-server GOMAXPROCS=N, the echo server TOKIO_WORKER_THREADS=N), as CPU limits would in a
# real deployment; unset, each uses its default (one thread per core of the machine).
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_CASE="${SECONDS_PER_CASE:-5}"
read -r -a SIZES <<<"${SIZES:-1024 100}"
FAILOVER_RUNS="${FAILOVER_RUNS:-3}"
ELECTION_TIMEOUT_MS="${ELECTION_TIMEOUT_MS:-1000}"
CORES_EACH="${CORES_EACH:-}"
NODE_THREADS=()
if [[ -n "$CORES_EACH" ]]; then
    NODE_THREADS=(--worker-threads "$CORES_EACH")
fi

if ! command -v nats-server >/dev/null 2>&1; then
    echo "bench/cluster.sh: nats-server not found; install it with: apt-get install nats-server" >&2
    exit 1
fi

echo "== building (release)" >&2
cargo build --release --quiet -p proglog-node -p proglog-bench
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
NODE="$TARGET_DIR/release/proglog-node"
LOADGEN="$TARGET_DIR/release/proglog-loadgen"

WORK="$(mktemp -d -t proglog-cluster.XXXXXX)"
RESULTS="$WORK/results.jsonl"
PIDS=() # every process started and not yet stopped

stop_pid() {
    local pid="$1" kept=() p
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ "$p" == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]+"${kept[@]}"}")
}
stop_all() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for PID LOGFILE PATTERN [SECONDS]: polls until the log of process PID shows PATTERN.
wait_for() {
    local pid="$1" log="$2" pattern="$3" limit="${4:-20}"
    local deadline=$((SECONDS + limit))
    until grep -q "$pattern" "$log" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench/cluster.sh: process $pid exited early; its log ($log):" >&2
            cat "$log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "bench/cluster.sh: not ready after $limit s; log $log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# free_ports N: sets PORTS to N distinct free ports on 127.0.0.1.
free_ports() {
    PORTS=()
    local port p dup
    while ((${#PORTS[@]} < $1)); do
        port="$("$LOADGEN" free-port)"
        dup=0
        for p in "${PORTS[@]+"${PORTS[@]}"}"; do
            [[ "$p" == "$port" ]] && dup=1
        done
        ((dup)) || PORTS+=("$port")
    done
}

# --- proglog ---------------------------------------------------------------------------------

NODE_PID=()
RPC_PORT=()
HTTP_PORT=()
GOSSIP_PORT=()
NODES=""
PEERS=""
JOIN=""
CLUSTER_DIR=""
DURABILITY=""
STARTS=0

# start_node I: starts node nI of the current cluster (its data dir survives restarts), with
# gossip on loopback too (the peers' RPC addresses are also given up front).
start_node() {
    local i="$1"
    STARTS=$((STARTS + 1))
    local log="$CLUSTER_DIR/n$i.$STARTS.log"
    "$NODE" --id "n$i" --data-dir "$CLUSTER_DIR/n$i" \
        --rpc-addr "127.0.0.1:${RPC_PORT[$i]}" --http-addr "127.0.0.1:${HTTP_PORT[$i]}" \
        --gossip-addr "127.0.0.1:${GOSSIP_PORT[$i]}" --join "$JOIN" \
        --initial-voters n0,n1,n2 --peers "$PEERS" --durability "$DURABILITY" \
        --election-timeout-ms "$ELECTION_TIMEOUT_MS" --log-format json \
        "${NODE_THREADS[@]+"${NODE_THREADS[@]}"}" 2>"$log" >/dev/null &
    NODE_PID[i]=$!
    PIDS+=("$!")
    wait_for "$!" "$log" '"message":"serving"' 120
}

# start_cluster DURABILITY: three fresh voters; sets LEADER once one is elected.
start_cluster() {
    DURABILITY="$1"
    CLUSTER_DIR="$WORK/proglog-$DURABILITY"
    mkdir -p "$CLUSTER_DIR"
    free_ports 9
    RPC_PORT=("${PORTS[@]:0:3}")
    HTTP_PORT=("${PORTS[@]:3:3}")
    GOSSIP_PORT=("${PORTS[@]:6:3}")
    JOIN="127.0.0.1:${GOSSIP_PORT[0]},127.0.0.1:${GOSSIP_PORT[1]},127.0.0.1:${GOSSIP_PORT[2]}"
    NODES="127.0.0.1:${RPC_PORT[0]},127.0.0.1:${RPC_PORT[1]},127.0.0.1:${RPC_PORT[2]}"
    PEERS="n0=127.0.0.1:${RPC_PORT[0]},n1=127.0.0.1:${RPC_PORT[1]},n2=127.0.0.1:${RPC_PORT[2]}"
    local i
    for i in 0 1 2; do
        start_node "$i"
    done
    LEADER="$("$LOADGEN" leader --nodes "$NODES" --timeout-seconds 30)"
    echo "== proglog --durability $DURABILITY: 3 voters, leader at $LEADER" >&2
}

stop_cluster() {
    local i
    for i in 0 1 2; do
        stop_pid "${NODE_PID[$i]}"
    done
    rm -rf "$CLUSTER_DIR"
}

# run_case LABEL TARGET ADDR SIZE CASE [FLAGS...]
run_case() {
    local label="$1" target="$2" addr="$3" size="$4" case="$5"
    shift 5
    "$LOADGEN" --target "$target" --addr "$addr" --label "$label" --case "$case" \
        --size "$size" --seconds "$SECONDS_PER_CASE" --results "$RESULTS" "$@"
}

# proglog_case LABEL SIZE CASE [FLAGS...]: against the leader; if the case fails (say the
# leadership moved under load), finds the leader again and retries once.
proglog_case() {
    local label="$1" size="$2"
    shift 2
    if ! run_case "$label" proglog "$LEADER" "$size" "$@"; then
        echo "bench/cluster.sh: case failed against $LEADER; retrying once on the current leader" >&2
        LEADER="$("$LOADGEN" leader --nodes "$NODES" --timeout-seconds 30)"
        run_case "$label" proglog "$LEADER" "$size" "$@"
    fi
}

proglog_cases() {
    local label="$1" size
    for size in "${SIZES[@]}"; do
        proglog_case "$label" "$size" produce-unary --concurrency 1
        proglog_case "$label" "$size" produce-unary --concurrency 64
        proglog_case "$label" "$size" produce-stream --window 1024
        proglog_case "$label" "$size" produce-batch --batch 100 --concurrency 4
    done
}

# failover_runs LABEL: kill -9 the leader under load FAILOVER_RUNS times, restarting the killed
# node and waiting for it to catch up before the next run.
failover_runs() {
    local label="$1" run killed i
    for ((run = 1; run <= FAILOVER_RUNS; run++)); do
        "$LOADGEN" leader --nodes "$NODES" --caught-up --timeout-seconds 120 >/dev/null
        "$LOADGEN" failover --nodes "$NODES" \
            --pids "${NODE_PID[0]},${NODE_PID[1]},${NODE_PID[2]}" \
            --size 1024 --warmup-seconds 3 --label "$label" --results "$RESULTS"
        killed="$(tail -n 1 "$RESULTS" | sed -E 's/.*"killed_pid":([0-9]+).*/\1/')"
        for i in 0 1 2; do
            if [[ "${NODE_PID[$i]}" == "$killed" ]]; then
                stop_pid "$killed" # reaps it
                start_node "$i"
            fi
        done
    done
    "$LOADGEN" leader --nodes "$NODES" --caught-up --timeout-seconds 120 >/dev/null
}

# --- NATS JetStream ----------------------------------------------------------------------------

NATS_PID=()
NATS_ADDRS=""

start_nats_cluster() {
    free_ports 6
    local client=("${PORTS[@]:0:3}") route=("${PORTS[@]:3:3}") i
    local routes="nats-route://127.0.0.1:${route[0]}, nats-route://127.0.0.1:${route[1]}, nats-route://127.0.0.1:${route[2]}"
    for i in 0 1 2; do
        cat >"$WORK/nats-s$i.conf" <<CONF
server_name: s$i
listen: 127.0.0.1:${client[$i]}
jetstream {
  store_dir: "$WORK/nats/s$i"
}
cluster {
  name: bench
  listen: 127.0.0.1:${route[$i]}
  routes: [$routes]
}
CONF
        if [[ -n "$CORES_EACH" ]]; then
            GOMAXPROCS="$CORES_EACH" nats-server -c "$WORK/nats-s$i.conf" >"$WORK/nats-s$i.log" 2>&1 &
        else
            nats-server -c "$WORK/nats-s$i.conf" >"$WORK/nats-s$i.log" 2>&1 &
        fi
        NATS_PID[i]=$!
        PIDS+=("$!")
    done
    for i in 0 1 2; do
        wait_for "${NATS_PID[$i]}" "$WORK/nats-s$i.log" "Server is ready"
    done
    NATS_ADDRS="127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
    echo "== nats-server x3, JetStream cluster at $NATS_ADDRS" >&2
}

stop_nats_cluster() {
    local i
    for i in 0 1 2; do
        stop_pid "${NATS_PID[$i]}"
    done
}

# --- the gRPC floor ----------------------------------------------------------------------------

ECHO_PID=""
ECHO_ADDR=""

start_echo() {
    local log="$WORK/echo.log"
    if [[ -n "$CORES_EACH" ]]; then
        TOKIO_WORKER_THREADS="$CORES_EACH" "$LOADGEN" echo-server --rpc-addr 127.0.0.1:0 2>"$log" &
    else
        "$LOADGEN" echo-server --rpc-addr 127.0.0.1:0 2>"$log" &
    fi
    ECHO_PID=$!
    PIDS+=("$!")
    wait_for "$ECHO_PID" "$log" '"message":"serving"'
    ECHO_ADDR="$(grep -o '"rpc_addr":"[^"]*"' "$log" | head -n 1 | cut -d'"' -f4)"
    echo "== gRPC floor: echo server at $ECHO_ADDR" >&2
}

# --- the run ---------------------------------------------------------------------------------

echo "== results: one line per case (msgs/s, payload MB/s, latency in microseconds)" >&2
printf '%-17s %-15s %5s %-12s %11s %8s %9s %9s %9s\n' \
    target case bytes shape msgs/s MB/s "p50 us" "p99 us" "p99.9 us"

start_cluster always
proglog_cases proglog-always
echo "== failover: kill -9 the leader under unary produce load, $FAILOVER_RUNS times" \
    "(bash reports each killed leader as 'Killed')" >&2
failover_runs proglog-always
stop_cluster

start_cluster interval
proglog_cases proglog-interval
stop_cluster

start_nats_cluster
for size in "${SIZES[@]}"; do
    run_case nats-r3 nats "$NATS_ADDRS" "$size" produce-unary --concurrency 1 --replicas 3
    run_case nats-r3 nats "$NATS_ADDRS" "$size" produce-unary --concurrency 64 --replicas 3
    run_case nats-r3 nats "$NATS_ADDRS" "$size" produce-stream --window 1024 --replicas 3
done
stop_nats_cluster

start_echo
for size in "${SIZES[@]}"; do
    run_case echo-floor echo "$ECHO_ADDR" "$size" produce-unary --concurrency 1
    run_case echo-floor echo "$ECHO_ADDR" "$size" produce-unary --concurrency 64
done
stop_pid "$ECHO_PID"

echo
echo "== summary: 3 nodes each on 127.0.0.1 ($(nproc) cores shared by all of them and the load" \
    "generator); nats-server $(nats-server --version 2>&1 | awk '{print $2}'); $SECONDS_PER_CASE s per case;" \
    "election timeout $ELECTION_TIMEOUT_MS ms; threads per server: ${CORES_EACH:-default (one per core)}"
echo "   proglog-always:   acknowledged once committed on a majority, fsynced on each of them"
echo "   proglog-interval: acknowledged once committed on a majority, fsync every second (like-for-like with NATS)"
echo "   nats-r3:          JetStream 2.9, R3, acknowledged once a quorum has it, WITHOUT fsync"
echo "   echo-floor:       one tonic server answering log.v1.Log calls, storing and replicating nothing"
"$LOADGEN" report "$RESULTS" --against nats-r3
echo
"$LOADGEN" report "$RESULTS" --against echo-floor | sed -n '/^PROGLOG vs/,/^$/p'
