#!/usr/bin/env python3
"""Summarize side-by-side.sh runs: median [min-max] per server and figure, and the ratio
confab / best peer (for every row: below 1.00 means confab is better when lower is better,
above 1.00 when higher is better). Prints a Markdown table.

usage: summarize.py runs.jsonl
"""
import json
import statistics
import sys

# (figure, label, extract(result) -> number or None, lower_is_better)
def cpu_us_per_msg(r):
    cpu, n = r.get("server_cpu_percent"), r.get("msgs_per_s")
    return cpu * 1e4 / n if cpu is not None and n else None

def ms(path):
    def get(r):
        v = r
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        return v / 1000.0 if v is not None else None
    return get

def kib_per_conn(r):
    v = r.get("server_rss_bytes_per_connection")
    return v / 1024.0 if v is not None else None

ROWS = []
for n in ("100", "1000"):
    f = "echo" + n
    ROWS += [
        (f, f"echo {n} conns: server µs per message", cpu_us_per_msg, True),
        (f, f"echo {n} conns: msgs/s", lambda r: r.get("msgs_per_s"), False),
        (f, f"echo {n} conns: rtt p99 ms", ms("rtt.p99"), True),
        (f, f"echo {n} conns: load generator's CPU % (100: the harness bounds the figure)", lambda r: r.get("load_cpu_percent"), True),
    ]
for n in ("1000", "5000"):
    f = "bcast" + n
    ROWS += [
        (f, f"broadcast {n} × 100/s: p50 ms", ms("latency.p50"), True),
        (f, f"broadcast {n} × 100/s: p99 ms", ms("latency.p99"), True),
        (f, f"broadcast {n} × 100/s: server µs per delivery", lambda r: r.get("server_us_per_delivery"), True),
        (f, f"broadcast {n} × 100/s: lost (of expected)", lambda r: (r.get("lost") or 0) / max(r.get("expected_deliveries") or 1, 1), True),
        (f, f"broadcast {n} × 100/s: load generator's CPU % (from the first send to 2 s after the last)", lambda r: r.get("load_cpu_percent"), True),
    ]
ROWS += [
    ("idle10k", "idle 10k: KiB per connection", kib_per_conn, True),
    ("room10k", "10k in a room (confab: authenticated): KiB per connection", kib_per_conn, True),
]


def main(path):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    servers = []
    for r in runs:
        if r["server"] not in servers:
            servers.append(r["server"])
    peers = [s for s in servers if not s.startswith("confab")]
    rounds = max((r["round"] for r in runs), default=0)
    print(f"| figure ({rounds} rounds: median [min–max]) | " + " | ".join(servers) + " | confab / best peer |")
    print("|---" * (len(servers) + 2) + "|")
    for fig, label, get, lower in ROWS:
        vals = {}
        for s in servers:
            xs = []
            for r in runs:
                if r["server"] == s and r["figure"] == fig and isinstance(r["result"], dict):
                    v = get(r["result"])
                    if v is not None:
                        xs.append(float(v))
            vals[s] = xs
        if not any(vals.values()):
            continue
        cells = []
        med = {}
        for s in servers:
            xs = vals[s]
            if not xs:
                cells.append("—")
                continue
            med[s] = statistics.median(xs)
            cells.append(f"{fmt(med[s])} [{fmt(min(xs))}–{fmt(max(xs))}]")
        peer_meds = [med[p] for p in peers if p in med]
        ratio = "—"
        if "confab" in med and peer_meds:
            best = min(peer_meds) if lower else max(peer_meds)
            ratio = f"{med['confab'] / best:.2f}" if best else "—"
        arrow = "lower is better" if lower else "higher is better"
        print(f"| {label} ({arrow}) | " + " | ".join(cells) + f" | {ratio} |")


def fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.2f}"
    return f"{v:.4f}"


if __name__ == "__main__":
    main(sys.argv[1])
