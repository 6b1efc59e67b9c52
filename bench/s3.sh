#!/usr/bin/env bash
# Benchmarks the worker's S3 path so that regressions there are visible: the same generated input, once read from
# and written to a local lake, once read from and written to S3 (SeaweedFS on loopback, started here). Prints the
# median wall time, rows/s, CPU time and peak RSS of each, and the S3/local ratios. A benchmark, not a test.
#   bench/s3.sh [ROWS]        (default 1000000; SEED=42, REPS=3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS=${1:-1000000}
SEED=${SEED:-42}
REPS=${REPS:-3}

ensure_time
build_worker
input=$(prepare_input "$ROWS" "$SEED")
work=$(mktemp -d "${TMPDIR:-/tmp}/silverline-s3bench.XXXXXX")
trap '"$ROOT/scripts/s3server.sh" stop "$work/s3" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$ROOT/scripts/s3server.sh" start "$work/s3" >&2
# shellcheck disable=SC1091
source "$work/s3/env"
sign=(--aws-sigv4 "aws:amz:${AWS_REGION}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
curl -sSf -X PUT "${sign[@]}" "$AWS_ENDPOINT_URL/bench" >/dev/null
curl -sSf "${sign[@]}" -T "$input" "$AWS_ENDPOINT_URL/bench/bronze/transactions.csv" >/dev/null

measure() { # measure NAME INPUT LAKE RUN_ID: appends "name wall cpu rss_kb" to $work/results
  local name=$1 in=$2 lake=$3 id=$4
  /usr/bin/time -f "$name %e %U %S %M" -o "$work/one" \
    "$WORKER" run --contract "$BENCH_DIR/contract.yaml" --input "$in" --lake "$lake" --run-id "$id" --progress off >/dev/null 2>"$work/stderr"
  awk '{printf "%s %s %.2f %s\n", $1, $2, $3 + $4, $5}' "$work/one" >>"$work/results"
}

for rep in $(seq 1 "$REPS"); do
  measure local "$input" "$work/lake" "local-$rep"
  measure s3 "s3://bench/bronze/transactions.csv" "s3://bench/lake" "s3-$rep"
done

"$PYTHON" - "$work/results" "$ROWS" <<'PY'
import statistics, sys
rows = int(sys.argv[2])
runs = {}
for line in open(sys.argv[1]):
    name, wall, cpu, rss = line.split()
    runs.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
med = {n: tuple(statistics.median(v[i] for v in r) for i in range(3)) for n, r in runs.items()}
print(f"{'path':<6} {'wall s':>8} {'rows/s':>10} {'CPU s':>7} {'peak RSS MiB':>13}")
for name in ("local", "s3"):
    wall, cpu, rss = med[name]
    print(f"{name:<6} {wall:>8.2f} {rows / wall / 1e6:>9.2f}M {cpu:>7.2f} {rss / 1024:>13.0f}")
print(f"s3/local: wall {med['s3'][0] / med['local'][0]:.2f}x, peak RSS {med['s3'][2] / med['local'][2]:.2f}x")
PY
