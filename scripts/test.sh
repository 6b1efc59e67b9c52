#!/usr/bin/env bash
# Runs every Silverline test: formatting and lints, unit and property tests, end-to-end tests of the worker
# binary, and the integration tests against the real services this script builds (cached) and starts on
# loopback. Idempotent; safe to run on a fresh clone as root or as a user.
set -euo pipefail
cd "$(dirname "$0")/.."
export SILVERLINE_CACHE="${SILVERLINE_CACHE:-$HOME/.cache/silverline}"
mkdir -p "$SILVERLINE_CACHE"

# Tests reach loopback only: never the cloud instance-metadata endpoint for credentials (the lake crate refuses
# an S3 client that would fall back to it while this is set).
export AWS_EC2_METADATA_DISABLED=true

step() { printf '\n==> %s\n' "$*" >&2; }

step "toolchain"
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc -D warnings"
# Broken or private intra-doc links fail here rather than rot: the API docs are read (kube's CRD docs, ours).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# ---- BEGIN operator: test Kubernetes control plane (owned by the operator; see operator/README.md) ----
# Builds (cached) and starts etcd, kube-apiserver and kube-controller-manager on loopback for the operator's
# integration tests (operator/tests/: api_validation, lifecycle, promotion), which run with the workspace tests below.
# A control plane that cannot be built or started fails this script: `set -e` stops here, nothing is skipped.
# Exit traps are chained so that other sections' cleanups still run.
add_exit_trap() {
  local previous
  previous="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
  trap "${previous:+$previous; }$1" EXIT
}
step "test control plane (build, cached, and start)"
cp_bin="$(scripts/controlplane.sh bindir 2>/dev/null || true)"
[[ -x "$cp_bin/kube-apiserver" ]] ||
  echo "first run on this machine: building the test services (Kubernetes control plane, S3 server) from their Go modules takes ~20-25 minutes once; later runs reuse them from $SILVERLINE_CACHE" >&2
scripts/controlplane.sh build >/dev/null
SILVERLINE_CP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/silverline-cp.XXXXXX")"
add_exit_trap 'scripts/controlplane.sh stop "$SILVERLINE_CP_DIR" || true; rm -rf "$SILVERLINE_CP_DIR"'
scripts/controlplane.sh start "$SILVERLINE_CP_DIR"
# shellcheck disable=SC1091
source "$SILVERLINE_CP_DIR/env" # KUBECONFIG and SILVERLINE_CP_*
# One operator scenario runs the worker and operator on an S3 lake: its test starts its own SeaweedFS server.
step "S3 test server binary (built once, cached)"
scripts/s3server.sh build >/dev/null
# Every test target (and the worker binary the test kubelet runs) is built once, by the same workspace command
# that runs them below, so no crate is compiled twice with other features.
step "build every test target (and the worker binary for the test kubelet)"
cargo test --workspace --locked --no-run
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
export SILVERLINE_WORKER_BIN="$target_dir/debug/silverline-worker"
[[ -x "$SILVERLINE_WORKER_BIN" ]] || { echo "no worker binary at $SILVERLINE_WORKER_BIN" >&2; exit 1; }
# ---- END operator ----

# ---- BEGIN worker: S3-compatible server (SeaweedFS, see tests/s3server/README.md) ----
# Builds (cached) and starts SeaweedFS on loopback for the worker's S3 tests (worker/tests/s3.rs: conditional
# writes, the promotion pointer's If-Match replace, a promotion end to end, S3 runs, access denied, retry budget,
# SIGKILL and SIGTERM crash safety). They are #[ignore]d in a
# plain `cargo test` and run below with --include-ignored; a server that cannot be built or started fails this script.
step "S3 test server (build, cached, and start)"
scripts/s3server.sh build >/dev/null
SILVERLINE_S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/silverline-s3.XXXXXX")"
add_exit_trap 'scripts/s3server.sh stop "$SILVERLINE_S3_DIR" || true; rm -rf "$SILVERLINE_S3_DIR"'
scripts/s3server.sh start "$SILVERLINE_S3_DIR"
# shellcheck disable=SC1091
source "$SILVERLINE_S3_DIR/env" # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... and the read-only test identity
# ---- END worker ----

