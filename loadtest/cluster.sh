#!/usr/bin/env bash
# Cluster mode figures on one machine: a throwaway PostgreSQL (initdb into a temp dir, as
# the postgres user when root) and nats-server on loopback, two release confab nodes
# (built with --features cluster), then confab-load against one node and against both.
# Prints one line per figure. Bounded: each run lasts DURATION_S seconds.
#
#   loadtest/cluster.sh [DURATION_S] [all|broadcast|write]
#
# Build first: cargo build --release --features cluster -p confab && cargo build --release -p confab-load
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}
BIN=target/release/confab
LOAD=target/release/confab-load
PGBIN=$(command -v pg_ctl >/dev/null && dirname "$(command -v pg_ctl)" || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
TMP=$(mktemp -d /tmp/confab-cluster-bench.XXXXXX)
PIDS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres:postgres "$TMP"
PGPORT=25432; NATSPORT=24222; A=28080; B=28081
as_pg "$PGBIN/initdb" -D "$TMP/pg" -A trust -U confab --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -o "-p $PGPORT -k $TMP -c listen_addresses=127.0.0.1 -c max_connections=300" -l "$TMP/pg.log" -w start >/dev/null
psql -h 127.0.0.1 -p $PGPORT -U confab -d postgres -qc "CREATE DATABASE confab"
nats-server -a 127.0.0.1 -p $NATSPORT >/dev/null 2>&1 & PIDS+=($!)
export CONFAB_AUTH_JWT_SECRET=bench-secret-bench-secret-bench-secret
export CONFAB_CLUSTER_POSTGRES_URL="host=127.0.0.1 port=$PGPORT user=confab dbname=confab"
export CONFAB_CLUSTER_NATS_URL=nats://127.0.0.1:$NATSPORT
export CONFAB_SERVER_MAX_CONNECTIONS_PER_USER=1000000 CONFAB_SERVER_MAX_CONNECTIONS_PER_IP=0
export CONFAB_LIMITS_RATE_MAX_MESSAGES=100000000 CONFAB_SERVER_LOG_LEVEL=warn
for n in a b; do
    port=$A; [ $n = b ] && port=$B
    CONFAB_CLUSTER_NODE_ID=$n CONFAB_SERVER_LISTEN=127.0.0.1:$port CONFAB_STORE_DATA_DIR=$TMP/data-$n \
        $BIN serve >"$TMP/$n.log" 2>&1 & PIDS+=($!)
done
for port in $A $B; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
done
TOK=$(CONFAB_CLUSTER_NODE_ID=a $BIN token --sub load)
summary() { python3 -c 'import json,sys
d=json.load(sys.stdin)
l=d.get("latency") or d.get("ack_latency") or d.get("delivery_latency") or {}
keys=[k for k in ("acked_per_s","delivered","expected","lost","received","sent") if k in d]
print(" ".join(f"{k}={d[k]}" for k in keys), "p50={} p99={} p999={}".format(l.get("p50"),l.get("p99"),l.get("p999")))'; }
run() { local label=$1; shift; printf '%-44s ' "$label"; $LOAD "$@" --duration-s "$D" --json 2>/dev/null | summary; }
WHAT=${2:-all}
if [ "$WHAT" = all ] || [ "$WHAT" = broadcast ]; then
run "broadcast 1000 x 100/s, one node" broadcast --url ws://127.0.0.1:$A --dev-tokens --connections 1000 --rate 100 --room r1
run "broadcast 1000 x 100/s, two nodes" broadcast --url ws://127.0.0.1:$A --url ws://127.0.0.1:$B --dev-tokens --connections 1000 --rate 100 --room r2
fi
if [ "$WHAT" = all ] || [ "$WHAT" = write ]; then
run "write 100 senders, one node" write --url ws://127.0.0.1:$A --token "$TOK" --connections 100
run "write 100 senders, two nodes" write --url ws://127.0.0.1:$A --url ws://127.0.0.1:$B --token "$TOK" --connections 100
run "write 100 senders, one node (again)" write --url ws://127.0.0.1:$A --token "$TOK" --connections 100
run "write 100 senders, node b only" write --url ws://127.0.0.1:$B --token "$TOK" --connections 100
# BURN=1: the same with a busy loop on the other core (an idle CPU's wake-up cost is what
# limits a lone writer's round trips to PostgreSQL on this VM; see BENCHMARKS.md).
if [ -n "${BURN:-}" ]; then
    ( while :; do :; done ) & BP=$!
    run "write 100 senders, one node, a busy loop beside" write --url ws://127.0.0.1:$A --token "$TOK" --connections 100
    kill $BP
fi
fi
