#!/usr/bin/env python3
"""The benchmark's peers: the same job as `silverline-worker run`, written once with Polars and once with DuckDB.

    python3 bench/peers.py --engine polars|duckdb --input FILE.csv --out DIR [--contract bench/contract.yaml]

The job, on a transactions CSV (header, then TransactionID,CustomerID,TransactionAmount,Currency,TransactionTimestamp):

* every value is trimmed of surrounding ASCII whitespace (space, \\t, \\n, \\r, \\v, \\f);
* a row identical to an earlier row of the input (same raw record) is condemned before any check; the first
  occurrence, by input order, goes on to the checks;
* every other row gets exactly one error type, the first that applies: SCHEMA_ERROR (not exactly 5 fields),
  NULL_VALUE_ERROR (a column is empty after trimming; all five are required), then per column in contract order
  TYPE_ERROR / VALUE_ERROR for TransactionAmount (decimal(18,2): `[+-]digits[.d|.dd]`, at most 16 integer digits
  not counting leading zeros), VALUE_ERROR for a Currency not in {EUR,USD,GBP,CHF,JPY} (case-sensitive),
  TIMESTAMP_ERROR for a TransactionTimestamp that is not `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)?` on a real
  calendar date and time (no zone means UTC; fraction digits beyond the microsecond must be zero); then
  DUPLICATE_KEY_ERROR for a row passing every check whose trimmed TransactionID is the key of an earlier valid row;
* valid rows are written as zstd (level 3, like the worker) Parquet, typed (strings, decimal(18,2),
  timestamp[us, UTC]), Hive-partitioned by the UTC year and month: DIR/silver/year=YYYY/month=MM/*.parquet;
  quarantined rows (raw untrimmed values, null when the field count is wrong, the raw record, record number and
  error_type) go to DIR/quarantine.parquet and condemned rows (the same plus condemned_reason) to
  DIR/condemned.parquet;
* one JSON line on stdout: engine, input_rows, valid, quarantined, condemned (counted from what was written),
  and the run exits 1 if input_rows != valid + quarantined + condemned.

The transactions contract is hard-coded below (columns, allowed currencies, decimal(18,2), the timestamp rule):
this is a benchmark of engines, not a contract interpreter. `--contract` is only checked to name the same
columns in the same order, so a changed contract fails loudly instead of silently measuring something else.
The input's header must be those five names in that order (the generator always writes it so).

How each peer finds rows with the wrong number of fields without losing them (the tricky part):

* Polars: its CSV reader either fails on ragged rows or, with `truncate_ragged_lines=True`, pads short rows and
  silently truncates long ones, so it cannot say how many fields a row had. The peer therefore scans the file
  twice, lazily and in parallel: `scan_csv(truncate_ragged_lines=True)` for the field values, and `scan_lines` for
  the raw record, whose fields are counted with the RFC 4180 rule that a quote opens a quoted field only as the
  field's first character (so `  "C1, EU" ` is two fields, as in the worker's csv-core tokenizer). The two scans
  are glued with a strict horizontal concat, which fails if they ever disagree on the number of records (a quoted
  field holding a line break would do that; the generator writes none). The raw line also serves as the exact-
  duplicate key (the generator's duplicates repeat a record byte for byte).
* DuckDB: `read_csv(all_varchar=true, ignore_errors=true, store_rejects=true)` keeps rows with too few or too many
  columns out of the result and records each in the `reject_errors` table with its line number and raw
  `csv_line`; those rows become SCHEMA_ERROR quarantine rows (or condemned when a rejected line repeats an earlier
  one), so none is lost and input_rows = accepted + rejected. Input order is `WITH ORDINALITY` on the scan (it
  numbers accepted rows only; record numbers in the side files add back the rejected lines before each row).
  Known difference from the worker, not exercised by the generator: DuckDB accepts a row with one extra, empty,
  trailing field (`a,b,c,d,e,`) as 5 fields.

Both peers were checked row by row against the worker on generated inputs (200 k and 5 M rows): the same record
numbers and error types in quarantine, the same condemned records and the same valid rows (DuckDB's partitioned
COPY writes them in another order within a partition).

Both peers use every core (the engines' defaults) and count rows from the files they wrote.
"""
import argparse
import json
import os
import sys
from pathlib import Path

