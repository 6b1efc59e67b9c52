#!/usr/bin/env bash
# The worker's memory beside its key state (bench/memory.py): runs silverline-worker on generated inputs of each
# size, interleaved (1 M, 10 M, 1 M, 10 M, ...), and prints per run the peak RSS, the key state the run reports
# (`ledger_bytes` of its `run finished` line) and the rest, then the rest of the largest size against the smallest,
# run by run, with the median — #11's "flat ±20 % from 1 M to 10 M rows apart from the key state". A benchmark,
# not a test: nothing here asserts on the figures.
#
#   bench/memory.sh [ROWS ...]   ROWS default to 1000000 10000000; env: SEED (42), REPS (5), SILVERLINE_CACHE,
#                                SILVERLINE_WORKER_BIN (measure that binary), THREADS (the worker's default)
set -euo pipefail
SEED=${SEED:-42}
REPS=${REPS:-5}
source "$(dirname "$0")/lib.sh"
[ $# -gt 0 ] || set -- 1000000 10000000

inputs=()
for rows in "$@"; do inputs+=("$(prepare_input "$rows" "$SEED")"); done
build_worker
ensure_time
"$PYTHON" "$BENCH_DIR/memory.py" --worker "$WORKER" --contract "$BENCH_DIR/contract.yaml" --reps "$REPS" \
  ${THREADS:+--threads "$THREADS"} "${inputs[@]}"
