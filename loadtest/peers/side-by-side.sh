#!/usr/bin/env bash
# confab and the peer servers side by side, the way BENCHMARKS.md reports them: each server
# pinned to CPU 0, the load generator (confab-load) pinned to CPU 1, every figure measured
# on a freshly started server, servers alternated within a round (the order rotates each
# round), ROUNDS rounds; prints the median and spread per server and confab / best peer.
#
#   loadtest/peers/side-by-side.sh [ROUNDS] [DURATION_S]          (default 3 rounds, 10 s)
#
# Env:
#   SERVERS  [confab uws tt nodews]   which servers; a peer that is not built is skipped
#   FIGURES  [echo100 echo1000 bcast1000 bcast5000 idle10k room10k]
#   CONFAB   [target/release/confab]  the confab binary (CONFAB_B: a second one, "confab-b")
#   PEERS    [../shared/tools/peers]  the peers' start.sh (built with its build.sh)
#   OUT      [a temp dir]             raw JSON per run lands in $OUT/runs.jsonl (emptied first:
#                                     the summary is of this run only)
#
# Peers speak raw text frames (`confab-load --generic`); confab is driven through its own
# native protocol (/echo for echo, a room for broadcast and the in-room hold), so confab's
# deliveries carry its JSON envelope and every room message is committed to SQLite first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${1:-3}
DUR=${2:-10}
SERVERS=${SERVERS:-confab uws tt nodews}
FIGURES=${FIGURES:-echo100 echo1000 bcast1000 bcast5000 idle10k room10k}
CONFAB=${CONFAB:-$ROOT/target/release/confab}
PEERS=${PEERS:-$ROOT/../shared/tools/peers}
OUT=${OUT:-$(mktemp -d /tmp/side-by-side.XXXXXX)}
LOAD="$ROOT/target/release/confab-load"
PORT=18400
mkdir -p "$OUT"
: >"$OUT/runs.jsonl"
[ -x "$LOAD" ] || { echo "build first: cargo build --release -p confab -p confab-load" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PID=""
DATA=""
stop() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    # a peer started by start.sh is not our child: wait until it is gone (5 s, then KILL)
    for _ in $(seq 100); do
        [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -9 "$PID" 2>/dev/null || true; fi
    PID=""
    if [ -n "$DATA" ]; then rm -rf "$DATA"; DATA=""; fi
}
trap stop EXIT

# start NAME KIND: start one server pinned to CPU 0 on $PORT; sets PID (and DATA for confab)
start() {
    local name=$1 kind=$2
    PORT=$((PORT + 1))
    case $name in
        confab|confab-b)
            local bin=$CONFAB
            [ "$name" = confab-b ] && bin=$CONFAB_B
            DATA=$(mktemp -d /tmp/side-by-side-data.XXXXXX)
            CONFAB_SERVER_LISTEN=127.0.0.1:$PORT CONFAB_STORE_DATA_DIR=$DATA CONFAB_SERVER_SHARDS=1 \
            CONFAB_SERVER_ECHO_PATH=/echo CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 \
            CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0 CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 \
            CONFAB_SERVER_LOG_LEVEL=warn taskset -c 0 "$bin" serve >"$DATA/server.log" 2>&1 &
            PID=$!
            for _ in $(seq 100); do
                curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
                sleep 0.1
            done
            echo "confab did not start:" >&2; cat "$DATA/server.log" >&2; return 1 ;;
        *)
            PID=$(SERVER_CPU=0 "$PEERS/start.sh" "$name" "$PORT" "$kind") ;;
    esac
}

available() {
    case $1 in
        confab) [ -x "$CONFAB" ] ;;
        confab-b) [ -n "${CONFAB_B:-}" ] && [ -x "$CONFAB_B" ] ;;
        nodews) command -v node >/dev/null && [ -d "${NODE_DIR:-$HOME/.cache/confab-peers/node}/node_modules/ws" ] ;;
        uws) [ -x "${BIN:-$HOME/.cache/confab-peers/bin}/uws_echo" ] ;;
        tt) [ -x "${BIN:-$HOME/.cache/confab-peers/bin}/tt_echo" ] ;;
        *) return 1 ;;
    esac
}

# measure NAME FIGURE: one run; appends {"server","figure","round","result"} to runs.jsonl
measure() {
    local name=$1 fig=$2 round=$3 native=1 kind=echo args=()
    case $name in confab|confab-b) ;; *) native=0 ;; esac
    case $fig in
        echo100|echo1000)
            args=(echo --connections "${fig#echo}" --duration-s "$DUR")
            if [ $native = 1 ]; then args+=(--path /echo); fi ;;
        bcast1000|bcast5000)
            kind=room
            args=(broadcast --connections "${fig#bcast}" --rate 100 --duration-s "$DUR")
            if [ $native = 1 ]; then args+=(--room bench); else args+=(--generic); fi ;;
        idle10k)
            args=(hold --connections 10000 --duration-s 8)
            if [ $native = 0 ]; then args+=(--generic); fi ;;
        room10k)
            kind=room
            args=(hold --connections 10000 --duration-s 8)
            if [ $native = 1 ]; then args+=(--in-room --room bench); else args+=(--generic); fi ;;
        *) echo "unknown figure $fig" >&2; return 1 ;;
    esac
    start "$name" "$kind"
    local url="ws://127.0.0.1:$PORT"
    if [ $native = 1 ]; then
        args+=(--token "$(CONFAB_STORE_DATA_DIR=$DATA "$CONFAB" token --sub bench)")
    fi
    local r
    r=$(taskset -c 1 "$LOAD" "${args[@]}" --url "$url" --server-pid "$PID" --json 2>/dev/null || echo null)
    stop
    printf '{"server":"%s","figure":"%s","round":%d,"result":%s}\n' "$name" "$fig" "$round" "${r:-null}" >>"$OUT/runs.jsonl"
    echo "  $fig $name: $(echo "$r" | head -c 160)" >&2
}

servers=()
for s in $SERVERS; do
    if available "$s"; then servers+=("$s"); else echo "skipping $s (not built)" >&2; fi
done
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    for fig in $FIGURES; do
        # rotate the order each round so no server always runs first (or last)
        n=${#servers[@]}
        for k in $(seq 0 $((n - 1))); do
            measure "${servers[$(((k + round - 1) % n))]}" "$fig" "$round"
        done
    done
done
python3 "$HERE/summarize.py" "$OUT/runs.jsonl"
echo "raw runs: $OUT/runs.jsonl" >&2