COLUMNS = ["TransactionID", "CustomerID", "TransactionAmount", "Currency", "TransactionTimestamp"]
CURRENCIES = ["EUR", "USD", "GBP", "CHF", "JPY"]
WHITESPACE = " \t\n\r\x0b\x0c"
ZSTD_LEVEL = 1  # the worker's level (worker/src/sink.rs; both engines default to 3)
# decimal(18,2): sign, digits, at most two decimals; more than 16 significant integer digits is a VALUE_ERROR.
AMOUNT_RE = r"^[+-]?[0-9]+(\.[0-9]{1,2})?$"
AMOUNT_TOO_BIG_RE = r"^[+-]?0*[1-9][0-9]{16}"
# The timestamp's shape, with the ranges a regular expression can check (time of day, offset, at most 9 fraction
# digits of which those past the 6th are zero, year not 0000); month lengths and leap days are left to each
# engine's own timestamp parser, whose failure is also a TIMESTAMP_ERROR.
TIMESTAMP_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.([0-9]{1,6}0{0,3}))?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)
# Counting fields of a raw line: a field is a quoted field starting right after the separator, or anything else.
FIELD_RE = r'(?:^|,)(?:"(?:[^"]|"")*"|[^,]*)'


def check_contract(path):
    """Fails unless the contract names the hard-coded columns, in order."""
    if not path:
        return
    text = Path(path).read_text()
    try:
        import yaml
    except ImportError:  # a venv without PyYAML (tests/readers'): the contract's `- name:` lines, in order
        import re

        names = re.findall(r"^\s*- name:\s*(\S+)\s*$", text, flags=re.M)
        key = re.findall(r"^\s*primaryKey:\s*\[(.*)\]\s*$", text, flags=re.M)
        primary = [k.strip() for k in key[0].split(",")] if key else None
    else:
        spec = yaml.safe_load(text)["spec"]
        names, primary = [c["name"] for c in spec["columns"]], spec.get("primaryKey")
    if names != COLUMNS or primary != ["TransactionID"]:
        sys.exit(f"peers.py implements the transactions contract only; {path} has columns {names}")


def check_header(path):
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8-sig").rstrip("\r\n").split(",")
    if [h.strip() for h in header] != COLUMNS:
        sys.exit(f"{path}: expected the header {','.join(COLUMNS)}, found {','.join(header)}")


