#!/usr/bin/env bash
# Benchmarks the worker's S3 path against its local path on the same generated input: once read from and written
# to a local lake, once read from and written to S3 (SeaweedFS from scripts/s3server.sh on loopback, started here),
# and with DELAY_MS set, once more through a simulated remote store's latency. Prints, per path, the median wall
# time and how much of it was the run's end after its input (the worker's `finishing_seconds`), rows/s, the
# worker's CPU time, the S3 server's CPU time during the worker's run (it shares the two cores,
# so "S3 is slower" partly means "the server ate CPU"), the delay proxy's CPU where one runs, the worker's peak
# RSS, and the S3/local ratios against the goal (#11: S3 within 1.3x of local wall time, <= 256 MiB).
# A benchmark, not a test: nothing asserts on timings.
#
#   bench/s3.sh [ROWS]        ROWS defaults to 1000000; env: SEED (42), REPS (3),
#                             DELAY_MS (0; e.g. 20: add a path "s3+20ms" whose every request/response round trip
#                             takes 20 ms longer), S3_GOMEMLIMIT (1GiB: the server's soft heap limit, see
#                             start_server), S3_VOLUME_MB (8192: SeaweedFS's volume size, see start_server)
#
# The delay: first choice is `tc qdisc ... netem delay DELAY_MS/2` on `lo` inside a network namespace of this
# script's own (`ip netns add`), with a second S3 server and the worker both run inside it (netem delays each
# packet on egress, and on lo both directions pass it, so a round trip takes DELAY_MS more); the host's
# interfaces are never touched and the namespace is deleted on exit. Kernels without netem (this machine's:
# CONFIG_NET_SCH_NETEM is not set, so `tc` answers "Specified qdisc kind is unknown") get bench/delayproxy
# instead (Go, built here once and cached): a loopback proxy in front of the same server that holds each chunk
# DELAY_MS/2 in each direction.
# The script prints which one it used.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS=${1:-1000000}
SEED=${SEED:-42}
REPS=${REPS:-3}
DELAY_MS=${DELAY_MS:-0}

ensure_time
build_worker
input=$(prepare_input "$ROWS" "$SEED")
work=$(mktemp -d "${TMPDIR:-/tmp}/silverline-s3bench.XXXXXX")
netns=""
proxy_pid=""
cleanup() {
  [ -z "$proxy_pid" ] || kill "$proxy_pid" 2>/dev/null || true
  if [ -n "$netns" ]; then
    ip netns exec "$netns" "$ROOT/scripts/s3server.sh" stop "$work/s3-netns" >/dev/null 2>&1 || true
    ip netns delete "$netns" 2>/dev/null || true
  fi
  "$ROOT/scripts/s3server.sh" stop "$work/s3" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)

# cpu_seconds PID: user + system CPU time of a running process so far.
cpu_seconds() {
  awk -v t="$ticks" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t }' "/proc/$1/stat"
}