# ---- BEGIN ship: workflows, Argo CD health checks, example manifests, static binaries (docs/operations.md) ----
# actionlint (pinned in tests/tools/actionlint) on .github/workflows; tests/argocd-health (Go): the Argo CD health
# checks of examples/argocd run with gopher-lua as Argo CD runs them on samples of every phase, and every example
# manifest has a fixed valid name and passes a server-side dry run on the control plane above; then the static
# (glibc, crt-static) binaries that go into the images, built by the images' own script with the dev profile (CI's
# image job builds the release profile) and run: the worker's quick start, the same run to S3 in an empty root,
# the operator's --help. Cold: a build of both binaries for the explicit target (~7 min on 2 idle cores); warm:
# ~10 s.
step "actionlint on .github/workflows"
"$(scripts/gotool.sh path actionlint)" .github/workflows/*.yml
step "Argo CD health checks and example manifests (tests/argocd-health)"
(cd tests/argocd-health && SILVERLINE_REQUIRE_CP=1 GOWORK=off go test -count=1 ./...)
step "static binaries as in the images, and runs of them (one in an empty root, against S3 by name)"
mapfile -t static_bins < <(scripts/build-static.sh --quick)
[[ "${static_bins[0]##*/}" == silverline-worker && "${static_bins[1]##*/}" == silverline-operator ]] ||
  { echo "scripts/build-static.sh printed '${static_bins[*]}', expected the worker's and the operator's paths" >&2; exit 1; }
static_lake="$(mktemp -d "${TMPDIR:-/tmp}/silverline-static.XXXXXX")"
add_exit_trap 'rm -rf "$static_lake"'
# quick_start_counts SUCCESS_FILE: fails unless that _SUCCESS has the quick start's counts.
quick_start_counts() {
  python3 - "$1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
counts = (report["valid_rows_count"], report["quarantined_rows_count"], report["condemned_rows_count"])
assert counts == (2964, 25, 11), f"{sys.argv[1]}: the static worker's counts {counts} are not the quick start's (2964, 25, 11)"
PY
}
# An empty environment: a static binary needs no loader, no libc and no variable to run.
env -i "${static_bins[0]}" run --contract examples/datasets/transactions.yaml --input examples/data/transactions.csv \
  --lake "$static_lake" --run-id static-check --progress off
quick_start_counts "$static_lake/silver/transactions/schema_v=v1/run_id=static-check/_SUCCESS"
env -i "${static_bins[1]}" --help >/dev/null
# A root with only what distroless/static and a container runtime give the binary — /etc/hosts, the CA bundle,
# /dev/random and /dev/urandom (the getrandom crate falls back to them in a static binary: without them the
# worker refuses to start, checked below) and /tmp; no loader, no libc, no NSS modules: the static worker writes a run to the S3 server
# by a name only that /etc/hosts knows, so glibc's static getaddrinfo resolves it (scripts/build-static.sh).
# chroot and mknod need root, which .ci/run has.
if [[ "$(id -u)" == 0 ]]; then
  jail="$static_lake/root"
  mkdir -p "$jail/etc/ssl/certs" "$jail/tmp" "$jail/in" "$jail/dev"
  mknod -m 444 "$jail/dev/random" c 1 8
  mknod -m 444 "$jail/dev/urandom" c 1 9
  cp /etc/ssl/certs/ca-certificates.crt "$jail/etc/ssl/certs/"
  cp "${static_bins[0]}" "$jail/silverline-worker"
  cp examples/datasets/transactions.yaml examples/data/transactions.csv "$jail/in/"
  echo "127.0.0.1 s3.silverline.test" >"$jail/etc/hosts"
  s3_port="${AWS_ENDPOINT_URL##*:}"
  curl -sSf -X PUT --aws-sigv4 "aws:amz:${AWS_REGION}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    "$AWS_ENDPOINT_URL/static-check" >/dev/null
  env -i AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
    AWS_REGION="$AWS_REGION" AWS_EC2_METADATA_DISABLED=true \
    "$(command -v chroot)" "$jail" /silverline-worker run --contract /in/transactions.yaml --input /in/transactions.csv \
    --lake s3://static-check/lake --s3-endpoint "http://s3.silverline.test:$s3_port" --spill-dir /tmp \
    --run-id static-check --progress off
  curl -sSf --aws-sigv4 "aws:amz:${AWS_REGION}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    "$AWS_ENDPOINT_URL/static-check/lake/silver/transactions/schema_v%3Dv1/run_id%3Dstatic-check/_SUCCESS" \
    -o "$static_lake/s3-success.json"
  quick_start_counts "$static_lake/s3-success.json"
  # A bare root without /dev/urandom and /dev/random: the static worker says it cannot read the random source its
  # hash maps are seeded from, exit 2, and writes nothing (it used to panic after claiming its run id).
  bare="$static_lake/bare"
  mkdir -p "$bare/in" "$bare/lake" "$bare/tmp"
  cp "${static_bins[0]}" "$bare/silverline-worker"
  cp examples/datasets/transactions.yaml examples/data/transactions.csv "$bare/in/"
  bare_code=0
  env -i "$(command -v chroot)" "$bare" /silverline-worker run --contract /in/transactions.yaml \
    --input /in/transactions.csv --lake /lake --run-id bare --progress off 2>"$static_lake/bare.err" || bare_code=$?
  if [[ "$bare_code" != 2 ]] || ! grep -q "random source cannot be read" "$static_lake/bare.err" ||
    [[ -n "$(ls -A "$bare/lake")" ]]; then
    echo "the static worker without /dev/urandom: exit $bare_code, expected 2 naming the random source and an empty lake:" >&2
    cat "$static_lake/bare.err" >&2
    exit 1
  fi
else
  echo "SKIPPED: the static worker in an empty root against S3 by name (chroot needs root; run as root to check it)" >&2
fi
# ---- END ship ----

# ---- BEGIN readers: the README's "Reading silver" snippets (tests/readers/) ----
# DuckDB, Polars, pyarrow and Spark each read lakes that the worker binary built above wrote, with the README's
# snippet as written (types, counts against _SUCCESS, sums). The pinned readers live in a venv cached under
# $SILVERLINE_CACHE: a cold build downloads ~550 MB (pyspark ~450 MB of it) and took 2-8 minutes here, once;
# later runs reuse it. Spark runs local[1] on loopback without UI; Java 17+ is installed if missing.
step "readers: the README's DuckDB, Polars, pyarrow and Spark snippets (tests/readers/run.sh)"
tests/readers/run.sh -q
# ---- END readers ----

# ---- BEGIN alerts: Prometheus rules (charts/silverline/files/prometheus-rules.yaml, docs/runbook.md) ----
# promtool, built once from its Go module pinned in tests/tools/promtool (cold: ~12 CPU-minutes, the largest Go
# tool here; cached after), checks the rules as a plain file and as the chart's PrometheusRule and runs their unit
# tests (tests/alerts/*.test.yaml: every alert fires in one case and stays silent in another). The operator's
# metrics test runs `promtool check metrics` on its /metrics (SILVERLINE_PROMTOOL). Any failure fails this script.
step "alert rules: promtool check rules, promtool test rules (tests/alerts/check.sh)"
SILVERLINE_PROMTOOL="$(tests/alerts/check.sh)"
export SILVERLINE_PROMTOOL
# ---- END alerts ----

# ---- BEGIN chart: helm (charts/silverline) ----
# Builds (cached) helm from its Go module pinned in tests/tools/helm for the chart tests (operator/tests/chart.rs:
# lint, template, schema, server-side dry run, install; the RBAC tests in lifecycle.rs and promotion.rs take the
# operator's rules from the chart's rendering). A helm that cannot be built fails this script.
step "helm (built once from its Go module, cached)"
SILVERLINE_HELM="$(scripts/gotool.sh path helm)"
export SILVERLINE_HELM
# ---- END chart ----

# The integration tests are #[ignore]d in a plain `cargo test` (with a hint naming this script); here their
# services run, so they run with everything else.
step "cargo test (unit, property, end-to-end, and integration tests against the services)"
cargo test --workspace --locked -- --include-ignored


# parquet's zstd is patched (vendor/zstd/PATCHED.md): a crate of its own, outside the workspace, with its tests.
step "cargo test of the patched zstd (vendor/zstd)"
CARGO_TARGET_DIR="$target_dir" cargo test --manifest-path vendor/zstd/Cargo.toml --locked --lib
