#!/usr/bin/env bash
# The benchmark: silverline-worker against Polars and DuckDB (bench/peers.py) on the same generated CSV, in one
# invocation. Prints wall time, rows/s, MB/s, CPU time and peak RSS per engine (medians of REPS interleaved runs)
# and silverline's ratios against each peer; fails if the engines disagree on the valid, quarantined or condemned
# counts. A benchmark, not a test: nothing here asserts on timings.
#
#   bench/run.sh [ROWS]          ROWS defaults to 5000000; env: SEED (42), REPS (3), SILVERLINE_CACHE
set -euo pipefail
ROWS=${1:-5000000}
SEED=${SEED:-42}
REPS=${REPS:-3}
source "$(dirname "$0")/lib.sh"

INPUT=$(prepare_input "$ROWS" "$SEED")
build_worker
ensure_peers
ensure_time
"$PYTHON" "$BENCH_DIR/harness.py" bench --input "$INPUT" --worker "$WORKER" --contract "$BENCH_DIR/contract.yaml" \
  --out "$BENCH_DIR/out" --reps "$REPS"
