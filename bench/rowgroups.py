#!/usr/bin/env python3
"""What readers gain from larger silver row groups: the worker's silver output rewritten at several row-group sizes,
scanned by DuckDB, Polars and pyarrow with typical queries.

    python3 bench/rowgroups.py --silver DIR [--reps 5] [--sizes 16384,65536,131072,524288,1048576] [--work DIR]

DIR is one run's silver directory (`.../silver/transactions/schema_v=v1/run_id=ID`, holding `year=YYYY/month=MM/`
partitions). Every Parquet file is rewritten with pyarrow at each size into WORK/rg-SIZE/ with the same partition
layout, the same compression as the worker (zstd level 3 on the columns the worker compresses, none on the others), the same physical types (pyarrow reads them back as the
worker wrote them: decimal(18,2), timestamp[us, UTC]), dictionaries only for Currency (as the worker) and the
worker's delta encodings for the other columns, so that the row-group size is the only difference between the
rewritten sets. The worker's own files are measured beside them as `worker`, and one more set at 128 Ki with pyarrow's
default encodings (dictionaries, PLAIN fallback) tells the encodings' effect from the row groups'.

The queries, each timed --reps times per reader and set, in rounds over all sets, readers and queries so that the
machine's drift hits every set alike (median wall time, warm page cache, in this process):

* `count`: the number of rows (footer metadata only, where the reader can);
* `sum`: sum(TransactionAmount) over every row: a full scan of one column;
* `month`: sum(TransactionAmount) of one month, by its year=/month= partition (partition pruning);
* `id`: the row of one TransactionID (the ids grow in input order, so row-group statistics prune);
* `customer`: the number of rows of one CustomerID (a predicate pushed into the scan; ids are random, so
  statistics prune nothing and every row group is read and filtered).

A file never holds more rows than its partition's run produced, so a row-group size above a file's rows gives one
row group per file: the table prints the mean rows per row group actually written next to each requested size.
It measures; nothing asserts on timings.
"""
import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ZSTD_LEVEL = 1  # the worker's level (worker/src/sink.rs)
DEFAULT_SIZES = [16 * 1024, 64 * 1024, 128 * 1024, 512 * 1024, 1024 * 1024]
READERS = ["duckdb", "polars", "pyarrow"]
QUERIES = ["count", "sum", "month", "id", "customer"]


def parquet_files(root):
    return sorted(p for p in Path(root).rglob("*.parquet") if p.is_file())


