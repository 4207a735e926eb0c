#!/usr/bin/env bash
# Single-stream engine speed, llmd next to llama.cpp, same machine, same model, same thread
# count, alternating runs so that both see the same machine state.
#   bench/engine_vs_llamacpp.sh [THREADS] [ROUNDS]
# Needs: a release build (cargo build --release) and llama-cpp-python
# (python3 -m pip install llama-cpp-python; builds llama.cpp, ~16 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
ROUNDS=${2:-3}
LLMD=target/release/llmd
MODEL=$("$LLMD" model fetch | cut -f3)
python3 -c "import llama_cpp" 2>/dev/null || { echo "llama-cpp-python is not installed: python3 -m pip install llama-cpp-python" >&2; exit 1; }
out=$(mktemp)
for r in $(seq "$ROUNDS"); do
    "$LLMD" bench engine --json --threads "$THREADS" --runs 5 | sed 's/^/llmd /' >>"$out"
    python3 bench/llamacpp_ref.py speed "$MODEL" --threads "$THREADS" --runs 5 | sed 's/^/llama.cpp /' >>"$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {"llmd": [], "llama.cpp": []}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    rows[name].append(json.loads(js))
def med(name, key):
    return statistics.median(r[key] for r in rows[name])
print(f"{'':10} {'prefill tok/s':>14} {'decode tok/s':>13}   (median of {len(rows['llmd'])} rounds x 5 runs)")
for n in rows:
    print(f"{n:10} {med(n, 'prefill_tok_s'):>14.1f} {med(n, 'decode_tok_s'):>13.1f}")
print(f"{'ratio':10} {med('llmd', 'prefill_tok_s') / med('llama.cpp', 'prefill_tok_s'):>13.2f}x "
      f"{med('llmd', 'decode_tok_s') / med('llama.cpp', 'decode_tok_s'):>12.2f}x")
PY
rm -f "$out"
