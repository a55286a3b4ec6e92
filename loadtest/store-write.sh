#!/usr/bin/env bash
# The store write path, from a fresh data dir: start a release server, run the `write`
# scenario (100 senders, one chat each in flight, ack after COMMIT), print
# "acked/s ack_p50_us ack_p99_us server_cpu_%", stop the server.
#
#   loadtest/store-write.sh [DURATION_S] [PORT]
#
# Extra CONFAB_* variables in the environment reach the server (e.g.
# CONFAB_STORE_SYNCHRONOUS=normal). Build first: cargo build --release -p confab -p confab-load
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-15}
PORT=${2:-18101}
DATA=$(mktemp -d /tmp/confab-store-write.XXXXXX)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
CONFAB_SERVER_LISTEN=127.0.0.1:$PORT CONFAB_STORE_DATA_DIR=$DATA \
CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0 CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 \
CONFAB_SERVER_LOG_LEVEL=warn ${BIN:-target/release/confab} serve >"$DATA/server.log" 2>&1 &
PID=$!
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.1
done
TOK=$(CONFAB_STORE_DATA_DIR=$DATA target/release/confab token --sub load)
target/release/confab-load write --url "ws://127.0.0.1:$PORT" --token "$TOK" \
    --connections 100 --in-flight "${IN:-1}" --duration-s "$D" --server-pid "$PID" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); l=d.get("ack_latency") or d.get("latency") or {}; print(d["acked_per_s"], l.get("p50"), l.get("p99"), d.get("server_cpu_percent"))'