def polars_checked(input_path):
    """The lazy plan of the Polars peer up to every row's status and error type."""
    import polars as pl

    raw = [f"{c}_raw" for c in COLUMNS]
    # The raw records, header excluded, without a CRLF's \r.
    lines = pl.scan_lines(input_path, name="raw_record").slice(1)
    lines = lines.with_columns(pl.col("raw_record").str.strip_suffix("\r"))
    values = pl.scan_csv(
        input_path,
        has_header=True,
        schema={c: pl.String for c in COLUMNS},
        truncate_ragged_lines=True,
        empty_string_is_null=False,
        raise_if_empty=True,
    ).rename(dict(zip(COLUMNS, raw)))
    rows = pl.concat([lines, values], how="horizontal").with_row_index("record_number", offset=1)

    line = pl.col("raw_record")
    # Fast path for the common record without quotes: count the commas.
    # (The regex runs on the lines holding a quote only: they are null elsewhere, which costs nothing.)
    field_count = pl.coalesce(pl.when(line.str.contains('"', literal=True)).then(line).str.count_matches(FIELD_RE),
                              line.str.count_matches(",", literal=True) + 1)
    t = {c: pl.col(f"{c}_raw").str.strip_chars(WHITESPACE) for c in COLUMNS}
    amount, currency, ts = t["TransactionAmount"], t["Currency"], t["TransactionTimestamp"]
    # The timestamp's shape is checked by TIMESTAMP_RE; its value is parsed in three cheap parts rather than with
    # one chrono format holding `%.f%:z` (which takes ~3x longer): the first 19 characters with a fixed format
    # (which checks month lengths and leap days), the fraction's first 6 digits, and the zone, which for a
    # well-shaped value is `±HH:MM` exactly when its 6th character from the end is a sign.
    naive = ts.str.slice(0, 19).str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False)
    micros = (
        pl.when(ts.str.slice(19, 1) == ".")
        .then(ts.str.extract(r"^.{19}\.([0-9]{1,6})", 1).str.pad_end(6, "0").cast(pl.Int64, strict=False))
        .otherwise(0)
    )
    zone = ts.str.slice(-6)
    sign = pl.when(zone.str.starts_with("-")).then(-1).when(zone.str.starts_with("+")).then(1).otherwise(0)
    offset_minutes = sign * (
        zone.str.slice(1, 2).cast(pl.Int32, strict=False) * 60 + zone.str.slice(4, 2).cast(pl.Int32, strict=False)
    ).fill_null(0)
    parsed_ts = (naive + pl.duration(microseconds=micros) - pl.duration(minutes=offset_minutes)).dt.replace_time_zone(
        "UTC"
    )
    error = (
        pl.when(field_count != len(COLUMNS))
        .then(pl.lit("SCHEMA_ERROR"))
        .when(pl.any_horizontal([v.str.len_bytes() == 0 for v in t.values()]))
        .then(pl.lit("NULL_VALUE_ERROR"))
        .when(~amount.str.contains(AMOUNT_RE))
        .then(pl.lit("TYPE_ERROR"))
        .when(amount.str.contains(AMOUNT_TOO_BIG_RE))
        .then(pl.lit("VALUE_ERROR"))
        .when(~currency.is_in(CURRENCIES))
        .then(pl.lit("VALUE_ERROR"))
        .when(~ts.str.contains(TIMESTAMP_RE) | ts.str.starts_with("0000") | parsed_ts.is_null())
        .then(pl.lit("TIMESTAMP_ERROR"))
    )
    checked = rows.with_columns(
        error.alias("error_type"),
        # Exact duplicates and repeated keys are found through 64-bit hashes of the record and of the key, the
        # same trade-off as the worker's ledger (a collision among 10 M rows is a ~3-in-a-million event), and
        # twice as fast here as a set of the strings themselves.
        (~line.hash().is_first_distinct()).alias("exact_duplicate"),
        t["TransactionID"].alias("TransactionID"),
        parsed_ts.alias("ts"),
    )
    # A key repeats only among rows that passed every check and are not exact duplicates; the others get a
    # null key here, and only the candidates' answers are used.
    candidate = pl.col("error_type").is_null() & ~pl.col("exact_duplicate")
    repeated_key = candidate & ~pl.when(candidate).then(pl.col("TransactionID")).hash().is_first_distinct()
    checked = checked.with_columns(
        pl.when(pl.col("exact_duplicate"))
        .then(pl.lit("condemned"))
        .when(candidate & ~repeated_key)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("quarantined"))
        .alias("status"),
        pl.when(repeated_key).then(pl.lit("DUPLICATE_KEY_ERROR")).otherwise(pl.col("error_type")).alias("error_type"),
    )
    # The raw values of a record with the wrong field count mean nothing (padded or truncated): null, as in the
    # worker's quarantine files.
    wrong_count = pl.col("error_type") == "SCHEMA_ERROR"
    side_columns = [pl.when(wrong_count).then(pl.lit(None)).otherwise(pl.col(r)).alias(c) for r, c in zip(raw, COLUMNS)]
    side_columns += [pl.col("raw_record"), pl.col("record_number")]

    return checked, side_columns, t


def run_polars(input_path, out):
    import polars as pl

    checked, side_columns, t = polars_checked(input_path)
    amount, currency = t["TransactionAmount"], t["Currency"]
    # One plan, three sinks: collect_all runs them together and computes the shared scan and checks once.
    ts_utc = pl.col("ts")
    valid = checked.filter(pl.col("status") == "valid").select(
        pl.col("TransactionID"),
        t["CustomerID"].alias("CustomerID"),
        amount.str.strip_prefix("+").cast(pl.Decimal(18, 2)).alias("TransactionAmount"),
        currency.alias("Currency"),
        ts_utc.alias("TransactionTimestamp"),
        ts_utc.dt.year().cast(pl.String).str.zfill(4).alias("year"),
        ts_utc.dt.month().cast(pl.String).str.zfill(2).alias("month"),
    )
    quarantined = checked.filter(pl.col("status") == "quarantined").select(*side_columns, pl.col("error_type"))
    condemned = checked.filter(pl.col("status") == "condemned").select(
        *side_columns, pl.lit("EXACT_DUPLICATE").alias("condemned_reason")
    )
    return sink_polars(out, checked, valid, quarantined, condemned)


