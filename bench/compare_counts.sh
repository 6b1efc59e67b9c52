#!/usr/bin/env bash
# Checks that silverline-worker and both peers (bench/peers.py) give the same input, valid, quarantined and
# condemned counts, the same quarantine error types and the same rows in each output, on a generated input.
# Exit 1 on any difference.
#
#   bench/compare_counts.sh [ROWS] [SEED]       defaults: 200000 rows, seed 3
set -euo pipefail
ROWS=${1:-200000}
SEED=${2:-3}
source "$(dirname "$0")/lib.sh"

INPUT=$(prepare_input "$ROWS" "$SEED")
build_worker
ensure_peers
"$PYTHON" "$BENCH_DIR/harness.py" counts --input "$INPUT" --worker "$WORKER" --contract "$BENCH_DIR/contract.yaml" \
  --out "$BENCH_DIR/out"
