"""Smoke check of the benchmark's peers: on a small generated input, every peer of bench/peers.py (Polars and
DuckDB, full and lean) gives the worker's counts and the worker's rows (bench/harness.py counts).

The benchmark itself is not a test (nothing asserts on timings); this keeps its peers honest as the worker and the
peers change, in a few seconds, with the readers this venv already has (tests/readers/requirements.txt).
Run by tests/readers/run.sh, which provides the worker binary (SILVERLINE_WORKER_BIN).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROWS = 6000  # enough for every error kind, quoted and padded fields and exact duplicates (bench/generate.py)


def test_every_peer_gives_the_workers_counts_and_rows(tmp_path):
    worker = os.environ["SILVERLINE_WORKER_BIN"]
    data = tmp_path / "input.csv"
    subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--rows", str(ROWS), "--seed", "3",
                    "--out", str(data)], check=True)
    p = subprocess.run(
        [sys.executable, str(REPO / "bench/harness.py"), "counts", "--input", str(data), "--worker", worker,
         "--contract", str(REPO / "bench/contract.yaml"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, f"bench/harness.py counts failed:\n{p.stdout}\n{p.stderr}"
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["same_counts"] is True
    assert result["input_rows"] == ROWS
    assert result["input_rows"] == result["valid"] + result["quarantined"] + result["condemned"]
    assert result["quarantined"] > 0 and result["condemned"] > 0, result
    for engine in ("silverline", "polars", "polars-lean", "duckdb", "duckdb-lean"):
        assert f"  {engine} " in p.stderr, f"{engine} was not compared:\n{p.stderr}"
