# Shared steps of bench/run.sh and bench/compare_counts.sh; source it, don't run it.
# Everything generated lives under ${SILVERLINE_CACHE:-$HOME/.cache/silverline}/bench, never in the repository.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
CACHE_DIR=${SILVERLINE_CACHE:-$HOME/.cache/silverline}/bench
WORKER=$ROOT/target/release/silverline-worker
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

# build_worker: the release binary of the worker (needs only the crds and worker crates).
build_worker() {
  (cd "$ROOT" && cargo build --release -p silverline-worker) >&2
}

# ensure_peers: Polars 2.1.0 and DuckDB 2.0.x (plus PyYAML and PyArrow, which the scripts read files with),
# installed with pip only when missing or at another version.
ensure_peers() {
  if ! "$PYTHON" - <<'PY' 2>/dev/null
import duckdb, polars, pyarrow, yaml
assert polars.__version__ == "2.1.0", polars.__version__
assert duckdb.__version__.startswith("2.0."), duckdb.__version__
PY
  then
    echo "installing the peers with pip" >&2
    "$PYTHON" -m pip install --quiet "polars==2.1.0" "duckdb==2.0.*" pyarrow pyyaml >&2
  fi
  "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(polars|duckdb) ' | tr -s ' ' | sed 's/^/pip has /' >&2
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
