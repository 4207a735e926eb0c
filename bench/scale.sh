#!/usr/bin/env bash
# bench/scale.sh — how the scheduler and cache-manager cost grows with the cluster: for each
# worker count, simulated workers (one `llmd worker --sim` process), a cache-manager and our
# scheduler (precise prefix + load), an open-loop shared-prefix load at a fixed QPS; then the
# scheduler's decisions/s and decision latency (its own histogram: tokenizing, the
# cache-manager's score, picking), the cache-manager's event ingest, and the CPU each used.
#
#   bench/scale.sh [OUT_DIR] [--workers "16 64 256"] [--qps 500] [--requests 5000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=
COUNTS="16 64 256"
QPS=500
REQUESTS=5000
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) COUNTS=$2; shift 2 ;;
        --qps) QPS=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) OUT=$1; shift ;;
    esac
done
OUT=${OUT:-$ROOT/target/bench-scale/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

cargo build --release --locked -p llmd >&2
LLMD=$ROOT/target/release/llmd
MODEL=$("$LLMD" model fetch | cut -f3)
BASE=${LLMD_BENCH_PORT:-20000}
SCHED=$((BASE - 10)); CM=$((BASE - 11)); EV=$((BASE - 12))
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
cpu_s() { # PID: user+system CPU seconds so far
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

echo "| workers | QPS offered | requests/s done | success | decision p50 (ms) | decision p99 (ms) | scheduler CPU / request (µs) | cache-manager events/s | cache-manager CPU (% of a core) | TTFT p99 (ms) |" > "$OUT/summary.md"
echo "|---|---|---|---|---|---|---|---|---|---|" >> "$OUT/summary.md"
echo "series,workers,ms" > "$OUT/scale.csv"
for n in $COUNTS; do
    echo "== $n workers" >&2
    "$LLMD" cache-manager --host 127.0.0.1 --port "$CM" --events-bind "tcp://127.0.0.1:$EV" > "$OUT/cm-$n.log" 2>&1 &
    cm_pid=$!; PIDS+=($cm_pid)
    # Fast simulated steps: the point is the scheduler's and cache-manager's cost, not the
    # workers' (which would only queue the load).
    LLMD_LOG=warn "$LLMD" worker --sim --sim-replicas "$n" --sim-step-ms 1 --sim-prefill-ms-per-token 0.01 \
        --sim-decode-ms-per-seq 0.1 --model "$MODEL" --port "$BASE" \
        --kv-events-endpoint "tcp://127.0.0.1:$EV" > "$OUT/workers-$n.log" 2>&1 &
    PIDS+=($!)
    args=(scheduler --host 127.0.0.1 --port "$SCHED" --cache-manager "http://127.0.0.1:$CM")
    for i in $(seq 0 $((n - 1))); do
        wait_http "http://127.0.0.1:$((BASE + i))/health"
        args+=(--worker "http://127.0.0.1:$((BASE + i))")
    done
    "$LLMD" "${args[@]}" > "$OUT/scheduler-$n.log" 2>&1 &
    s_pid=$!; PIDS+=($s_pid)
    wait_http "http://127.0.0.1:$SCHED/health"
    wait_http "http://127.0.0.1:$CM/health"
    sleep 2
    s0=$(cpu_s "$s_pid"); c0=$(cpu_s "$cm_pid"); t0=$(date +%s.%N)
    e0=$(curl -s "http://127.0.0.1:$CM/metrics" | awk '/^llmd_cache_manager_events_total/ {s += $2} END {print s + 0}')
    "$LLMD" bench serve --url "http://127.0.0.1:$SCHED" --qps "$QPS" --requests "$REQUESTS" \
        --users $((n * 4)) --max-tokens 8 --label "scale-$n" --json "$OUT/scale-$n.json" | tee "$OUT/scale-$n.txt"
    s1=$(cpu_s "$s_pid"); c1=$(cpu_s "$cm_pid"); t1=$(date +%s.%N)
    curl -s "http://127.0.0.1:$SCHED/metrics" > "$OUT/scheduler-$n.metrics"
    curl -s "http://127.0.0.1:$CM/metrics" > "$OUT/cm-$n.metrics"
    python3 - "$OUT" "$n" "$QPS" "$s0" "$s1" "$c0" "$c1" "$t0" "$t1" "$e0" >> "$OUT/summary.md" <<'PY'
import json, sys
out, n, qps, s0, s1, c0, c1, t0, t1, e0 = sys.argv[1:]
n = int(n)
r = json.load(open(f"{out}/scale-{n}.json"))
def buckets(text, name):
    b = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            b.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(b)
def quantile(b, q):
    # Linear interpolation inside the bucket, as Prometheus's histogram_quantile does.
    total = b[-1][1]
    if total == 0:
        return float("nan")
    want, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in b:
        if c >= want:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le
sm = open(f"{out}/scheduler-{n}.metrics").read()
cm = open(f"{out}/cm-{n}.metrics").read()
b = buckets(sm, "llmd_scheduler_decision_seconds")
events = sum(float(l.rsplit(" ", 1)[1]) for l in cm.splitlines() if l.startswith("llmd_cache_manager_events_total"))
wall = float(t1) - float(t0)
done = r["succeeded"]
with open(f"{out}/scale.csv", "a") as csv:
    csv.write(f"decision p50,{n},{quantile(b, 0.5) * 1e3:.4f}\n")
    csv.write(f"decision p99,{n},{quantile(b, 0.99) * 1e3:.4f}\n")
print(f"| {n} | {qps} | {r['requests_s']:.0f} | {r['success_rate'] * 100:.1f}% | "
      f"{quantile(b, 0.5) * 1e3:.2f} | {quantile(b, 0.99) * 1e3:.2f} | "
      f"{(float(s1) - float(s0)) / max(done, 1) * 1e6:.0f} | {(events - float(e0)) / wall:.0f} | "
      f"{(float(c1) - float(c0)) / wall * 100:.0f}% | {r['ttft_ms']['p99']:.1f} |")
PY
    stop_all
done
cat "$OUT/summary.md"
"$LLMD" bench plot xy "$OUT/scale.svg" "$OUT/scale.csv" --log-x \
    --title "Scheduler decision latency at $QPS requests/s" --x-label "simulated workers" --y-label "ms"
echo "results in $OUT" >&2