def run_polars_lean(input_path, out):
    return sink_polars(out, *polars_lean_plan(input_path))


def polars_lean_plan(input_path):
    """What a user tuning Polars for this feed writes: the full peer's reading (Polars' CSV reader for the values,
    `scan_lines` for the raw record and its field count), then the casts as the checks
    (`cast(Decimal, strict=False)`, a fixed-format `strptime`), one when/then chain, and one `collect_all` of
    three sinks, the silver one a `PartitionBy`. (Splitting `scan_lines` with `str.split_exact` instead, as in
    #11, costs more CPU here than the CSV reader once the feed's quoted fields need handling.)

    What it leaves out, relying on what the bench feed (bench/generate.py) is known to hold, unlike `polars`:
    * a CRLF line ending would stay in the raw record (the feed has LF only);
    * trimming of spaces only (the feed pads with spaces; not \t, \v, \f, \r);
    * no separate VALUE_ERROR check for amounts above 16 integer digits: the Decimal cast gives null for them,
      counted as VALUE_ERROR after the amount's shape passed (the feed holds none);
    * no timestamp shape check: the first 19 characters parsed with a fixed format, the fraction and the zone
      read by position, so a malformed tail (`...T10:00:00junk`, a 7th fraction digit, a `0000` year) would
      pass (the feed's bad timestamps all fail in the first 19 characters);
    * exact duplicates and repeated keys by `is_first_distinct` on 64-bit hashes of the line and of the key
      (a collision would condemn or quarantine a row wrongly; on the strings themselves it costs twice the CPU).
    Every row is still counted: input_rows is the number of lines, and the run fails if valid + quarantined +
    condemned differs."""
    import polars as pl

    raw = [f"{c}_raw" for c in COLUMNS]
    lines = pl.scan_lines(input_path, name="raw_record").slice(1)
    values = pl.scan_csv(input_path, has_header=True, schema={c: pl.String for c in COLUMNS},
                         truncate_ragged_lines=True, empty_string_is_null=False).rename(dict(zip(COLUMNS, raw)))
    rows = pl.concat([lines, values], how="horizontal").with_row_index("record_number", offset=1)
    line = pl.col("raw_record")
    # The field-count regex runs on the ~1 % of lines holding a quote only (null elsewhere).
    field_count = pl.coalesce(pl.when(line.str.contains('"', literal=True)).then(line).str.count_matches(FIELD_RE),
                              line.str.count_matches(",", literal=True) + 1)
    rows = rows.with_columns(field_count.alias("fields"))
    t = {c: pl.col(r).str.strip_chars(" ") for c, r in zip(COLUMNS, raw)}
    amount = t["TransactionAmount"].cast(pl.Decimal(18, 2), strict=False)
    # The timestamp as the full peer parses it, without its shape regex: a fixed-format parse of the first 19
    # characters, then the fraction's digits and the zone read by position.
    ts_text = t["TransactionTimestamp"]
    naive = ts_text.str.slice(0, 19).str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False)
    micros = pl.when(ts_text.str.slice(19, 1) == ".").then(ts_text.str.slice(20, 6).cast(pl.Int64, strict=False))
    zone = ts_text.str.slice(-6)
    sign = pl.when(zone.str.starts_with("-")).then(-1).when(zone.str.starts_with("+")).then(1).otherwise(0)
    offset_minutes = sign * (zone.str.slice(1, 2).cast(pl.Int32, strict=False) * 60
                             + zone.str.slice(4, 2).cast(pl.Int32, strict=False)).fill_null(0)
    ts = (naive + pl.duration(microseconds=micros.fill_null(0)) - pl.duration(minutes=offset_minutes)
          ).dt.replace_time_zone("UTC")
    error = (
        pl.when(pl.col("fields") != len(COLUMNS)).then(pl.lit("SCHEMA_ERROR"))
        .when(pl.any_horizontal([v.str.len_bytes() == 0 for v in t.values()])).then(pl.lit("NULL_VALUE_ERROR"))
        .when(~t["TransactionAmount"].str.contains(AMOUNT_RE)).then(pl.lit("TYPE_ERROR"))
        .when(pl.col("amount").is_null() | ~t["Currency"].is_in(CURRENCIES)).then(pl.lit("VALUE_ERROR"))
        .when(pl.col("ts").is_null()).then(pl.lit("TIMESTAMP_ERROR"))
    )
    checked = rows.with_columns(
        t["TransactionID"].alias("TransactionID"), t["CustomerID"].alias("CustomerID"), amount.alias("amount"),
        t["Currency"].alias("Currency"), ts.alias("ts"), (~line.hash().is_first_distinct()).alias("exact_duplicate"),
    ).with_columns(error.alias("error_type"))
    candidate = pl.col("error_type").is_null() & ~pl.col("exact_duplicate")
    repeated_key = candidate & ~pl.when(candidate).then(pl.col("TransactionID")).hash().is_first_distinct()
    checked = checked.with_columns(
        pl.when(pl.col("exact_duplicate")).then(pl.lit("condemned"))
        .when(candidate & ~repeated_key).then(pl.lit("valid"))
        .otherwise(pl.lit("quarantined")).alias("status"),
        pl.when(repeated_key).then(pl.lit("DUPLICATE_KEY_ERROR")).otherwise(pl.col("error_type")).alias("error_type"),
    )
    wrong_count = pl.col("error_type") == "SCHEMA_ERROR"
    side = [pl.when(wrong_count).then(pl.lit(None)).otherwise(pl.col(r)).alias(c) for r, c in zip(raw, COLUMNS)]
    side += [pl.col("raw_record"), pl.col("record_number")]
    valid = checked.filter(pl.col("status") == "valid").select(
        "TransactionID", "CustomerID", pl.col("amount").alias("TransactionAmount"), "Currency",
        pl.col("ts").alias("TransactionTimestamp"),
        pl.col("ts").dt.year().cast(pl.String).str.zfill(4).alias("year"),
        pl.col("ts").dt.month().cast(pl.String).str.zfill(2).alias("month"),
    )
    quarantined = checked.filter(pl.col("status") == "quarantined").select(*side, pl.col("error_type"))
    condemned = checked.filter(pl.col("status") == "condemned").select(
        *side, pl.lit("EXACT_DUPLICATE").alias("condemned_reason"))
    return checked, valid, quarantined, condemned


