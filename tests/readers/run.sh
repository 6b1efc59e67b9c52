#!/usr/bin/env bash
# tests/readers/run.sh — runs the README's "Reading silver" snippets (DuckDB, Polars, pyarrow, Spark) against a lake
# the worker writes (tests/readers/test_readers.py), in a venv with the pinned readers of requirements.txt.
#
# Usage: tests/readers/run.sh [PYTEST ARGS...]
#
# The venv is $SILVERLINE_CACHE/readers-venv-<hash> (hash of requirements.txt and the Python version), built once
# and reused; a cold build downloads ~550 MB (pyspark alone is ~450 MB) and takes several minutes. The worker binary
# is $SILVERLINE_WORKER_BIN (scripts/test.sh exports the one it built), else the debug build of this checkout.
# Spark needs Java 17 or newer; as root, a missing `java` is installed from Debian's packages.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO_ROOT/tests/readers"
CACHE_ROOT="${SILVERLINE_CACHE:-$HOME/.cache/silverline}"
PYTHON="${PYTHON:-python3}"

die() { echo "tests/readers: error: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' is required"
if ! command -v java >/dev/null 2>&1; then
  [[ "$(id -u)" == 0 ]] || die "Spark needs Java 17 or newer: install a JRE (Debian: default-jre-headless)"
  echo "tests/readers: installing a Java runtime for Spark (default-jre-headless)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >&2
fi

key="$( { cat "$HERE/requirements.txt"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)"
venv="$CACHE_ROOT/readers-venv-$key"
if [[ ! -f "$venv/.complete" ]]; then
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/.readers-venv.lock" # one builder at a time
  flock 9
  if [[ ! -f "$venv/.complete" ]]; then
    echo "tests/readers: building $venv (pinned readers; pyspark is a ~450 MB download, once)" >&2
    started=$SECONDS
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" >&2
    touch "$venv/.complete"
    echo "tests/readers: venv built in $((SECONDS - started)) s" >&2
  fi
  exec 9>&-
fi

if [[ -z "${SILVERLINE_WORKER_BIN:-}" ]]; then
  (cd "$REPO_ROOT" && cargo build --quiet -p silverline-worker) >&2
  target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  [[ "$target_dir" == /* ]] || target_dir="$REPO_ROOT/$target_dir"
  export SILVERLINE_WORKER_BIN="$target_dir/debug/silverline-worker"
fi
[[ -x "$SILVERLINE_WORKER_BIN" ]] || die "no worker binary at $SILVERLINE_WORKER_BIN"

# Spark stays on loopback (the test's session also sets driver host and bind address, and no UI).
export SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$venv/bin/python"
export AWS_EC2_METADATA_DISABLED=true
cd "$REPO_ROOT"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$HERE" "$@"
