#!/usr/bin/env bash
# Upload throughput with virus scanning off and on (ClamAV's clamd, started here with a
# one-signature database of its own), 1 MiB files, 1 and 10 connections. Prints one line
# per run: "scan connections uploads/s MB/s p50_ms p99_ms server_cpu_% errors".
#
#   loadtest/upload-scan.sh [DURATION_S] [PORT]
#
# Needs clamd (apt-get install clamav-daemon). Build first:
#   cargo build --release -p confab -p confab-load
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}
PORT=${2:-18102}
WORK=$(mktemp -d /tmp/confab-upload-scan.XXXXXX)
CLAMD_PID=""
PID=""
cleanup() {
    [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    [ -n "$CLAMD_PID" ] && { kill "$CLAMD_PID" 2>/dev/null || true; wait "$CLAMD_PID" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/db"
# One hash signature of a file nobody uploads: clamd needs a database to start.
echo "$(printf unused | sha256sum | cut -d' ' -f1):6:Confab.Bench.Unused:73" > "$WORK/db/bench.hsb"
cat > "$WORK/clamd.conf" <<CONF
Foreground yes
LocalSocket $WORK/clamd.sock
DatabaseDirectory $WORK/db
LogFile $WORK/clamd.log
TemporaryDirectory $WORK
MaxThreads 4
CONF
/usr/sbin/clamd -c "$WORK/clamd.conf" >/dev/null 2>&1 &
CLAMD_PID=$!
for _ in $(seq 100); do [ -S "$WORK/clamd.sock" ] && break; sleep 0.1; done

run() { # scan connections
    local scan=$1 n=$2 data="$WORK/data-$1-$2"
    mkdir -p "$data"
    CONFAB_SERVER_LISTEN=127.0.0.1:$PORT CONFAB_STORE_DATA_DIR=$data \
    CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0 \
    CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 CONFAB_SERVER_LOG_LEVEL=warn \
    CONFAB_UPLOADS_VIRUS_SCAN=$scan CONFAB_UPLOADS_CLAMD_ADDRESS=unix:$WORK/clamd.sock \
    target/release/confab serve >"$data/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local tok
    tok=$(CONFAB_STORE_DATA_DIR=$data target/release/confab token --sub load)
    target/release/confab-load upload --url "ws://127.0.0.1:$PORT" --token "$tok" \
        --connections "$n" --duration-s "$D" --server-pid "$PID" --json 2>/dev/null |
        python3 -c 'import json,sys
d=json.load(sys.stdin); t=d.get("upload_time") or d.get("latency") or {}
print(sys.argv[1], sys.argv[2], d.get("uploads_per_s"), d.get("mb_per_s"), t.get("p50"), t.get("p99"), d.get("server_cpu_percent"), d.get("errors"))' "$scan" "$n"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}
for n in 1 10; do
    run off "$n"
    run clamd "$n"
done