def sink_polars(out, checked, valid, quarantined, condemned):
    """Runs the plan's three sinks (and the row count) in one `collect_all`; counts what was written."""
    import polars as pl

    parquet = dict(compression="zstd", compression_level=ZSTD_LEVEL, lazy=True)
    input_rows, *_ = pl.collect_all(
        [
            checked.select(pl.len()),
            valid.sink_parquet(
                pl.PartitionBy(out / "silver", key=["year", "month"], include_key=False), mkdir=True, **parquet
            ),
            quarantined.sink_parquet(out / "quarantine.parquet", **parquet),
            condemned.sink_parquet(out / "condemned.parquet", **parquet),
        ],
        engine="streaming",
    )

    def count(path):
        return pl.scan_parquet(path, hive_partitioning=False).select(pl.len()).collect().item()

    return input_rows.item(), count(out / "silver" / "**" / "*.parquet"), count(out / "quarantine.parquet"), count(
        out / "condemned.parquet"
    )


def sql_str(value):
    return "'" + str(value).replace("'", "''") + "'"


def run_duckdb(input_path, out):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # a timestamp without a zone is UTC; year()/month() give UTC parts
    ws = "' \t\n\r' || chr(11) || chr(12)"
    # trim(x, characters) is slow (~4x a plain scan of the column), so it only runs on the few values that start
    # or end with whitespace.
    edge_ws = r"'^[ \t\n\r\x0b\x0c]|[ \t\n\r\x0b\x0c]$'"

    def trimmed(column):
        return f"CASE WHEN regexp_matches({column}, {edge_ws}) THEN trim({column}, {ws}) ELSE {column} END"

    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS) + "}"
    currencies = ", ".join(sql_str(c) for c in CURRENCIES)
    raw_cols = ", ".join(f'"{c}_raw"' for c in COLUMNS)
    # Classify every well-formed record. Empty fields come back as NULL: coalesce them to '' for the raw values.
    con.execute(
        f"""
        CREATE TEMP TABLE checked AS
        WITH src AS MATERIALIZED (
            SELECT ordinality AS ord,
                   {", ".join(f'coalesce("{c}", {sql_str("")}) AS "{c}_raw"' for c in COLUMNS)}
            FROM read_csv({sql_str(input_path)}, header = true, delim = ',', quote = '"', escape = '"',
                          auto_detect = false, all_varchar = true, columns = {columns},
                          ignore_errors = true, store_rejects = true) WITH ORDINALITY
        ),
        -- Exact duplicates and repeated keys: a GROUP BY keeps the (few) repeated values with their first
        -- occurrence, joined back; a window partitioned over every row (row_number() OVER (PARTITION BY ...))
        -- gives the same answer at ~3x the cost.
        repeats AS (
            SELECT {raw_cols}, min(ord) AS first_ord FROM src GROUP BY ALL HAVING count(*) > 1
        ),
        trimmed AS (
            SELECT s.*, {", ".join(f'{trimmed(chr(34) + c + "_raw" + chr(34))} AS "{c}"' for c in COLUMNS)},
                   coalesce(s.ord > r.first_ord, false) AS exact_duplicate
            FROM src s LEFT JOIN repeats r USING ({raw_cols})
        ),
        typed AS (
            SELECT *,
                CASE WHEN regexp_full_match(TransactionTimestamp, {sql_str(TIMESTAMP_RE)})
                      AND NOT starts_with(TransactionTimestamp, '0000')
                     THEN try_cast(TransactionTimestamp AS TIMESTAMPTZ) END AS ts
            FROM trimmed
        ),
        classified AS MATERIALIZED (
            SELECT *,
                CASE WHEN {" OR ".join(f'"{c}" = {sql_str("")}' for c in COLUMNS)} THEN 'NULL_VALUE_ERROR'
                     WHEN NOT regexp_full_match(TransactionAmount, {sql_str(AMOUNT_RE)}) THEN 'TYPE_ERROR'
                     WHEN regexp_matches(TransactionAmount, {sql_str(AMOUNT_TOO_BIG_RE)}) THEN 'VALUE_ERROR'
                     WHEN Currency NOT IN ({currencies}) THEN 'VALUE_ERROR'
                     WHEN ts IS NULL THEN 'TIMESTAMP_ERROR'
                END AS error_type
            FROM typed
        ),
        keys AS (
            SELECT TransactionID, min(ord) AS first_ord FROM classified
            WHERE error_type IS NULL AND NOT exact_duplicate GROUP BY ALL HAVING count(*) > 1
        ),
        keyed AS (
            SELECT c.*,
                CASE WHEN c.error_type IS NULL AND NOT c.exact_duplicate
                     THEN CASE WHEN c.ord > k.first_ord THEN 2 ELSE 1 END END AS key_rank
            FROM classified c LEFT JOIN keys k USING (TransactionID)
        )
        SELECT ord, {", ".join(f'"{c}_raw", "{c}"' for c in COLUMNS)}, ts,
               CASE WHEN exact_duplicate THEN 'condemned' WHEN key_rank = 1 THEN 'valid' ELSE 'quarantined' END
                   AS status,
               CASE WHEN key_rank > 1 THEN 'DUPLICATE_KEY_ERROR' ELSE error_type END AS error_type
        FROM keyed
        """
    )
    return write_duckdb_outputs(con, out, "CAST(TransactionAmount AS DECIMAL(18, 2))")


