#!/usr/bin/env bash
# Side by side on loopback: confab vs the Node `ws` peer, same harness (confab-load),
# alternating runs, ratio confab/peer for each figure. Prints a Markdown table.
#
# usage: loadtest/peers/run.sh [DURATION_S]     (default 10)
# Needs: node + npm (the peer), python3 (to read the JSON summaries).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DUR=${1:-10}
CONFAB_PORT=18300
PEER_PORT=18301
WORK=$(mktemp -d)
trap 'kill $CONFAB_PID $PEER_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build --release -q --manifest-path "$ROOT/Cargo.toml" -p confab -p confab-load
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
LOAD="$ROOT/target/release/confab-load"

CONFAB_SERVER_LISTEN=127.0.0.1:$CONFAB_PORT CONFAB_STORE_DATA_DIR="$WORK/data" \
CONFAB_SERVER_ECHO_PATH=/echo CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0 \
CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 CONFAB_SERVER_LOG_LEVEL=warn \
    "$ROOT/target/release/confab" serve 2>"$WORK/confab.log" &
CONFAB_PID=$!
node "$HERE/server.js" $PEER_PORT >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
sleep 1.5
TOKEN=$(CONFAB_STORE_DATA_DIR="$WORK/data" "$ROOT/target/release/confab" token --sub bench)

pick() { python3 -c "import json,sys; d=json.load(sys.stdin); v=d; [v:=v[k] for k in sys.argv[1].split('.')]; print(v)" "$1"; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }

echo "| figure | confab | node ws | confab/peer |"
echo "|---|---|---|---|"
row() { echo "| $1 | $2 | $3 | $(ratio "$2" "$3") |"; }

for N in 100 1000; do
    C=$("$LOAD" echo --url ws://127.0.0.1:$CONFAB_PORT --path /echo --connections $N --duration-s $DUR --server-pid $CONFAB_PID --json)
    P=$("$LOAD" echo --url ws://127.0.0.1:$PEER_PORT --path /echo --connections $N --duration-s $DUR --server-pid $PEER_PID --json)
    row "echo $N conns, 32 B: msgs/s" "$(echo "$C" | pick msgs_per_s)" "$(echo "$P" | pick msgs_per_s)"
    row "echo $N conns: rtt p99 (us, lower is better)" "$(echo "$C" | pick rtt.p99)" "$(echo "$P" | pick rtt.p99)"
    row "echo $N conns: server CPU %" "$(echo "$C" | pick server_cpu_percent)" "$(echo "$P" | pick server_cpu_percent)"
done

N=1000; R=100
C=$("$LOAD" broadcast --url ws://127.0.0.1:$CONFAB_PORT --token "$TOKEN" --connections $N --rate $R --duration-s $DUR --room peer-bench --json)
P=$("$LOAD" broadcast --url ws://127.0.0.1:$PEER_PORT/broadcast --generic --connections $N --rate $R --duration-s $DUR --json)
row "broadcast $N members x $R msg/s: deliveries/s" "$(echo "$C" | pick deliveries_per_s)" "$(echo "$P" | pick deliveries_per_s)"
row "broadcast: latency p99 (us)" "$(echo "$C" | pick latency.p99)" "$(echo "$P" | pick latency.p99)"
row "broadcast: lost" "$(echo "$C" | pick lost)" "$(echo "$P" | pick lost)"

N=10000
C=$("$LOAD" hold --url ws://127.0.0.1:$CONFAB_PORT --token "$TOKEN" --connections $N --duration-s 8 --server-pid $CONFAB_PID --json)
P=$("$LOAD" hold --url ws://127.0.0.1:$PEER_PORT/echo --generic --connections $N --duration-s 8 --server-pid $PEER_PID --json)
row "hold $N: RSS bytes per connection (lower is better)" "$(echo "$C" | pick server_rss_bytes_per_connection)" "$(echo "$P" | pick server_rss_bytes_per_connection)"
row "hold $N: seconds to open all (lower is better)" "$(echo "$C" | pick open_all_s)" "$(echo "$P" | pick open_all_s)"
echo
echo "confab broadcast note: confab stores every room message in SQLite (ack after COMMIT) and"
echo "sends JSON events; the peer relays raw frames from memory. Same harness, same box."
