#!/usr/bin/env bash
# bench/serve_vs_peers.sh — our scheduler (precise prefix + load), our round-robin profile,
# sglang-router (cache_aware) and vllm-router (cache_aware) in front of the same workers,
# one after the other, each on freshly started workers, with the same `llmd bench serve`
# workload; then a table of ratios.
#
#   bench/serve_vs_peers.sh [--sim N] [--workers N] [--worker-args "FLAGS"]
#                           [--routing-config FILE|builtin] [--only "RUN..."] [OUT_DIR]
#                           [-- BENCH_SERVE_ARGS...]
#
# "llmd precise" routes with bench/routing-precise.yaml (llm-d's default weights plus its
# no-hit-lru-scorer); `--routing-config builtin` uses the scheduler's built-in default.
# Real workers (default: 4 × the default model, one thread each) or `--sim N` simulated
# workers (one `llmd worker --sim --sim-replicas N` process). The peers are installed from
# pip into target/peerenv; a peer that cannot be installed or started is reported as such.
# Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SIM=0
WORKERS=4
OUT=
WORKER_ARGS=
ROUTING=$ROOT/bench/routing-precise.yaml
ONLY="llmd-precise llmd-round-robin sglang-cache-aware vllm-router-cache-aware"
while [ $# -gt 0 ]; do
    case "$1" in
        --sim) SIM=1; WORKERS=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --worker-args) WORKER_ARGS=$2; shift 2 ;;
        --routing-config) ROUTING=$2; [ "$2" = builtin ] || ROUTING=$(realpath "$2"); shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --) shift; break ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) OUT=$1; shift ;;
    esac
done
EXTRA=("$@")
OUT=${OUT:-$ROOT/target/bench-serve/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
LOGS=$OUT/logs
mkdir -p "$LOGS"

cargo build --release --locked -p llmd >&2
LLMD=$ROOT/target/release/llmd
MODEL=$("$LLMD" model fetch | cut -f3)

PEERENV=$ROOT/target/peerenv
peers_ok=1
if ! "$PEERENV/bin/python" -c 'import sglang_router, vllm_router' 2>/dev/null; then
    echo "installing sglang-router and vllm-router into $PEERENV" >&2
    { python3 -m venv "$PEERENV" && "$PEERENV/bin/python" -m pip install -q --disable-pip-version-check sglang-router vllm-router; } \
        > "$LOGS/peer-install.log" 2>&1 || peers_ok=0
fi

BASE=${LLMD_BENCH_PORT:-19000}
ROUTER_PORT=$((BASE + 900))
CM_PORT=$((BASE + 901))
EV_PORT=$((BASE + 902))
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

URLS=()
start_workers() { # LOG_PREFIX
    URLS=()
    "$LLMD" cache-manager --host 127.0.0.1 --port "$CM_PORT" --events-bind "tcp://127.0.0.1:$EV_PORT" \
        > "$LOGS/$1-cache-manager.log" 2>&1 &
    PIDS+=($!)
    local ev=(--kv-events-endpoint "tcp://127.0.0.1:$EV_PORT")
    if [ "$SIM" = 1 ]; then
        # shellcheck disable=SC2086 # WORKER_ARGS is a list of flags
        LLMD_LOG=warn "$LLMD" worker --sim --sim-replicas "$WORKERS" --model "$MODEL" --port "$BASE" "${ev[@]}" $WORKER_ARGS \
            > "$LOGS/$1-workers.log" 2>&1 &
        PIDS+=($!)
    else
        for i in $(seq 0 $((WORKERS - 1))); do
            # shellcheck disable=SC2086
            "$LLMD" worker --model "$MODEL" --threads 1 --port $((BASE + i)) "${ev[@]}" $WORKER_ARGS \
                > "$LOGS/$1-worker$i.log" 2>&1 &
            PIDS+=($!)
        done
    fi
    for i in $(seq 0 $((WORKERS - 1))); do
        URLS+=("http://127.0.0.1:$((BASE + i))")
        wait_http "${URLS[$i]}/health"
    done
    wait_http "http://127.0.0.1:$CM_PORT/health"
}

RUNS=()
run_one() { # LABEL ROUTER_FUNCTION
    local label=$1
    case " $ONLY " in *" $label "*) ;; *) return 0 ;; esac
    echo "== $label" >&2
    start_workers "$label"
    "$2" > "$LOGS/$label-router.log" 2>&1 &
    PIDS+=($!)
    if ! wait_http "http://127.0.0.1:$ROUTER_PORT/health" 180; then
        echo "$label: the router did not start (see $LOGS/$label-router.log)" | tee -a "$OUT/skipped.txt" >&2
        stop_all
        return 0
    fi
    # Every router must see every worker before the load starts, or the first (cold)
    # requests of each group pile onto the workers seen first, and prefix affinity keeps
    # them there. The peers wait for all workers at start; ours says how many it sees.
    if [[ $label == llmd-* ]]; then
        local deadline=$((SECONDS + 120))
        until [ "$(curl -s "http://127.0.0.1:$ROUTER_PORT/v1/llmd/workers" | python3 -c 'import json, sys; print(sum(w["healthy"] for w in json.load(sys.stdin)["workers"]))' 2>/dev/null)" = "$WORKERS" ]; do
            [ $SECONDS -lt $deadline ] || { echo "$label: not every worker became healthy" >&2; break; }
            sleep 0.5
        done
    fi
    sleep 2 # the routers' first load reads
    "$LLMD" bench serve --url "http://127.0.0.1:$ROUTER_PORT" --label "$label" \
        --json "$OUT/$label.json" "${EXTRA[@]}" | tee "$OUT/$label.txt"
    RUNS+=("$label")
    curl -s "http://127.0.0.1:$ROUTER_PORT/metrics" > "$LOGS/$label-router.metrics" || true
    for u in "${URLS[@]}"; do
        printf '%s ' "$u"
        curl -s "$u/metrics" | awk '/^vllm:request_success_total/ {s += $2} END {print s + 0, "requests"}'
    done > "$LOGS/$label-spread.txt"
    stop_all
}