# build_delay_proxy: prints the path of bench/delayproxy's binary, built once per source under the cache.
build_delay_proxy() {
  local src=$BENCH_DIR/delayproxy key bin
  key=$(cat "$src/go.mod" "$src/main.go" | sha256sum | cut -c1-16)
  bin=$CACHE_DIR/delayproxy-$key
  if [ ! -x "$bin" ]; then
    mkdir -p "$CACHE_DIR"
    (cd "$src" && env GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" .) >&2
    mv "$bin.tmp" "$bin"
  fi
  echo "$bin"
}

# start_server DIR [EXEC...]: starts SeaweedFS in DIR (inside EXEC, e.g. `ip netns exec NS`), creates the bucket
# and uploads the input. Prints nothing; DIR/env and DIR/pids are the server's.
start_server() {
  local dir=$1
  shift
  # A soft Go heap limit of 1 GiB, not the tests' 192 MiB: at 192 MiB SeaweedFS collected garbage almost without
  # pause during a run (59 % of its CPU, much of it in mark workers Go runs on cores it sees idle — the worker's),
  # again a cost of the stand-in on the shared cores. S3_GOMEMLIMIT overrides it.
  # Volumes of 8 GiB, not the tests' 64 MiB: when its volume is full SeaweedFS grows the next one, and the writes
  # waiting for it stalled a run by ~0.8 s (the slow half of a bimodal spread: S3 runs of 2.2 s and of 3.1 s at
  # 5 M rows, every fourth or so); a bench of REPS=5 at 5 M rows writes ~1.5 GB. S3 has no volumes.
  # S3_VOLUME_MB overrides it.
  "$@" env SILVERLINE_S3_GOMEMLIMIT="${S3_GOMEMLIMIT:-1GiB}" SILVERLINE_S3_VOLUME_MB="${S3_VOLUME_MB:-8192}" \
    "$ROOT/scripts/s3server.sh" start "$dir" >&2
  (
    # shellcheck disable=SC1091
    source "$dir/env"
    sign=(--aws-sigv4 "aws:amz:${AWS_REGION}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
    "$@" curl -sSf -X PUT "${sign[@]}" "$AWS_ENDPOINT_URL/bench" >/dev/null
    # binary/octet-stream (what S3 itself records for an object put without a type): SeaweedFS gzips every chunk
    # it takes for text (curl's -T sends none, and it sniffs the CSV as text/plain) and gunzips it on every GET,
    # which cost 42 % of its CPU during a run — a cost of this stand-in, on the worker's own cores, that S3 does
    # not have. The bytes stored and served are the input's own either way.
    "$@" curl -sSf "${sign[@]}" -H 'Content-Type: binary/octet-stream' -T "$input" \
      "$AWS_ENDPOINT_URL/bench/bronze/transactions.csv" >/dev/null
  )
}

# measure NAME SERVER_DIR|- ENDPOINT|- INPUT LAKE RUN_ID [EXEC...]: one worker run; appends
# "name wall cpu rss_kb server_cpu proxy_cpu" to $work/results.
measure() {
  local name=$1 dir=$2 endpoint=$3 in=$4 lake=$5 id=$6 server_pid="" before=0 proxy_before=0
  shift 6
  if [ "$dir" != - ]; then
    server_pid=$(awk '$1 == "weed" { print $2 }' "$dir/pids")
    before=$(cpu_seconds "$server_pid")
  fi
  [ -z "$proxy_pid" ] || proxy_before=$(cpu_seconds "$proxy_pid")
  (
    if [ "$dir" != - ]; then
      # shellcheck disable=SC1091
      source "$dir/env"
      [ "$endpoint" = - ] || export AWS_ENDPOINT_URL=$endpoint
    fi
    export AWS_EC2_METADATA_DISABLED=true
    "$@" /usr/bin/time -f "%e %U %S %M" -o "$work/one" \
      "$WORKER" run --contract "$BENCH_DIR/contract.yaml" --input "$in" --lake "$lake" --run-id "$id" \
      --progress off >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
  ) || { echo "bench/s3.sh: the worker failed on path $name (stderr above)" >&2; exit 1; }
  local server_cpu=0 proxy_cpu=0
  [ -z "$server_pid" ] || server_cpu=$(awk -v a="$before" -v b="$(cpu_seconds "$server_pid")" 'BEGIN { printf "%.2f", b - a }')
  if [ -n "$proxy_pid" ] && [ "$name" != local ] && [ "$name" != s3 ]; then
    proxy_cpu=$(awk -v a="$proxy_before" -v b="$(cpu_seconds "$proxy_pid")" 'BEGIN { printf "%.2f", b - a }')
  fi
  # The run's end after its input (`finishing_seconds` of its `run finished` line): last row groups, and on S3 the
  # uploads of every file still under S3's 5 MiB part minimum, which can only go up once complete.
  local finishing
  finishing=$(grep -o '"finishing_seconds":[0-9.e+-]*' "$work/stderr" | tail -n1 | cut -d: -f2)
  awk -v n="$name" -v s="$server_cpu" -v p="$proxy_cpu" -v f="${finishing:-0}" \
    '{ printf "%s %s %.2f %s %s %s %s\n", n, $1, $2 + $3, $4, s, p, f }' "$work/one" >>"$work/results"
  tail -n1 "$work/results" | awk '{ printf "  %-10s wall %6.2f s (end %5.2f s)  worker cpu %6.2f s  rss %6.0f MiB  server cpu %5.2f s  proxy cpu %5.2f s\n", $1, $2, $7, $3, $4 / 1024, $5, $6 }' >&2
}

start_server "$work/s3"
delayed="" delayed_dir="" delayed_endpoint=- delayed_exec=()
if [ "$DELAY_MS" != 0 ]; then
  delayed="s3+${DELAY_MS}ms"
  half=$(awk -v d="$DELAY_MS" 'BEGIN { print d / 2 }')
  if command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; then
    netns="silverline-s3bench-$$"
    ip netns add "$netns"
    ip netns exec "$netns" ip link set lo up
    if ip netns exec "$netns" tc qdisc add dev lo root netem delay "${half}ms" 2>"$work/tc.err"; then
      echo "delay: tc netem delay ${half}ms on lo in network namespace $netns (a ${DELAY_MS} ms round trip)" >&2
      delayed_exec=(ip netns exec "$netns")
      delayed_dir=$work/s3-netns
      start_server "$delayed_dir" "${delayed_exec[@]}"
    else
      echo "delay: tc netem unavailable here ($(tr -d '\n' <"$work/tc.err")); using bench/delayproxy" >&2
      ip netns delete "$netns"
      netns=""
    fi
  else
    echo "delay: ip/tc (iproute2) not installed; using bench/delayproxy" >&2
  fi
  if [ -z "$delayed_dir" ]; then
    target=$(awk '$1 == "s3" { print $2 }' "$work/s3/ports")
    [ -n "$target" ] || { echo "bench/s3.sh: no s3 port in $work/s3/ports" >&2; exit 1; }
    "$(build_delay_proxy)" -listen-port-file "$work/proxy.port" -target "127.0.0.1:$target" -delay-ms "$half" &
    proxy_pid=$!
    for _ in $(seq 1 100); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
    [ -s "$work/proxy.port" ] || { echo "bench/s3.sh: the delay proxy did not start" >&2; exit 1; }
    delayed_dir=$work/s3
    delayed_endpoint=http://127.0.0.1:$(cat "$work/proxy.port")
    echo "delay: bench/delayproxy on $delayed_endpoint holds each chunk ${half} ms per direction (a ${DELAY_MS} ms round trip)" >&2
  fi
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq 1 "$REPS"); do
  measure local - - "$input" "$work/lake" "local-$rep"
  measure s3 "$work/s3" - "s3://bench/bronze/transactions.csv" "s3://bench/lake" "s3-$rep"
  if [ -n "$delayed" ]; then
    measure "$delayed" "$delayed_dir" "$delayed_endpoint" "s3://bench/bronze/transactions.csv" "s3://bench/lake" \
      "delayed-$rep" "${delayed_exec[@]}"
  fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

"$PYTHON" - "$work/results" "$ROWS" "$REPS" "$load_before" "$load_after" "$("$WORKER" --version 2>/dev/null)" <<'PY'
import statistics, sys
results, rows, reps, load_before, load_after, version = sys.argv[1:]
rows = int(rows)
runs = {}
for line in open(results):
    name, *values = line.split()
    runs.setdefault(name, []).append([float(v) for v in values])
med = {n: [statistics.median(v[i] for v in r) for i in range(6)] for n, r in runs.items()}
print(f"{version or 'silverline-worker'}: {rows:,} rows; medians of {reps} interleaved runs; "
      f"load average before {load_before}, after {load_after}")
print("| path | wall s | of which the end s | rows/s | worker CPU s | S3 server CPU s | proxy CPU s | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, (wall, cpu, rss, server, proxy, end) in med.items():
    print(f"| {name} | {wall:.2f} | {end:.2f} | {rows / wall / 1e6:.2f} M | {cpu:.2f} | {server:.2f} | {proxy:.2f} "
          f"| {rss / 1024:.0f} |")
local = med["local"]
for name, m in med.items():
    if name == "local":
        continue
    wall_ratio, rss_mib = m[0] / local[0], m[2] / 1024
    met = "met" if wall_ratio <= 1.3 and rss_mib <= 256 else "not met"
    print(f"{name}/local: wall {wall_ratio:.2f}x, peak RSS {m[2] / local[2]:.2f}x ({rss_mib:.0f} MiB); "
          f"worker + server CPU {(m[1] + m[3] + m[4]) / local[1]:.2f}x the local run's; goal (<= 1.3x, <= 256 MiB) {met}")
PY