def write_duckdb_outputs(con, out, amount):
    """Writes the three outputs from the temp table `checked` (status, error_type, ord, the raw and trimmed
    values, ts; `amount` is the SQL of the typed amount) and the reader's `reject_errors`; counts what was
    written."""
    # Rejected lines (wrong field count, or anything else DuckDB's reader refuses) are SCHEMA_ERROR rows; a line
    # may be listed once per problem, so take each once. Their order among themselves is their line number, and
    # their record number is the line number less the header (the reader, like the generator, has no record that
    # spans lines).
    con.execute(
        """
        CREATE TEMP TABLE rejected AS
        SELECT CAST(line AS BIGINT) - 1 AS record_number, csv_line AS raw_record,
               row_number() OVER (PARTITION BY csv_line ORDER BY line) > 1 AS exact_duplicate
        FROM (SELECT DISTINCT line, csv_line FROM reject_errors)
        """
    )
    parquet = f"FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL {ZSTD_LEVEL}"
    # Valid rows. The partition's UTC year and month come from the epoch (year() of a TIMESTAMPTZ goes through
    # ICU's calendar and costs ~7x more).
    con.execute(
        f"""
        COPY (
            SELECT TransactionID, CustomerID, {amount} AS TransactionAmount,
                   Currency, ts AS TransactionTimestamp,
                   lpad(CAST(year(utc) AS VARCHAR), 4, '0') AS year, lpad(CAST(month(utc) AS VARCHAR), 2, '0') AS month
            FROM (SELECT *, make_timestamp(epoch_us(ts)) AS utc FROM checked WHERE status = 'valid')
        ) TO {sql_str(out / "silver")} ({parquet}, PARTITION_BY (year, month))
        """
    )
    # The other well-formed rows, with their record number in the file: `ord` counts accepted rows only, so add
    # the rejected records before each (an ASOF join on a small table; only the ~2 % side rows need it).
    csv_field = "CASE WHEN regexp_matches({0}, '[,\"\\n\\r]') THEN '\"' || replace({0}, '\"', '\"\"') || '\"' ELSE {0} END"
    record = " || ',' || ".join(csv_field.format(f'"{c}_raw"') for c in COLUMNS)
    con.execute(
        f"""
        CREATE TEMP TABLE side AS
        WITH gaps AS (
            SELECT record_number - row_number() OVER (ORDER BY record_number) AS accepted_before,
                   row_number() OVER (ORDER BY record_number) AS rejected_before
            FROM rejected
        ),
        steps AS (SELECT accepted_before, max(rejected_before) AS rejected_before FROM gaps GROUP BY ALL)
        SELECT c.status, c.error_type, {", ".join(f'c."{col}_raw" AS "{col}"' for col in COLUMNS)},
               {record} AS raw_record, c.ord + coalesce(s.rejected_before, 0) AS record_number
        FROM (SELECT * FROM checked WHERE status <> 'valid') c
        ASOF LEFT JOIN steps s ON c.ord > s.accepted_before
        """
    )
    columns_out = ", ".join(f'"{c}"' for c in COLUMNS)
    nulls = ", ".join(f'NULL::VARCHAR AS "{c}"' for c in COLUMNS)
    con.execute(
        f"""
        COPY (
            SELECT {columns_out}, raw_record, record_number, error_type FROM side WHERE status = 'quarantined'
            UNION ALL
            SELECT {nulls}, raw_record, record_number, 'SCHEMA_ERROR' FROM rejected WHERE NOT exact_duplicate
            ORDER BY record_number
        ) TO {sql_str(out / "quarantine.parquet")} ({parquet})
        """
    )
    con.execute(
        f"""
        COPY (
            SELECT {columns_out}, raw_record, record_number, 'EXACT_DUPLICATE' AS condemned_reason
            FROM side WHERE status = 'condemned'
            UNION ALL
            SELECT {nulls}, raw_record, record_number, 'EXACT_DUPLICATE' FROM rejected WHERE exact_duplicate
            ORDER BY record_number
        ) TO {sql_str(out / "condemned.parquet")} ({parquet})
        """
    )
    input_rows = con.execute("SELECT (SELECT count(*) FROM checked) + (SELECT count(*) FROM rejected)").fetchone()[0]

    def count(glob):
        return con.execute(f"SELECT count(*) FROM read_parquet({sql_str(glob)})").fetchone()[0]

    return input_rows, count(out / "silver" / "**" / "*.parquet"), count(out / "quarantine.parquet"), count(
        out / "condemned.parquet"
    )


