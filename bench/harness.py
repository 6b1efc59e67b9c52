#!/usr/bin/env python3
"""Runs silverline-worker and every peer of bench/peers.py (Polars and DuckDB, each full and lean) on the same CSV file.

    python3 bench/harness.py counts --input FILE [--worker BIN] [--contract FILE] [--out DIR]
    python3 bench/harness.py bench  --input FILE [--worker BIN] [--contract FILE] [--out DIR] [--reps 3]

`counts` runs each engine once and fails (exit 1) unless all of them report the same input, valid, quarantined and
condemned counts and the same quarantine error types, and then the same rows: which records went to quarantine
(with which error type), which to condemned, and the same set of valid rows. `bench` runs each engine --reps times, interleaved
(worker, polars, polars-lean, duckdb, duckdb-lean, worker, ...), each run into a fresh output directory, measures every run with
/usr/bin/time (wall, user + system CPU, peak RSS of the process), fails unless every run of every engine gives the
same counts, and prints a table of medians, the ratios of silverline against each peer and against the fastest
peer (the one with the lowest median wall time), which it names. It only measures: there
is no timing assertion anywhere.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = ["polars", "polars-lean", "duckdb", "duckdb-lean"]  # bench/peers.py --engine
ENGINES = ["silverline"] + PEERS
TIME = "/usr/bin/time"


def command(engine, args, out):
    if engine == "silverline":
        return [args.worker, "run", "--contract", args.contract, "--input", args.input, "--lake", str(out),
                "--run-id", "bench", "--progress", "off"]
    return [sys.executable, str(BENCH / "peers.py"), "--engine", engine, "--input", args.input, "--out", str(out),
            "--contract", args.contract]


def counts_of(engine, out, stdout):
    """The counts an engine reports: the worker's _SUCCESS, or the peer's JSON line plus its quarantine file."""
    if engine == "silverline":
        run = out / "silver" / "transactions" / "schema_v=v1" / "run_id=bench"
        success = json.loads((run / "_SUCCESS").read_text())
        return {
            "input_rows": success["input_rows"],
            "valid": success["valid_rows_count"],
            "quarantined": success["quarantined_rows_count"],
            "condemned": success["condemned_rows_count"],
            "error_types": {k: v for k, v in success["error_type_distribution"].items() if v},
        }
    line = json.loads(stdout.strip().splitlines()[-1])
    counts = {k: line[k] for k in ("input_rows", "valid", "quarantined", "condemned")}
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    types = pq.read_table(out / "quarantine.parquet", columns=["error_type"]).column("error_type")
    counts["error_types"] = {v["values"].as_py(): v["counts"].as_py() for v in pc.value_counts(types)}
    return counts


def run_once(engine, args, out, timed, keep=False):
    """Runs one engine into a fresh `out`; returns (counts, measurement or None)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = command(engine, args, out)
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        if timed:
            cmd = [TIME, "-o", t.name, "-f", "%e %U %S %M"] + cmd
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
            sys.exit(f"{engine} failed with exit code {p.returncode}: {' '.join(cmd)}")
        measured = None
        if timed:
            wall, user, system, max_rss_kib = t.read().split()[-4:]
            measured = {"wall": float(wall), "cpu": float(user) + float(system), "rss_mib": int(max_rss_kib) / 1024}
    counts = counts_of(engine, out, p.stdout)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return counts, measured


def side_files(engine, out):
    """Globs of the (quarantine, condemned, valid) Parquet files an engine wrote."""
    if engine == "silverline":
        run = "transactions/schema_v=v1/run_id=bench"
        return (f"{out}/quarantine/{run}/*.parquet", f"{out}/condemned/{run}/*.parquet",
                f"{out}/silver/{run}/**/*.parquet")
    return f"{out}/quarantine.parquet", f"{out}/condemned.parquet", f"{out}/silver/**/*.parquet"


def same_rows(outs):
    """Fails unless every engine put the same records in quarantine (record number, error type, raw
    TransactionID), the same records in condemned, and the same valid rows (as a set: the order within a
    partition is the engine's business)."""
    import polars as pl

    def load(engine, out):
        q, c, v = side_files(engine, out)
        number = pl.col("record_number").cast(pl.Int64)
        return {
            "quarantine": pl.read_parquet(q).select(number, "error_type", "TransactionID").sort("record_number"),
            "condemned": pl.read_parquet(c).select(number).sort("record_number"),
            "valid": pl.read_parquet(v, hive_partitioning=False)
            .select("TransactionID", "CustomerID", "TransactionAmount", "Currency", "TransactionTimestamp")
            .sort("TransactionID", "CustomerID", "TransactionAmount", "Currency", "TransactionTimestamp"),
        }

    frames = {e: load(e, out) for e, out in outs.items()}
    reference = frames["silverline"]
    for engine, f in frames.items():
        for part, frame in f.items():
            if not frame.equals(reference[part]):
                diff = pl.concat([frame.join(reference[part], on=frame.columns, how="anti", nulls_equal=True).with_columns(
                    pl.lit(f"only in {engine}").alias("where")), reference[part].join(
                    frame, on=frame.columns, how="anti", nulls_equal=True).with_columns(pl.lit("only in silverline").alias("where"))])
                print(diff.head(20), file=sys.stderr)
                sys.exit(f"ROW MISMATCH: {engine}'s {part} rows differ from silverline's (first differences above)")
    print("  same rows: quarantine (record, error type), condemned (record) and valid rows agree", file=sys.stderr)


