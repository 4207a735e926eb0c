#!/usr/bin/env bash
# bench/qps_sweep.sh — throughput and TTFT against offered load: our precise routing and
# our round-robin profile (and the peers, with --peers) on simulated workers, open loop at
# each QPS, through bench/serve_vs_peers.sh; then CSVs and SVG plots.
#
#   bench/qps_sweep.sh [OUT_DIR] [--workers 64] [--qps "25 50 100 200"] [--requests 800] [--peers]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=
WORKERS=64
QPS_LIST="25 50 100 200"
REQUESTS=800
ONLY="llmd-precise llmd-round-robin"
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) WORKERS=$2; shift 2 ;;
        --qps) QPS_LIST=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --peers) ONLY="$ONLY sglang-cache-aware vllm-router-cache-aware"; shift ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) OUT=$1; shift ;;
    esac
done
OUT=${OUT:-$ROOT/target/bench-qps/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
for q in $QPS_LIST; do
    bench/serve_vs_peers.sh --sim "$WORKERS" --only "$ONLY" "$OUT/qps-$q" -- \
        --qps "$q" --requests "$REQUESTS" --users $((WORKERS * 2)) --groups $((WORKERS / 2)) \
        --max-tokens 24
done
python3 - "$OUT" $QPS_LIST <<'PY'
import json, os, sys
out, qps = sys.argv[1], sys.argv[2:]
tput = ["series,qps,output tok/s"]
ttft = ["series,qps,TTFT p90 (ms)"]
for q in qps:
    d = os.path.join(out, f"qps-{q}")
    for f in sorted(os.listdir(d)):
        if f.endswith(".json"):
            r = json.load(open(os.path.join(d, f)))
            tput.append(f"{r['label']},{q},{r['output_tok_s']:.2f}")
            ttft.append(f"{r['label']},{q},{r['ttft_ms']['p90']:.2f}")
open(os.path.join(out, "throughput.csv"), "w").write("\n".join(tput) + "\n")
open(os.path.join(out, "ttft_p90.csv"), "w").write("\n".join(ttft) + "\n")
PY
LLMD=$ROOT/target/release/llmd
"$LLMD" bench plot xy "$OUT/throughput.svg" "$OUT/throughput.csv" \
    --title "Output throughput, $WORKERS simulated workers" --x-label "offered requests/s" --y-label "output tok/s"
"$LLMD" bench plot xy "$OUT/ttft_p90.svg" "$OUT/ttft_p90.csv" \
    --title "TTFT p90, $WORKERS simulated workers" --x-label "offered requests/s" --y-label "ms"
cat "$OUT"/qps-*/summary.md
echo "results in $OUT" >&2
