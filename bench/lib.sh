# Shared by the bench scripts (sourced): the processes they start, and waiting for them.
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT

wait_http() { # URL [seconds]
    local deadline=$((SECONDS + ${2:-120}))
    until curl -sf -o /dev/null "$1"; do
        [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $1" >&2; return 1; }
        sleep 0.2
    done
}
