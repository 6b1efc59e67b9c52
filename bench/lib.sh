# Shared steps of bench/run.sh and bench/compare_counts.sh; source it, don't run it.
# Everything generated lives under ${SILVERLINE_CACHE:-$HOME/.cache/silverline}/bench, never in the repository.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
CACHE_DIR=${SILVERLINE_CACHE:-$HOME/.cache/silverline}/bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
# SILVERLINE_WORKER_BIN: measure that binary instead of building this checkout's release build.
WORKER=${SILVERLINE_WORKER_BIN:-$TARGET_DIR/release/silverline-worker}
PYTHON=${PYTHON:-python3}

# prepare_input ROWS SEED: prints the path of the cached input, generating it once. The name holds the rows, the
# seed and a digest of generate.py, so a changed generator never reuses a stale file.
prepare_input() {
  local rows=$1 seed=$2 digest input
  digest=$(sha256sum "$BENCH_DIR/generate.py" | cut -c1-12)
  input=$CACHE_DIR/transactions-rows$rows-seed$seed-gen$digest.csv
  if [ ! -s "$input" ]; then
    mkdir -p "$CACHE_DIR"
    echo "generating $rows rows (seed $seed) into $input" >&2
    "$PYTHON" "$BENCH_DIR/generate.py" --rows "$rows" --seed "$seed" --out "$input.part"
    mv "$input.part" "$input"
  fi
  echo "$input"
}

# build_worker: the release binary of the worker (needs only the crds, lake and worker crates), unless
# SILVERLINE_WORKER_BIN names one.
build_worker() {
  if [ -n "${SILVERLINE_WORKER_BIN:-}" ]; then
    echo "using the worker $SILVERLINE_WORKER_BIN (SILVERLINE_WORKER_BIN), not building" >&2
    return
  fi
  (cd "$ROOT" && cargo build --release -p silverline-worker) >&2
}

# ensure_peers: the pinned peers of bench/requirements.txt (Polars, DuckDB, PyArrow, PyYAML) in a venv under the
# cache, keyed by a hash of that file and the Python version, built once; sets PYTHON to the venv's python.
ensure_peers() {
  local key venv
  key=$( { cat "$BENCH_DIR/requirements.txt"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
  venv=$CACHE_DIR/venv-$key
  if [ ! -f "$venv/.complete" ]; then
    echo "building $venv with the pinned peers (bench/requirements.txt)" >&2
    rm -rf "$venv"
    mkdir -p "$CACHE_DIR"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$BENCH_DIR/requirements.txt" >&2
    touch "$venv/.complete"
  fi
  PYTHON=$venv/bin/python
  "$PYTHON" -c 'import duckdb, polars, pyarrow; print(f"peers: polars {polars.__version__}, duckdb {duckdb.__version__}, pyarrow {pyarrow.__version__}")' >&2
}

# ensure_time: GNU time measures CPU time and peak RSS per run.
ensure_time() {
  if [ ! -x /usr/bin/time ]; then
    echo "installing GNU time" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq time >&2
  fi
}
