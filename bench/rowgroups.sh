#!/usr/bin/env bash
# What readers gain from larger silver row groups (bench/rowgroups.py): runs the worker once on the generated input,
# rewrites its silver output with pyarrow at several row-group sizes (zstd 3, as the worker) and times DuckDB,
# Polars and pyarrow queries on each set. A benchmark, not a test: nothing asserts on timings.
#
#   bench/rowgroups.sh [ROWS]     ROWS defaults to 5000000; env: SEED (42), REPS (5), SIZES (rows per group,
#                                 comma-separated; default 16Ki,64Ki,128Ki,512Ki,1Mi)
set -euo pipefail
ROWS=${1:-5000000}
SEED=${SEED:-42}
REPS=${REPS:-5}
source "$(dirname "$0")/lib.sh"

INPUT=$(prepare_input "$ROWS" "$SEED")
build_worker
ensure_peers
lake=$BENCH_DIR/out/rowgroups-lake
rm -rf "$lake"
trap 'rm -rf "$lake"' EXIT
"$WORKER" run --contract "$BENCH_DIR/contract.yaml" --input "$INPUT" --lake "$lake" --run-id bench --progress off >/dev/null
"$PYTHON" "$BENCH_DIR/rowgroups.py" --silver "$lake/silver/transactions/schema_v=v1/run_id=bench" --reps "$REPS" \
  ${SIZES:+--sizes "$SIZES"}
