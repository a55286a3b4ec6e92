#!/usr/bin/env bash
# Two confab builds side by side with the same harness: hold, echo, broadcast, chat,
# resume and the store write path, each scenario on a fresh server and data dir, the two
# builds alternating. Prints one Markdown table (before / after).
#
#   loadtest/before-after.sh BEFORE_BIN AFTER_BIN [DURATION_S]
#
# e.g. git worktree add /tmp/base <commit> && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/tb \
#      cargo build --release -p confab) && loadtest/before-after.sh /tmp/tb/release/confab \
#      target/release/confab 10
# Needs target/release/confab-load (cargo build --release -p confab-load) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1
AFTER=$2
D=${3:-10}
LOAD=target/release/confab-load
PORT=18400
WORK=$(mktemp -d /tmp/confab-ba.XXXXXX)
PID=
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

# start BIN [extra env...]: a fresh server; sets PID and TOK
start() {
    local bin=$1; shift
    PORT=$((PORT + 1))
    rm -rf "$WORK/data"
    # A build that knows server.max_connections_per_ip must not cap the harness.
    local ip=()
    if grep -aq max_connections_per_ip "$bin"; then
        ip=(CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0)
    fi
    env CONFAB_SERVER_LISTEN=127.0.0.1:$PORT CONFAB_STORE_DATA_DIR="$WORK/data" \
        CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 \
        CONFAB_SERVER_ECHO_PATH=/echo CONFAB_SERVER_LOG_LEVEL=warn "${ip[@]}" "$@" \
        "$bin" serve >"$WORK/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    TOK=$(CONFAB_STORE_DATA_DIR="$WORK/data" "$bin" token --sub load)
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; }
pick() { python3 -c "import json,sys; d=json.load(sys.stdin); v=d
for k in sys.argv[1].split('.'): v=v[k]
print(round(v,2) if isinstance(v,float) else v)" "$1"; }

declare -A R
run() { # name bin
    local name=$1 bin=$2 j
    start "$bin"
    j=$($LOAD hold --url ws://127.0.0.1:$PORT --token "$TOK" --connections 10000 --duration-s 8 --server-pid $PID --json)
    R[$name.hold]=$(echo "$j" | pick server_rss_bytes_per_connection)
    stop
    for n in 100 1000; do
        start "$bin"
        j=$($LOAD echo --url ws://127.0.0.1:$PORT --path /echo --connections $n --duration-s "$D" --server-pid $PID --json)
        R[$name.echo$n]="$(echo "$j" | pick msgs_per_s) msgs/s, rtt p99 $(echo "$j" | pick rtt.p99), CPU $(echo "$j" | pick server_cpu_percent)%"
        stop
    done
    for m in 1000 5000; do
        start "$bin"
        j=$($LOAD broadcast --url ws://127.0.0.1:$PORT --token "$TOK" --connections $m --rate 100 --duration-s "$D" --room ba --server-pid $PID --json)
        R[$name.bcast$m]="$(echo "$j" | pick deliveries_per_s)/s, lost $(echo "$j" | pick lost), dup $(echo "$j" | pick duplicated), p50 $(echo "$j" | pick latency.p50), p99 $(echo "$j" | pick latency.p99)"
        stop
    done
    start "$bin" CONFAB_LLM_WORKERS=1100 CONFAB_LLM_QUEUE=100 CONFAB_LLM_DEMO_TOKENS_PER_S=20
    sleep 4
    j=$($LOAD chat --url ws://127.0.0.1:$PORT --token "$TOK" --connections 1000 --rate 20 --duration-s 30 --server-pid $PID --json)
    R[$name.chat]="added p99 $(echo "$j" | pick token_added_latency.p99), first token p99 $(echo "$j" | pick first_token.p99), reordered $(echo "$j" | pick reordered), mismatches $(echo "$j" | pick text_mismatches)"
    stop
    start "$bin"
    j=$($LOAD resume --url ws://127.0.0.1:$PORT --token "$TOK" --connections 200 --json)
    R[$name.resume]="$(echo "$j" | pick rebuilt_exactly) / 200 exact"
    stop
    start "$bin"
    j=$($LOAD write --url ws://127.0.0.1:$PORT --token "$TOK" --connections 100 --duration-s "$D" --server-pid $PID --json)
    R[$name.write]="$(echo "$j" | pick acked_per_s)/s, p50 $(echo "$j" | pick ack_latency.p50), p99 $(echo "$j" | pick ack_latency.p99)"
    stop
}
run before "$BEFORE"
run after "$AFTER"
echo "| figure | before | after |"
echo "|---|---|---|"
for k in hold echo100 echo1000 bcast1000 bcast5000 chat resume write; do
    echo "| $k | ${R[before.$k]} | ${R[after.$k]} |"
done