# Each router runs in front of the worker URLs start_workers just set.
llmd_scheduler() { # PROFILE
    local args=(scheduler --host 127.0.0.1 --port "$ROUTER_PORT" --profile "$1")
    if [ "$1" = default ]; then
        args+=(--cache-manager "http://127.0.0.1:$CM_PORT")
        [ "$ROUTING" = builtin ] || args+=(--routing-config "$ROUTING")
    fi
    for u in "${URLS[@]}"; do args+=(--worker "$u"); done
    exec "$LLMD" "${args[@]}"
}
llmd_precise() { llmd_scheduler default; }
llmd_round_robin() { llmd_scheduler round-robin; }
sglang_cache_aware() {
    exec "$PEERENV/bin/python" -m sglang_router.launch_router --worker-urls "${URLS[@]}" \
        --policy cache_aware --host 127.0.0.1 --port "$ROUTER_PORT" \
        --prometheus-host 127.0.0.1 --prometheus-port $((BASE + 903))
}
vllm_router_cache_aware() {
    exec "$PEERENV/bin/vllm-router" --worker-urls "${URLS[@]}" \
        --policy cache_aware --host 127.0.0.1 --port "$ROUTER_PORT" \
        --prometheus-host 127.0.0.1 --prometheus-port $((BASE + 904))
}

run_one llmd-precise llmd_precise
run_one llmd-round-robin llmd_round_robin
if [ "$peers_ok" = 1 ]; then
    run_one sglang-cache-aware sglang_cache_aware
    run_one vllm-router-cache-aware vllm_router_cache_aware
else
    echo "peers: pip could not install sglang-router / vllm-router (see $LOGS/peer-install.log)" | tee -a "$OUT/skipped.txt" >&2
fi

# The table: every run against our round-robin profile and against our precise routing.
{
    echo "Workers: $WORKERS $([ "$SIM" = 1 ] && echo simulated || echo "real ($MODEL)") $WORKER_ARGS; routing config: ${ROUTING:-default}; bench serve ${EXTRA[*]}"
    echo
    echo "| router | TTFT p50 (ms) | TTFT p90 (ms) | TTFT p99 (ms) | ITL p50 (ms) | E2E p90 (ms) | output tok/s | success | p90 TTFT vs round-robin | p90 TTFT vs llmd precise |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for r in "${RUNS[@]}"; do
        python3 - "$OUT" "$r" <<'PY'
import json, os, sys
out, r = sys.argv[1], sys.argv[2]
def load(n):
    p = os.path.join(out, n + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
x, rr, pr = load(r), load("llmd-round-robin"), load("llmd-precise")
ratio = lambda ref: f"{x['ttft_ms']['p90'] / ref['ttft_ms']['p90']:.2f}x" if ref else "-"
print(f"| {r} | {x['ttft_ms']['p50']:.0f} | {x['ttft_ms']['p90']:.0f} | {x['ttft_ms']['p99']:.0f} | "
      f"{x['itl_ms']['p50']:.1f} | {x['e2e_ms']['p90']:.0f} | {x['output_tok_s']:.1f} | "
      f"{x['success_rate'] * 100:.0f}% | {ratio(rr)} | {ratio(pr)} |")
PY
    done
    if [ -f "$OUT/skipped.txt" ]; then echo; cat "$OUT/skipped.txt"; fi
} | tee "$OUT/summary.md"
echo "results in $OUT" >&2