def same_counts(results):
    """Fails loudly unless every engine's counts are the same."""
    first_engine, first = next(iter(results.items()))
    bad = [e for e, c in results.items() if c != first]
    for engine, c in results.items():
        print(f"  {engine:<10} {json.dumps(c, sort_keys=True)}", file=sys.stderr)
    if bad:
        sys.exit(f"COUNT MISMATCH: {', '.join(bad)} differ from {first_engine} (see above)")
    return first


def cmd_counts(args):
    results, outs = {}, {}
    for engine in ENGINES:
        outs[engine] = Path(args.out) / engine
        results[engine], _ = run_once(engine, args, outs[engine], timed=False, keep=True)
    counts = same_counts(results)
    same_rows(outs)
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"same_counts": True, **counts}, sort_keys=True))


def versions(worker_bin):
    import duckdb
    import polars

    worker = subprocess.run([worker_bin, "--version"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    commit = git.stdout.strip() or "unknown commit"
    return f"{worker or 'silverline-worker'} ({commit}); polars {polars.__version__}; duckdb {duckdb.__version__}"


def cmd_bench(args):
    if not os.access(TIME, os.X_OK):
        sys.exit(f"{TIME} (GNU time) is needed to measure CPU time and peak RSS; install the `time` package")
    size = os.path.getsize(args.input)
    # Warm the page cache so the first engine does not pay for the disk.
    with open(args.input, "rb") as f:
        while f.read(1 << 24):
            pass
    runs = {e: [] for e in ENGINES}
    counts = {}
    load_before = os.getloadavg()
    for rep in range(args.reps):
        for engine in ENGINES:
            c, m = run_once(engine, args, Path(args.out) / f"{engine}-{rep}", timed=True)
            print(f"  run {rep + 1}/{args.reps} {engine:<10} wall {m['wall']:6.2f} s  cpu {m['cpu']:6.2f} s  "
                  f"rss {m['rss_mib']:7.1f} MiB  {c['valid']}/{c['quarantined']}/{c['condemned']}", file=sys.stderr)
            if engine in counts and counts[engine] != c:
                sys.exit(f"COUNT MISMATCH: {engine} gave {c} in run {rep + 1} but {counts[engine]} before")
            counts[engine] = c
            runs[engine].append(m)
    agreed = same_counts(counts)
    load_after = os.getloadavg()

    rows = agreed["input_rows"]
    med = {
        e: {k: statistics.median(r[k] for r in runs[e]) for k in ("wall", "cpu", "rss_mib")} for e in ENGINES
    }
    print(f"input: {args.input}: {rows:,} rows, {size / 1e6:.1f} MB; {args.reps} run(s) per engine, interleaved; "
          f"medians; {os.cpu_count()} cores")
    print(f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {', '.join(f'{x:.2f}' for x in load_after)} (other processes share the cores)")
    print(f"engines: {versions(args.worker)}")
    print(f"counts (all engines): valid {agreed['valid']:,}, quarantined {agreed['quarantined']:,}, "
          f"condemned {agreed['condemned']:,}")
    print()
    header = ["engine", "wall s", "rows/s", "MB/s", "CPU s", "peak RSS MiB"]
    table = [header]
    for e in ENGINES:
        m = med[e]
        table.append([e, f"{m['wall']:.2f}", f"{rows / m['wall'] / 1e6:.2f} M", f"{size / 1e6 / m['wall']:.0f}",
                      f"{m['cpu']:.2f}", f"{m['rss_mib']:.0f}"])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()
    s = med["silverline"]
    for peer in ENGINES[1:]:
        p = med[peer]
        print(f"silverline vs {peer}: {p['wall'] / s['wall']:.2f}x the rows/s, "
              f"{s['rss_mib'] / p['rss_mib']:.2f}x the peak RSS ({s['rss_mib']:.0f} vs {p['rss_mib']:.0f} MiB), "
              f"{s['cpu'] / p['cpu']:.2f}x the CPU time")
    peers = [e for e in ENGINES if e != "silverline"]
    if peers:
        fastest = min(peers, key=lambda e: med[e]["wall"])
        print(f"fastest peer: {fastest} ({med[fastest]['wall']:.2f} s); silverline/fastest peer: "
              f"{med[fastest]['wall'] / s['wall']:.2f}x the rows/s")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["counts", "bench"])
    p.add_argument("--input", required=True)
    p.add_argument("--worker", default=str(ROOT / "target" / "release" / "silverline-worker"))
    p.add_argument("--contract", default=str(BENCH / "contract.yaml"))
    p.add_argument("--out", default=str(BENCH / "out"), help="scratch space for the engines' outputs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--engines", default=",".join(ENGINES),
                   help="comma-separated subset of " + ",".join(ENGINES) + " (silverline is always run)")
    args = p.parse_args()
    chosen = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(chosen) - set(ENGINES))
    if unknown:
        sys.exit(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    ENGINES[:] = ["silverline"] + [e for e in PEERS if e in chosen]
    args.input = os.path.abspath(args.input)
    if not os.access(args.worker, os.X_OK):
        sys.exit(f"no worker binary at {args.worker}: cargo build --release -p silverline-worker")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (cmd_counts if args.mode == "counts" else cmd_bench)(args)


if __name__ == "__main__":
    main()