def run_duckdb_lean(input_path, out):
    """What a user tuning DuckDB for this feed writes: DuckDB's own CSV reader (quotes handled there, rows of the
    wrong width set aside with `store_rejects`), the casts as the checks, exact duplicates and repeated keys found
    by small GROUP BYs joined back (no window over the input), and one partitioned COPY.

    What it leaves out, relying on what the bench feed (bench/generate.py) is known to hold, unlike `duckdb`:
    * trimming of spaces only (`trim(x)`; the feed pads with spaces; not \t, \v, \f, \r);
    * the timestamp's shape is checked only as "at least 19 characters with a `T` at the 11th", then
      `try_cast(... AS TIMESTAMPTZ)`, which is laxer than the contract (it would take `2024-01-15T10:00`,
      a 9-digit fraction or a `0000` year; the feed holds none);
    * no separate VALUE_ERROR check for amounts above 16 integer digits: the DECIMAL cast gives null for them,
      counted as VALUE_ERROR after the amount's shape passed (the feed holds none);
    * raw records of side rows rebuilt from the fields (quoted when needed), not the bytes as read.
    Every row is still counted: input_rows = accepted + rejected lines, and the run fails if valid + quarantined +
    condemned differs."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS) + "}"
    currencies = ", ".join(sql_str(c) for c in CURRENCIES)
    raw = ", ".join(f'coalesce("{c}", \'\') AS "{c}_raw"' for c in COLUMNS)
    raw_cols = ", ".join(f'"{c}_raw"' for c in COLUMNS)
    con.execute(
        f"""
        CREATE TEMP TABLE src AS
        SELECT ordinality AS ord, {raw}
        FROM read_csv({sql_str(input_path)}, header = true, delim = ',', quote = '"', escape = '"',
                      auto_detect = false, all_varchar = true, columns = {columns},
                      ignore_errors = true, store_rejects = true) WITH ORDINALITY
        """
    )
    amount, ts = "trim(TransactionAmount_raw)", "trim(TransactionTimestamp_raw)"
    con.execute(
        f"""
        CREATE TEMP TABLE checked AS
        WITH repeats AS (SELECT {raw_cols}, min(ord) AS first_ord FROM src GROUP BY ALL HAVING count(*) > 1),
        typed AS (
            SELECT s.*, trim(TransactionID_raw) AS TransactionID, trim(CustomerID_raw) AS CustomerID,
                   trim(Currency_raw) AS Currency,
                   try_cast({amount} AS DECIMAL(18, 2)) AS amount,
                   CASE WHEN length({ts}) >= 19 AND {ts}[11] = 'T' THEN try_cast({ts} AS TIMESTAMPTZ) END AS ts,
                   coalesce(s.ord > r.first_ord, false) AS exact_duplicate,
                   CASE WHEN {" OR ".join(f"trim({c}_raw) = ''" for c in COLUMNS)} THEN 'NULL_VALUE_ERROR'
                        WHEN NOT regexp_full_match({amount}, {sql_str(AMOUNT_RE)}) THEN 'TYPE_ERROR'
                        WHEN amount IS NULL OR Currency NOT IN ({currencies}) THEN 'VALUE_ERROR'
                        WHEN ts IS NULL THEN 'TIMESTAMP_ERROR'
                   END AS error_type
            FROM src s LEFT JOIN repeats r USING ({raw_cols})
        ),
        keys AS (
            SELECT TransactionID, min(ord) AS first_ord FROM typed
            WHERE error_type IS NULL AND NOT exact_duplicate GROUP BY ALL HAVING count(*) > 1
        )
        SELECT t.* EXCLUDE (error_type),
               CASE WHEN exact_duplicate THEN 'condemned'
                    WHEN error_type IS NULL AND k.first_ord IS NOT NULL AND t.ord > k.first_ord THEN 'quarantined'
                    WHEN error_type IS NULL THEN 'valid' ELSE 'quarantined' END AS status,
               CASE WHEN NOT exact_duplicate AND error_type IS NULL AND t.ord > k.first_ord
                    THEN 'DUPLICATE_KEY_ERROR' ELSE error_type END AS error_type
        FROM typed t LEFT JOIN keys k USING (TransactionID)
        """
    )
    return write_duckdb_outputs(con, out, "amount")


RUNS = {"polars": run_polars, "polars-lean": run_polars_lean, "duckdb": run_duckdb, "duckdb-lean": run_duckdb_lean}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=sorted(RUNS), required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="a new or empty directory")
    p.add_argument("--contract", help="checked to be the transactions contract the peers implement")
    a = p.parse_args()
    check_contract(a.contract)
    check_header(a.input)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    input_rows, valid, quarantined, condemned = RUNS[a.engine](os.path.abspath(a.input), out)
    print(json.dumps({"engine": a.engine, "input_rows": input_rows, "valid": valid, "quarantined": quarantined,
                      "condemned": condemned}))
    if input_rows != valid + quarantined + condemned:
        sys.exit(f"{a.engine}: conservation broken: {input_rows} input rows != {valid} + {quarantined} + {condemned}")


if __name__ == "__main__":
    main()
