#!/usr/bin/env bash
# bench/overload.sh: what 2,000 consumers that never read cost a node and the producers beside
# them, measured in one run on this machine.
#
#   bench/overload.sh                       # about a minute
#   SECONDS_PER_CASE=10 IDLE_STREAMS=4000 bench/overload.sh
#
# Builds proglog-node and proglog-loadgen in release, starts one node on 127.0.0.1 (fresh temp
# data dir, `--durability always`), fills its log with 256 MiB of 16 KiB records, then runs the
# same case twice: one producer awaiting each Produce of 1 KiB (produce-unary, concurrency 1),
# first alone, then while IDLE_STREAMS ConsumeStreams from offset 0 sit open without reading a
# record (each wants the whole log). Prints both runs, the p99 ratio (loaded / unloaded; the
# bound the node holds itself to is 2x) and the node's peak resident memory (the bound is
# 256 MB). Everything started is stopped on exit; installs nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_CASE="${SECONDS_PER_CASE:-5}"
IDLE_STREAMS="${IDLE_STREAMS:-2000}"

echo "== building (release)" >&2
cargo build --release --quiet -p proglog-node -p proglog-bench
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
NODE="$TARGET_DIR/release/proglog-node"
LOADGEN="$TARGET_DIR/release/proglog-loadgen"

WORK="$(mktemp -d -t proglog-overload.XXXXXX)"
RESULTS="$WORK/results.jsonl"
NODE_PID=""
cleanup() {
    if [[ -n "$NODE_PID" ]]; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$NODE" --id bench --data-dir "$WORK/data" --rpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --durability always 2>"$WORK/node.log" >/dev/null &
NODE_PID=$!
deadline=$((SECONDS + 20))
until grep -q '"message":"serving"' "$WORK/node.log" 2>/dev/null; do
    if ! kill -0 "$NODE_PID" 2>/dev/null || ((SECONDS > deadline)); then
        echo "bench/overload.sh: the node did not start; its log:" >&2
        cat "$WORK/node.log" >&2
        exit 1
    fi
    sleep 0.05
done
ADDR="$(grep -m1 '"message":"serving"' "$WORK/node.log" | sed -E 's/.*"rpc_addr":"([^"]+)".*/\1/')"

echo "== filling the log with 256 MiB" >&2
"$LOADGEN" --target proglog --addr "$ADDR" --case produce-batch --size 16384 --batch 64 \
    --concurrency 2 --messages 16384 --seconds 600 >/dev/null

run_case() {
    "$LOADGEN" --target proglog --addr "$ADDR" --case produce-unary --concurrency 1 --size 1024 \
        --seconds "$SECONDS_PER_CASE" --results "$RESULTS" "$@"
}
echo "== produce-unary c=1, 1 KiB: alone, then beside $IDLE_STREAMS streams that never read" >&2
run_case --label alone
run_case --label "idle-streams" --idle-streams "$IDLE_STREAMS"

peak_kib="$(awk '/^VmHWM:/ {print $2}' "/proc/$NODE_PID/status")"
python3 - "$RESULTS" "$peak_kib" "$IDLE_STREAMS" <<'PY'
import json, sys
rows = {row["label"]: row for row in map(json.loads, open(sys.argv[1]))}
alone, loaded = rows["alone"], rows["idle-streams"]
peak_mb = int(sys.argv[2]) * 1024 / 1e6
print()
print(f"== summary: produce p99 {loaded['p99_us']} us beside {sys.argv[3]} idle streams, "
      f"{alone['p99_us']} us alone")
print(f"p99 ratio (loaded / alone): {loaded['p99_us'] / alone['p99_us']:.2f}x (bound: 2x)")
print(f"throughput ratio (loaded / alone): {loaded['msgs_per_s'] / alone['msgs_per_s']:.2f}x")
print(f"node peak resident memory: {peak_mb:.0f} MB (bound: 256 MB)")
PY
