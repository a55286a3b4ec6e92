#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (cargo-fuzz on the nightly toolchain), one after
# the other, starting from the seed corpus in corpus/<target>. Prints one line per
# target with its executions; a crash stops with the reproducer under artifacts/.
#
#   tests/fuzz/run.sh [SECONDS]        (default 60)
# Needs: rustup toolchain nightly, cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
S=${1:-60}
for t in ws_frames http_head client_msg sse config dialects; do
    mkdir -p "work/$t"
    log=$(mktemp)
    if ! cargo +nightly fuzz run --fuzz-dir . "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$S" -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
        tail -40 "$log"
        echo "$t: CRASH (see artifacts/$t)"
        exit 1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "$t: ${runs:-?} in ${S} s, ${cov:-cov ?}, no crash"
    rm -f "$log"
done