def rewrite(silver, dest, size, worker_encodings=True):
    """Rewrites every file of `silver` into `dest` (same relative paths) at `size` rows per row group, with the
    worker's encodings or else pyarrow's defaults (dictionaries for every column, PLAIN where one overflows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(dest, ignore_errors=True)
    for src in parquet_files(silver):
        table = pq.read_table(src, partitioning=None)
        out = dest / src.relative_to(silver)
        out.parent.mkdir(parents=True, exist_ok=True)
        # pyarrow refuses DELTA_BINARY_PACKED for decimals (even stored as INT64), so the amount stays PLAIN.
        encodings = {c: ("DELTA_BYTE_ARRAY" if pa.types.is_string(t) or pa.types.is_large_string(t)
                         else "DELTA_BINARY_PACKED")
                     for c, t in zip(table.column_names, table.schema.types)
                     if c != "Currency" and not pa.types.is_decimal(t)}
        if worker_encodings:
            options = dict(use_dictionary=["Currency"], column_encoding=encodings)
        else:
            options = dict(use_dictionary=True)
        # The worker's codec per column: zstd where it made the run's sample smaller, none elsewhere.
        first = pq.ParquetFile(src).metadata.row_group(0)
        zstd = {first.column(i).path_in_schema: first.column(i).compression == "ZSTD" for i in range(first.num_columns)}
        pq.write_table(table, out, row_group_size=size,
                       compression={c: ("zstd" if z else "none") for c, z in zstd.items()},
                       compression_level={c: ZSTD_LEVEL for c, z in zstd.items() if z},
                       store_decimal_as_integer=True, write_statistics=True, **options)


def layout(root):
    """(files, row groups, rows, bytes) of a set."""
    import pyarrow.parquet as pq

    files = parquet_files(root)
    groups = rows = size = 0
    for f in files:
        md = pq.ParquetFile(f).metadata
        groups += md.num_row_groups
        rows += md.num_rows
        size += f.stat().st_size
    return len(files), groups, rows, size


def probe_values(silver):
    """A (year, month) partition, a TransactionID and a CustomerID that exist, from the middle of the data."""
    import pyarrow.parquet as pq

    files = parquet_files(silver)
    f = files[len(files) // 2]
    parts = dict(p.split("=", 1) for p in f.relative_to(silver).parent.parts if "=" in p)
    t = pq.read_table(f, columns=["TransactionID", "CustomerID"], partitioning=None)
    mid = t.num_rows // 2
    return int(parts["year"]), int(parts["month"]), t["TransactionID"][mid].as_py(), t["CustomerID"][mid].as_py()


def duckdb_queries(root, probe):
    import duckdb

    con = duckdb.connect()
    year, month, tid, cid = probe
    src = f"read_parquet('{root}/**/*.parquet', hive_partitioning = true, hive_types = {{'year': INTEGER, 'month': INTEGER}})"
    sql = {
        "count": f"SELECT count(*) FROM {src}",
        "sum": f"SELECT sum(TransactionAmount) FROM {src}",
        "month": f"SELECT sum(TransactionAmount) FROM {src} WHERE year = {year} AND month = {month}",
        "id": f"SELECT * FROM {src} WHERE TransactionID = '{tid}'",
        "customer": f"SELECT count(*) FROM {src} WHERE CustomerID = '{cid}'",
    }
    return {q: (lambda s=s: con.execute(s).fetchall()) for q, s in sql.items()}


def polars_queries(root, probe):
    import polars as pl

    year, month, tid, cid = probe

    def scan():
        # Hive keys inferred: the worker's paths also hold schema_v= and run_id= above year=/month=.
        return pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True, try_parse_hive_dates=False)

    return {
        "count": lambda: scan().select(pl.len()).collect(),
        "sum": lambda: scan().select(pl.col("TransactionAmount").sum()).collect(),
        "month": lambda: scan().filter((pl.col("year") == year) & (pl.col("month") == month))
        .select(pl.col("TransactionAmount").sum()).collect(),
        "id": lambda: scan().filter(pl.col("TransactionID") == tid).collect(),
        "customer": lambda: scan().filter(pl.col("CustomerID") == cid).select(pl.len()).collect(),
    }


def pyarrow_queries(root, probe):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    year, month, tid, cid = probe
    part = ds.partitioning(pa.schema([("year", pa.int32()), ("month", pa.int32())]), flavor="hive")

    def dataset():
        return ds.dataset(str(root), format="parquet", partitioning=part)

    return {
        "count": lambda: dataset().count_rows(),
        "sum": lambda: pc.sum(dataset().to_table(columns=["TransactionAmount"])["TransactionAmount"]),
        "month": lambda: pc.sum(dataset().to_table(columns=["TransactionAmount"],
                                                   filter=(ds.field("year") == year) & (ds.field("month") == month))
                                ["TransactionAmount"]),
        "id": lambda: dataset().to_table(filter=ds.field("TransactionID") == tid),
        "customer": lambda: dataset().count_rows(filter=ds.field("CustomerID") == cid),
    }


def print_table(table):
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, r in enumerate(table):
        print("| " + " | ".join(c.ljust(w) if j < 2 and not c[:1].isdigit() else c.rjust(w)
                                for j, (c, w) in enumerate(zip(r, widths))) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--silver", required=True, help="one run's silver directory (year=/month= partitions inside)")
    p.add_argument("--work", default=str(Path(__file__).resolve().parent / "out" / "rowgroups"))
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    silver = Path(a.silver).resolve()
    if not parquet_files(silver):
        sys.exit(f"no Parquet files under {silver}")
    work = Path(a.work)
    sets = {"worker": silver}
    for size in map(int, a.sizes.split(",")):
        dest = work / f"rg-{size}"
        print(f"rewriting at {size} rows per row group into {dest}", file=sys.stderr)
        rewrite(silver, dest, size)
        sets[f"{size // 1024} Ki"] = dest
    # A control: the same rows at 128 Ki with pyarrow's default encodings, to tell the row-group size's effect
    # from the encodings'.
    dest = work / "rg-131072-pyarrow-defaults"
    rewrite(silver, dest, 128 * 1024, worker_encodings=False)
    sets["128 Ki, pyarrow encodings"] = dest
    probe = probe_values(silver)
    load_before = os.getloadavg()
    results, calls = {}, []
    for name, root in sets.items():
        files, groups, rows, size = layout(root)
        results[name] = {"rows": rows, "files": files, "groups": groups, "rows_per_group": rows / groups, "mib": size / 2**20}
        for reader in READERS:
            queries = globals()[f"{reader}_queries"](root, probe)
            for q in QUERIES:
                queries[q]()  # warm-up: page cache, first-call setup
                calls.append(((name, reader, q), queries[q]))
    # Round-robin over sets, readers and queries, so that the machine's drift (other tenants) hits every set alike.
    times = {key: [] for key, _ in calls}
    for rep in range(a.reps):
        for key, fn in calls:
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
        print(f"  round {rep + 1}/{a.reps} done", file=sys.stderr)
    for (name, reader, q), ts in times.items():
        results[name][(reader, q)] = statistics.median(ts)
    load_after = os.getloadavg()

    import duckdb
    import polars
    import pyarrow

    print(f"silver: {silver}: {results['worker']['rows']:,} rows; probe: year={probe[0]} month={probe[1]}, TransactionID {probe[2]}, "
          f"CustomerID {probe[3]}")
    print(f"readers: duckdb {duckdb.__version__}, polars {polars.__version__}, pyarrow {pyarrow.__version__}; "
          f"median of {a.reps} warm runs each, in ms; {os.cpu_count()} cores")
    print(f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {', '.join(f'{x:.2f}' for x in load_after)}")
    print()
    names = list(results)
    print_table([["set", "files", "row groups", "rows/group", "MiB"]] + [
        [n, str(results[n]["files"]), str(results[n]["groups"]), f"{results[n]['rows_per_group']:,.0f}",
         f"{results[n]['mib']:.1f}"] for n in names])
    print()
    print_table([["reader", "query"] + [f"{n} ms" for n in names]] + [
        [r, q] + [f"{results[n][(r, q)] * 1000:.0f}" for n in names] for r in READERS for q in QUERIES])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
