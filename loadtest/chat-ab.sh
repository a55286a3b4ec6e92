#!/usr/bin/env bash
# The chat scenario alone (1,000 AI streams started at once, 20 tok/s, 30 s), two builds
# alternating for ROUNDS rounds: one line per run with the added token latency p50/p99
# (µs), the first-token p99 (µs), server CPU %, reordered tokens and text mismatches.
#
#   loadtest/chat-ab.sh BEFORE_BIN AFTER_BIN [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000
LOAD=target/release/confab-load
PORT=18600
for round in $(seq "${3:-3}"); do
    for bin in "$1" "$2"; do
        PORT=$((PORT + 1))
        D=$(mktemp -d)
        ip=()
        if grep -aq max_connections_per_ip "$bin"; then ip=(CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0); fi
        env CONFAB_SERVER_LISTEN=127.0.0.1:$PORT CONFAB_STORE_DATA_DIR="$D" \
            CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 \
            CONFAB_SERVER_LOG_LEVEL=warn CONFAB_LLM_WORKERS=1100 CONFAB_LLM_QUEUE=100 \
            CONFAB_LLM_DEMO_TOKENS_PER_S=20 "${ip[@]}" "$bin" serve >"$D/log" 2>&1 &
        PID=$!
        sleep 4
        TOK=$(CONFAB_STORE_DATA_DIR="$D" "$bin" token --sub load)
        j=$($LOAD chat --url ws://127.0.0.1:$PORT --token "$TOK" --connections 1000 --rate 20 \
            --duration-s 30 --server-pid $PID --json)
        echo "$round $bin $(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); a=d["token_added_latency"]; print("added", a["p50"], a["p99"], "first", d["first_token"]["p99"], "cpu", d["server_cpu_percent"], "reordered", d["reordered"], "mismatches", d["text_mismatches"])')"
        kill $PID
        wait $PID 2>/dev/null || true
        rm -rf "$D"
    done
done
