//! End-to-end tests of the `silverline-worker` binary on a local lake: every error kind, the awkward corners of
//! CSV, and every exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use std::io::Write;
use support::*;
use tempfile::TempDir;

fn row(id: &str, customer: &str, amount: &str, currency: &str, ts: &str) -> String {
    format!("{id},{customer},{amount},{currency},{ts}\n")
}

fn good(i: usize) -> String {
    row(&format!("T{i}"), &format!("C{i}"), "10.00", "EUR", "2024-01-15T10:00:00Z")
}

/// A lenient contract, so that small inputs with many errors still succeed.
fn lenient(dir: &std::path::Path) -> std::path::PathBuf {
    contract(dir, &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0")])
}

#[test]
fn the_sample_run_succeeds_and_accounts_for_every_row() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let input = repo_root().join("examples/data/transactions.csv");
    let out = run_worker(&repo_root().join("examples/datasets/transactions.yaml"), &input, &lake, "sample");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = success(&lake, "sample");
    assert_eq!(report.outcome, "success");
    assert_eq!(report.input_rows, 3000);
    assert_eq!(
        report.input_rows,
        report.valid_rows_count + report.quarantined_rows_count + report.condemned_rows_count
    );
    assert!(report.quarantine_rate <= 0.01, "the sample must pass its quality gate: {}", report.quarantine_rate);
    for kind in
        ["SCHEMA_ERROR", "NULL_VALUE_ERROR", "TYPE_ERROR", "VALUE_ERROR", "TIMESTAMP_ERROR", "DUPLICATE_KEY_ERROR"]
    {
        assert!(report.error_type_distribution.get(kind).copied().unwrap_or(0) > 0, "the sample has no {kind}");
    }
    assert!(report.condemned_reason_distribution.get("EXACT_DUPLICATE").copied().unwrap_or(0) > 0);
    let bytes = std::fs::read(&input).unwrap();
    assert_eq!(report.input_checksum, sha256(&bytes));
    // Every file listed exists with the listed size and checksum, and the rows add up per area.
    for file in &report.files {
        let path = file.key.strip_prefix("file://").unwrap();
        let data = std::fs::read(path).unwrap();
        assert_eq!(data.len() as u64, file.bytes, "{}", file.key);
        assert_eq!(sha256(&data), file.sha256, "{}", file.key);
    }
    let area_rows = |area: &str| report.files.iter().filter(|f| f.area == area).map(|f| f.rows).sum::<u64>();
    assert_eq!(area_rows("silver"), report.valid_rows_count);
    assert_eq!(area_rows("quarantine"), report.quarantined_rows_count);
    assert_eq!(area_rows("condemned"), report.condemned_rows_count);
    assert_eq!(rows(&read_area(&lake, "silver", "sample")) as u64, report.valid_rows_count);
    assert_eq!(rows(&read_area(&lake, "quarantine", "sample")) as u64, report.quarantined_rows_count);
    // Silver is typed per the contract.
    let silver = read_area(&lake, "silver", "sample");
    let schema = silver[0].schema();
    assert_eq!(schema.field_with_name("TransactionAmount").unwrap().data_type(), &DataType::Decimal128(18, 2));
    assert_eq!(
        schema.field_with_name("TransactionTimestamp").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    // Not on a terminal (as in a pod): one structured log line carries the metrics and the _SUCCESS path, not
    // every file; stdout stays empty, so the pod's log is JSON only.
    assert_eq!(out.stdout, "", "nothing but JSON logs in a pod");
    let metrics = out.stderr.lines().find(|l| l.contains("\"run finished\"")).expect("a metrics log line");
    let line: serde_json::Value = serde_json::from_str(metrics).unwrap();
    assert_eq!(line["valid_rows_count"], report.valid_rows_count);
    assert_eq!(line["quarantined_rows_count"], report.quarantined_rows_count);
    let success_path = run_dir(&lake, "silver", "sample").join("_SUCCESS");
    assert!(line["success"].as_str().unwrap().ends_with(&*success_path.to_string_lossy()), "{line}");
    assert!(line.get("files").is_none() && !metrics.contains(".parquet"), "the log line lists no files: {metrics}");
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn every_error_kind_is_quarantined_with_its_type_column_and_place() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += &good(1); // record 1, line 2
    text += "T2,C2,10.00,EUR\n"; // SCHEMA_ERROR
    text += &row("T3", "", "10.00", "EUR", "2024-01-15T10:00:00Z"); // NULL_VALUE_ERROR
    text += &row("T4", "C4", "12.345", "EUR", "2024-01-15T10:00:00Z"); // TYPE_ERROR
    text += &row("T5", "C5", "10.00", "usd", "2024-01-15T10:00:00Z"); // VALUE_ERROR
    text += &row("T6", "C6", "10.00", "EUR", "2024-01-15 10:00:00"); // TIMESTAMP_ERROR
    text += &row("T1", "C9", "99.00", "USD", "2024-01-15T10:00:00Z"); // DUPLICATE_KEY_ERROR
    text += &good(1); // exact duplicate
    let input = write(tmp.path(), "in.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let q = read_area(&lake, "quarantine", "r1");
    let types: Vec<String> = strings(&q, "error_type").into_iter().flatten().collect();
    assert_eq!(
        types,
        ["SCHEMA_ERROR", "NULL_VALUE_ERROR", "TYPE_ERROR", "VALUE_ERROR", "TIMESTAMP_ERROR", "DUPLICATE_KEY_ERROR"]
    );
    let columns = strings(&q, "error_column");
    assert_eq!(
        columns,
        [
            None,
            Some("CustomerID".into()),
            Some("TransactionAmount".into()),
            Some("Currency".into()),
            Some("TransactionTimestamp".into()),
            None
        ]
    );
    let record_numbers: Vec<u64> = q
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("record_number").unwrap().as_primitive::<arrow::datatypes::UInt64Type>().clone();
            a.values().to_vec()
        })
        .collect();
    assert_eq!(record_numbers, [2, 3, 4, 5, 6, 7]);
    let messages: Vec<String> = strings(&q, "error_message").into_iter().flatten().collect();
    assert!(messages[2].contains("TransactionAmount") && messages[2].contains("12.345"), "{}", messages[2]);
    let sources: Vec<String> = strings(&q, "source_uri").into_iter().flatten().collect();
    assert!(sources.iter().all(|s| s.ends_with("/in.csv")), "{sources:?}");
    // Raw values are kept as text; a wrong field count keeps the record in raw_record only.
    assert_eq!(strings(&q, "TransactionAmount")[2].as_deref(), Some("12.345"));
    assert_eq!(strings(&q, "TransactionAmount")[0], None);
    assert_eq!(strings(&q, "raw_record")[0].as_deref(), Some("T2,C2,10.00,EUR"));
    let c = read_area(&lake, "condemned", "r1");
    assert_eq!(strings(&c, "condemned_reason"), [Some("EXACT_DUPLICATE".into())]);
    let report = success(&lake, "r1");
    assert_eq!(
        (report.input_rows, report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count),
        (8, 1, 6, 1)
    );
}

#[test]
fn crlf_bom_and_quoted_fields_with_commas_quotes_and_newlines_are_read() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let text = format!(
        "\u{feff}{HEADER}\r\nT1,\"C1, EU\",1.00,EUR,2024-01-15T10:00:00Z\r\nT2,\"say \"\"hi\"\"\",2.00,EUR,2024-01-15T10:00:00Z\r\nT3,\"multi\nline\",3.00,EUR,2024-01-15T10:00:00Z\r\n"
    );
    let input = write(tmp.path(), "crlf.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let silver = read_area(&lake, "silver", "r1");
    let customers: Vec<String> = strings(&silver, "CustomerID").into_iter().flatten().collect();
    assert_eq!(customers, ["C1, EU", "say \"hi\"", "multi\nline"]);
    assert_eq!(success(&lake, "r1").valid_rows_count, 3);
}

#[test]
fn a_header_only_input_is_a_valid_empty_run() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let input = write(tmp.path(), "empty.csv", format!("{HEADER}\n"));
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = success(&lake, "r1");
    assert_eq!((report.input_rows, report.files.len()), (0, 0));
    assert!(files_under(&lake).iter().all(|f| !f.ends_with(".parquet")));
}

#[test]
fn an_empty_file_is_unreadable_input_and_nothing_is_written() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let input = write(tmp.path(), "nothing.csv", "");
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("nothing.csv") && out.stderr.contains("no header"), "{}", out.stderr);
    assert_eq!(files_under(&lake), Vec::<String>::new());
}

#[test]
fn schema_drift_is_exit_3_before_any_object_is_written() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a.csv", format!("{HEADER}\n{}", good(1)));
    // The second file drifts: Amount instead of TransactionAmount, and an extra column.
    write(
        &dir,
        "b.csv",
        "TransactionID,CustomerID,Amount,Currency,TransactionTimestamp,Note\nT2,C2,1,EUR,2024-01-01T00:00:00Z,x\n",
    );
    let out = run_worker(&lenient(tmp.path()), &dir, &lake, "r1");
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("b.csv"), "{}", out.stderr);
    assert!(
        out.stderr.contains("TransactionAmount") && out.stderr.contains("\\\"Note\\\" at column 6"),
        "{}",
        out.stderr
    );
    assert_eq!(files_under(&lake), Vec::<String>::new());
}

#[test]
fn a_missing_input_is_exit_3_naming_it() {
    let tmp = TempDir::new().unwrap();
    let out = run_worker(&lenient(tmp.path()), &tmp.path().join("nope.csv"), &tmp.path().join("lake"), "r1");
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("nope.csv"), "{}", out.stderr);
}

#[test]
fn a_reordered_header_is_matched_by_name() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let text = "Currency,TransactionTimestamp,TransactionAmount,CustomerID,TransactionID\nGBP,2024-03-01T12:00:00Z,5.5,C1,T1\n";
    let input = write(tmp.path(), "reordered.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let silver = read_area(&lake, "silver", "r1");
    assert_eq!(silver[0].schema().field(0).name(), "TransactionID");
    assert_eq!(strings(&silver, "TransactionID"), [Some("T1".into())]);
    assert_eq!(strings(&silver, "Currency"), [Some("GBP".into())]);
    let amount = silver[0]
        .column_by_name("TransactionAmount")
        .unwrap()
        .as_primitive::<arrow::datatypes::Decimal128Type>()
        .value(0);
    assert_eq!(amount, 550);
}

#[test]
fn leap_days_and_offsets_crossing_a_month_land_in_the_utc_partition() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += &row("T1", "C", "1", "EUR", "2024-01-31T23:30:00-02:00"); // 2024-02-01T01:30Z
    text += &row("T2", "C", "1", "EUR", "2024-02-29T12:00:00Z"); // leap day
    text += &row("T3", "C", "1", "EUR", "2024-03-01T00:30:00+01:00"); // 2024-02-29T23:30Z
    text += &row("T4", "C", "1", "EUR", "2023-02-29T12:00:00Z"); // not a leap year
    text += &row("T5", "C", "1", "EUR", "2023-12-31T23:00:00"); // no zone: UTC
    let input = write(tmp.path(), "dates.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let parts: Vec<String> =
        files_under(&run_dir(&lake, "silver", "r1")).into_iter().filter(|f| f.ends_with(".parquet")).collect();
    assert_eq!(parts, ["year=2023/month=12/part-00000.parquet", "year=2024/month=02/part-00000.parquet"]);
    let feb = read_parquet(&run_dir(&lake, "silver", "r1").join("year=2024/month=02/part-00000.parquet"));
    assert_eq!(strings(&feb, "TransactionID"), [Some("T1".into()), Some("T2".into()), Some("T3".into())]);
    let ts = feb[0].column_by_name("TransactionTimestamp").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
    assert_eq!(ts.value(0), 1_706_751_000_000_000); // 2024-02-01T01:30:00Z
    let q = read_area(&lake, "quarantine", "r1");
    assert_eq!(strings(&q, "error_type"), [Some("TIMESTAMP_ERROR".into())]);
}

#[test]
fn invalid_utf8_in_a_field_is_a_schema_error_that_keeps_the_row() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut bytes = format!("{HEADER}\n").into_bytes();
    bytes.extend_from_slice(b"T1,C\xff\xfe1,1.00,EUR,2024-01-15T10:00:00Z\n");
    bytes.extend_from_slice(good(2).as_bytes());
    let input = write(tmp.path(), "latin1.csv", bytes);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let q = read_area(&lake, "quarantine", "r1");
    assert_eq!(strings(&q, "error_type"), [Some("SCHEMA_ERROR".into())]);
    assert_eq!(strings(&q, "error_column"), [Some("CustomerID".into())]);
    assert_eq!(strings(&q, "CustomerID"), [None]);
    assert!(strings(&q, "raw_record")[0].as_deref().unwrap().starts_with("T1,C\u{fffd}"));
    assert_eq!(success(&lake, "r1").valid_rows_count, 1);
}

#[test]
fn a_run_id_is_never_reused_and_the_lake_is_left_unchanged() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let input = write(tmp.path(), "in.csv", format!("{HEADER}\n{}", good(1)));
    let c = lenient(tmp.path());
    assert_eq!(run_worker(&c, &input, &lake, "r1").code, 0);
    let before: Vec<(String, Vec<u8>)> = files_under(&lake)
        .into_iter()
        .map(|f| {
            let d = std::fs::read(lake.join(&f)).unwrap();
            (f, d)
        })
        .collect();
    let again = run_worker(&c, &input, &lake, "r1");
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("run id r1 is already used"), "{}", again.stderr);
    let after: Vec<(String, Vec<u8>)> = files_under(&lake)
        .into_iter()
        .map(|f| {
            let d = std::fs::read(lake.join(&f)).unwrap();
            (f, d)
        })
        .collect();
    assert_eq!(before, after);
    // With the input missing as well, the reused run id is what is reported: it is checked first (side by side
    // with the inputs' lookup).
    let gone = run_worker(&c, &tmp.path().join("gone.csv"), &lake, "r1");
    assert_eq!(gone.code, 2, "{}", gone.stderr);
    assert!(gone.stderr.contains("run id r1 is already used"), "{}", gone.stderr);
    // A run id that would escape its directory is refused before anything happens.
    let bad = run_worker(&c, &input, &lake, "../../etc");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn configuration_errors_are_exit_2() {
    let tmp = TempDir::new().unwrap();
    let input = write(tmp.path(), "in.csv", format!("{HEADER}\n{}", good(1)));
    let lake = tmp.path().join("lake");
    let wrong_kind = contract(tmp.path(), &[("kind: Dataset", "kind: Something")]);
    let out = run_worker(&wrong_kind, &input, &lake, "r1");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("contract-1.yaml"), "{}", out.stderr);
    let missing = run_worker(&tmp.path().join("absent.yaml"), &input, &lake, "r1");
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    let flag = std::process::Command::new(worker_bin()).args(["run", "--bogus"]).output().unwrap();
    assert_eq!(flag.status.code(), Some(2));
    assert_eq!(files_under(&lake), Vec::<String>::new());
}

/// A contract whose circuit breaker trips at the third error of one type (and no quality gate to speak of).
fn tripping_contract(dir: &std::path::Path) -> std::path::PathBuf {
    contract(dir, &[("maxSameErrors: 100", "maxSameErrors: 2"), ("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0")])
}

#[test]
fn the_circuit_breaker_stops_the_run_with_exit_4() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = tripping_contract(tmp.path());
    let mut text = format!("{HEADER}\n");
    for i in 0..5 {
        text += &row(&format!("T{i}"), "C", "bad", "EUR", "2024-01-15T10:00:00Z");
    }
    let input = write(tmp.path(), "in.csv", text);
    let out = run_worker(&c, &input, &lake, "r1");
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("TYPE_ERROR") && out.stderr.contains("record 3, line 4"), "{}", out.stderr);
    let silver = run_dir(&lake, "silver", "r1");
    assert!(!silver.join("_SUCCESS").exists());
    assert!(silver.join("_CIRCUIT_BREAKER.json").exists());
}

/// With two threads, quarantined and condemned rows are encoded in a thread of their own: a run stopped by its
/// circuit breaker after such rows (and silver's) were handed to it stops that thread before it exits, and leaves
/// neither a part file nor a half-written one in the lake, only its claim and the breaker's marker.
#[test]
fn a_run_stopped_by_its_circuit_breaker_on_two_threads_leaves_no_part_files() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = tripping_contract(tmp.path());
    let mut text = format!("{HEADER}\n");
    for i in 0..40_000 {
        // And its exact duplicate: condemned, not an error; enough of them that the side rows' thread has a
        // condemned part file open, with bytes on their way to the lake, when the run stops.
        text += &good(i);
        text += &good(i);
    }
    // A duplicate key: quarantined, once (no trip).
    text += &row("T1", "other", "1.00", "EUR", "2024-01-15T10:00:00Z");
    for i in 0..3 {
        text += &row(&format!("B{i}"), "C", "bad", "EUR", "2024-01-15T10:00:00Z");
    }
    let input = write(tmp.path(), "in.csv", text);
    let out = ran(worker_command(&c, &input, &lake, "r1")
        .args(["--threads", "2"])
        .env("SILVERLINE_CHUNK_BYTES", "4096")
        .output()
        .unwrap());
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("TYPE_ERROR"), "{}", out.stderr);
    let run = "silver/transactions/schema_v=v1/run_id=r1";
    assert_eq!(files_under(&lake), [format!("{run}/_CIRCUIT_BREAKER.json"), format!("{run}/_RUN.json")]);
}

#[test]
fn the_quality_gate_keeps_data_for_review_with_exit_5() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    for i in 0..20 {
        text += &good(i);
    }
    text += &row("X", "C", "10.00", "XXX", "2024-01-15T10:00:00Z");
    let input = write(tmp.path(), "in.csv", text);
    let out = run_worker(&repo_root().join("examples/datasets/transactions.yaml"), &input, &lake, "r1");
    assert_eq!(out.code, 5, "{}", out.stderr);
    let silver = run_dir(&lake, "silver", "r1");
    assert!(!silver.join("_SUCCESS").exists());
    let report: silverline_crds::report::RunReport =
        serde_json::from_slice(&std::fs::read(silver.join("_QUALITY_REPORT.json")).unwrap()).unwrap();
    assert_eq!(report.outcome, "quality_gate_failed");
    assert_eq!((report.valid_rows_count, report.quarantined_rows_count), (20, 1));
    assert_eq!(rows(&read_area(&lake, "silver", "r1")), 20);
    assert_eq!(rows(&read_area(&lake, "quarantine", "r1")), 1);
}

#[test]
fn sigterm_stops_the_run_with_exit_75_and_no_success() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let input = tmp.path().join("big.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        writeln!(f, "{HEADER}").unwrap();
        for i in 0..1_500_000 {
            writeln!(f, "T{i},C{i},{}.{:02},EUR,2024-{:02}-15T10:00:00Z", i % 1000, i % 100, i % 12 + 1).unwrap();
        }
    }
    let child = std::process::Command::new(worker_bin())
        .args(["run", "--progress", "off", "--contract"])
        .arg(lenient(tmp.path()))
        .arg("--input")
        .arg(&input)
        .arg("--lake")
        .arg(&lake)
        .args(["--run-id", "r1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let claim = run_dir(&lake, "silver", "r1").join("_RUN.json");
    let started = std::time::Instant::now();
    while !claim.exists() {
        assert!(started.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!run_dir(&lake, "silver", "r1").join("_SUCCESS").exists());
    // Nothing half-written is visible: every Parquet file present is complete and readable.
    for f in files_under(&lake).into_iter().filter(|f| f.ends_with(".parquet")) {
        read_parquet(&lake.join(f));
    }
}

#[test]
fn a_prefix_reads_every_csv_in_lexicographic_order_including_compressed_ones() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let dir = tmp.path().join("bronze");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    write(&dir, "b.csv", format!("{HEADER}\n{}T9,C,bad,EUR,2024-01-15T10:00:00Z\n", good(2)));
    write(&dir, "a.csv", format!("{HEADER}\n{}", good(1)));
    write(&dir, "notes.txt", "not input");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("{HEADER}\n{}", good(3)).as_bytes()).unwrap();
    write(&dir.join("sub"), "c.csv.gz", gz.finish().unwrap());
    let zst = zstd::encode_all(format!("{HEADER}\n{}{}", good(4), good(1)).as_bytes(), 3).unwrap();
    write(&dir.join("sub"), "d.csv.zst", zst);
    let out = run_worker(&lenient(tmp.path()), &dir, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = success(&lake, "r1");
    let names: Vec<&str> = report.inputs.iter().map(|i| i.uri.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["a.csv", "b.csv", "c.csv.gz", "d.csv.zst"]);
    // T1 appears in a.csv and again in d.csv.zst: an exact duplicate across objects.
    assert_eq!((report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count), (4, 1, 1));
    let q = read_area(&lake, "quarantine", "r1");
    assert!(strings(&q, "source_uri")[0].as_deref().unwrap().ends_with("/b.csv"));
    let c = read_area(&lake, "condemned", "r1");
    assert!(strings(&c, "source_uri")[0].as_deref().unwrap().ends_with("/sub/d.csv.zst"));
}

#[test]
fn replaying_quarantine_raises_attempts_until_rows_are_condemned() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = lenient(tmp.path());
    let text = format!("{HEADER}\n{}{}", good(1), row("T2", "C2", "10.00", "XXX", "2024-01-15T10:00:00Z"));
    let input = write(tmp.path(), "in.csv", text);
    assert_eq!(run_worker(&c, &input, &lake, "a1").code, 0);
    let first_hash = strings(&read_area(&lake, "quarantine", "a1"), "row_hash");
    let attempts = |run: &str, area: &str| -> Vec<u32> {
        read_area(&lake, area, run)
            .iter()
            .flat_map(|b| {
                b.column_by_name("attempt_count")
                    .unwrap()
                    .as_primitive::<arrow::datatypes::UInt32Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    };
    assert_eq!(attempts("a1", "quarantine"), [1]);
    let out = run_worker(&c, &run_dir(&lake, "quarantine", "a1"), &lake, "a2");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(attempts("a2", "quarantine"), [2]);
    assert_eq!(strings(&read_area(&lake, "quarantine", "a2"), "row_hash"), first_hash);
    // Lineage is kept: the row still names its original source and record.
    assert!(strings(&read_area(&lake, "quarantine", "a2"), "source_uri")[0].as_deref().unwrap().ends_with("/in.csv"));
    let out = run_worker(&c, &run_dir(&lake, "quarantine", "a2"), &lake, "a3");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(attempts("a3", "condemned"), [3]);
    assert_eq!(
        strings(&read_area(&lake, "condemned", "a3"), "condemned_reason"),
        [Some("MAX_ATTEMPTS_REACHED".into())]
    );
    let report = success(&lake, "a3");
    assert_eq!((report.input_rows, report.condemned_rows_count, report.auto_condemnation_rate), (1, 1, 1.0));
    // A contract fix makes a replayed row valid.
    let fixed = contract(
        tmp.path(),
        &[
            ("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0"),
            ("[EUR, USD, GBP, CHF, JPY]", "[EUR, USD, GBP, CHF, JPY, XXX]"),
        ],
    );
    let out = run_worker(&fixed, &run_dir(&lake, "quarantine", "a2"), &lake, "a4");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(success(&lake, "a4").valid_rows_count, 1);
}

#[test]
fn a_condemned_run_is_refused_as_a_replay_input_and_nothing_is_written() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = lenient(tmp.path());
    let input = write(tmp.path(), "in.csv", format!("{HEADER}\n{}{}", good(1), good(1)));
    assert_eq!(run_worker(&c, &input, &lake, "r1").code, 0);
    assert_eq!(success(&lake, "r1").condemned_rows_count, 1);
    // Replaying the condemned exact duplicate would load T1 a second time.
    let out = run_worker(&c, &run_dir(&lake, "condemned", "r1"), &lake, "r2");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("condemned rows are terminal and never replayed"), "{}", out.stderr);
    assert!(!run_dir(&lake, "silver", "r2").exists(), "nothing of r2 is written");
}

#[test]
fn a_value_with_text_after_its_closing_quote_keeps_its_bytes_and_fails_again_on_replay() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = lenient(tmp.path());
    // csv-core would read each of these as a plain value (C1x, C5, C2): the worker refuses them, and a replay
    // with the same contract must not take them for valid.
    let records = [
        "TX2,\"C1\"x,10.00,EUR,2024-01-01T00:00:00Z",
        "TX3,\"\"C5,10.00,EUR,2024-01-01T00:00:00Z",
        "TX4,\"C2\" ,10.00,EUR,2024-01-01T00:00:00Z",
    ];
    let text = format!("{HEADER}\r\n{}\r\n{}\n{}\n", records[0], records[1], records[2]);
    let input = write(tmp.path(), "in.csv", text);
    assert_eq!(run_worker(&c, &input, &lake, "r1").code, 0);
    assert_eq!(success(&lake, "r1").quarantined_rows_count, 3);
    let q = read_area(&lake, "quarantine", "r1");
    // The record as it was, byte for byte (line break excluded), in raw_record and raw_record_bytes.
    assert_eq!(strings(&q, "raw_record"), records.map(|r| Some(r.to_owned())));
    let bytes: Vec<Vec<u8>> = q
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("raw_record_bytes").unwrap().as_binary::<i32>().clone();
            (0..a.len()).map(move |i| a.value(i).to_vec())
        })
        .collect();
    assert_eq!(bytes, records.map(|r| r.as_bytes().to_vec()));
    // Not per-column values: csv-core's reading (C1x) is not what the file says.
    assert_eq!(strings(&q, "CustomerID"), [None, None, None]);
    let out = run_worker(&c, &run_dir(&lake, "quarantine", "r1"), &lake, "r2");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = success(&lake, "r2");
    assert_eq!((report.valid_rows_count, report.quarantined_rows_count), (0, 3));
    let again = read_area(&lake, "quarantine", "r2");
    assert_eq!(strings(&again, "raw_record"), records.map(|r| Some(r.to_owned())));
}

#[test]
#[cfg(unix)]
fn a_pipe_is_refused_at_once_and_upper_case_extensions_are_read_in_a_folder() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = lenient(tmp.path());
    // A FIFO without a writer: opening it to read the records after the header would block for ever.
    let fifo = tmp.path().join("feed.csv");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let out = ran(std::process::Command::new("timeout")
        .arg("20")
        .arg(worker_bin())
        .args(["run", "--progress", "off", "--run-id", "r1", "--contract"])
        .arg(&c)
        .arg("--input")
        .arg(&fifo)
        .arg("--lake")
        .arg(&lake)
        .output()
        .expect("the worker starts"));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);
    assert!(!lake.join("silver").exists(), "nothing written");
    // A folder: EXPORT.CSV is as much input as z.csv.
    let dir = tmp.path().join("feed");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "EXPORT.CSV", format!("{HEADER}\n{}", good(1)));
    write(&dir, "z.csv", format!("{HEADER}\n{}", good(2)));
    let out = run_worker(&c, &dir, &lake, "r2");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = success(&lake, "r2");
    let names: Vec<&str> = report.inputs.iter().map(|i| i.uri.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["EXPORT.CSV", "z.csv"]);
    assert_eq!(report.valid_rows_count, 2);
}

#[test]
fn lone_cr_line_ends_number_lines_and_cut_blocks_like_lf() {
    // Classic Mac line ends, over several blocks (a few MB): every record is numbered by its own line, and the
    // input is tokenized in blocks (not held whole), with the same result as its LF twin.
    let tmp = TempDir::new().unwrap();
    let c = lenient(tmp.path());
    let rows = 120_000;
    let mut records = vec![HEADER.to_owned()];
    for i in 0..rows {
        let amount = if i == rows - 7 { "bad".to_owned() } else { "10.00".to_owned() };
        records.push(format!("T{i},C{i},{amount},EUR,2024-01-15T10:00:00Z"));
    }
    let lf = write(tmp.path(), "lf.csv", records.join("\n") + "\n");
    let cr = write(tmp.path(), "cr.csv", records.join("\r") + "\r");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_eq!(run_worker(&c, &lf, &a, "r1").code, 0);
    let out = run_worker(&c, &cr, &b, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = |lake: &std::path::Path| {
        read_area(lake, "quarantine", "r1")
            .iter()
            .flat_map(|batch| {
                let a = batch.column_by_name("line_number").unwrap();
                a.as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec()
            })
            .collect::<Vec<_>>()
    };
    // The header is line 1, record i is line i + 2.
    assert_eq!(line(&a), [(rows - 7 + 2) as u64]);
    assert_eq!(line(&b), line(&a));
    assert_eq!(success(&b, "r1").valid_rows_count, (rows - 1) as u64);
}

#[test]
fn the_same_input_and_run_id_give_byte_identical_files() {
    let tmp = TempDir::new().unwrap();
    let input = repo_root().join("examples/data/transactions.csv");
    let c = repo_root().join("examples/datasets/transactions.yaml");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert_eq!(run_worker(&c, &input, &a, "same").code, 0);
    assert_eq!(run_worker(&c, &input, &b, "same").code, 0);
    let parquet = |lake: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        files_under(lake)
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .map(|f| {
                let d = std::fs::read(lake.join(&f)).unwrap();
                (f, d)
            })
            .collect()
    };
    let (pa, pb) = (parquet(&a), parquet(&b));
    assert!(!pa.is_empty());
    assert_eq!(pa, pb);
}

#[test]
fn instants_outside_years_1_to_9999_utc_are_timestamp_errors_naming_the_range() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += &row("Y1", "C1", "1.00", "EUR", "0001-01-01T00:30:00+01:00"); // 0000-12-31T23:30Z
    text += &row("Y2", "C1", "1.00", "EUR", "0001-01-01T00:00:00Z"); // the first instant: valid
    text += &row("Y3", "C1", "1.00", "EUR", "9999-12-31T23:30:00-01:00"); // 10000-01-01T00:30Z
    text += &row("Y4", "C1", "1.00", "EUR", "9999-12-31T23:59:59.999999Z"); // the last instant: valid
    let input = write(tmp.path(), "edges.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let parts: Vec<String> =
        files_under(&run_dir(&lake, "silver", "r1")).into_iter().filter(|f| f.ends_with(".parquet")).collect();
    assert_eq!(parts, ["year=0001/month=01/part-00000.parquet", "year=9999/month=12/part-00000.parquet"]);
    let q = read_area(&lake, "quarantine", "r1");
    assert_eq!(strings(&q, "TransactionID"), [Some("Y1".into()), Some("Y3".into())]);
    assert_eq!(strings(&q, "error_type"), [Some("TIMESTAMP_ERROR".into()), Some("TIMESTAMP_ERROR".into())]);
    for message in strings(&q, "error_message").into_iter().flatten() {
        assert!(
            message.contains("0001-01-01T00:00:00Z") && message.contains("9999-12-31T23:59:59.999999Z"),
            "{message}"
        );
    }
}

#[test]
fn any_decoder_error_of_compressed_input_is_unreadable_input_exit_3() {
    let tmp = TempDir::new().unwrap();
    let c = lenient(tmp.path());
    let text: String = format!("{HEADER}\n") + &(0..2000).map(good).collect::<String>();
    let mut zst = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    zst.include_checksum(true).unwrap();
    zst.write_all(text.as_bytes()).unwrap();
    let zst = zst.finish().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let flip = |bytes: &[u8], at: usize| {
        let mut b = bytes.to_vec();
        b[at] ^= 0x55;
        b
    };
    let mut garbage_frame = b"\x28\xb5\x2f\xfd".to_vec();
    garbage_frame.extend(0..=199u8);
    let mut bad_checksum = zst.clone();
    let end = bad_checksum.len() - 1;
    bad_checksum[end] ^= 0xff;
    let cases: [(&str, Vec<u8>); 6] = [
        ("garbage-frame.csv.zst", garbage_frame),
        ("unknown-frame.csv.zst", b"\x29\xb5\x2f\xfdnot a frame at all".to_vec()),
        ("flipped-block.csv.zst", flip(&zst, zst.len() / 2)),
        ("bad-checksum.csv.zst", bad_checksum),
        ("flipped-deflate.csv.gz", flip(&gz, gz.len() / 2)),
        ("bad-crc.csv.gz", flip(&gz, gz.len() - 6)),
    ];
    for (i, (name, bytes)) in cases.into_iter().enumerate() {
        let input = write(tmp.path(), name, bytes);
        let out = run_worker(&c, &input, &tmp.path().join(format!("lake{i}")), "r1");
        assert_eq!(out.code, 3, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(name), "{name}: {}", out.stderr);
    }
}

#[test]
fn a_local_lake_without_write_permission_is_permanent_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lake = tmp.path().join("lake");
    std::fs::create_dir(&lake).unwrap();
    std::fs::set_permissions(&lake, std::fs::Permissions::from_mode(0o555)).unwrap();
    let input = write(tmp.path(), "in.csv", format!("{HEADER}\n{}", good(1)));
    let c = lenient(tmp.path());
    // Root ignores file modes: run the worker as nobody then.
    let root = std::process::Command::new("id").arg("-u").output().unwrap().stdout.starts_with(b"0\n");
    let mut command = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", worker_bin()]);
        c
    } else {
        std::process::Command::new(worker_bin())
    };
    let out = command
        .args(["run", "--progress", "off", "--run-id", "r1", "--contract"])
        .arg(&c)
        .arg("--input")
        .arg(&input)
        .arg("--lake")
        .arg(&lake)
        .output()
        .expect("the worker starts");
    let out = ran(out);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("access_denied"), "{}", out.stderr);
    assert!(files_under(&lake).is_empty());
}

#[test]
fn rows_that_differ_only_in_surrounding_whitespace_are_exact_duplicates() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += &row("TX1", "C1", "10.00", "EUR", "2024-01-15T10:00:00Z");
    text += &row(" TX1 ", "C1", "10.00\t", "EUR", " 2024-01-15T10:00:00Z");
    text += "bad, row\n";
    text += " bad,row \n";
    text += &row("TX1", "C1", "10.0", "EUR", "2024-01-15T10:00:00Z"); // other content: 10.0 is another text
    let input = write(tmp.path(), "ws.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c = read_area(&lake, "condemned", "r1");
    assert_eq!(strings(&c, "condemned_reason"), [Some("EXACT_DUPLICATE".into()), Some("EXACT_DUPLICATE".into())]);
    assert_eq!(strings(&c, "raw_record")[0].as_deref(), Some(" TX1 ,C1,10.00\t,EUR, 2024-01-15T10:00:00Z"));
    let q = read_area(&lake, "quarantine", "r1");
    assert_eq!(strings(&q, "error_type"), [Some("SCHEMA_ERROR".into()), Some("DUPLICATE_KEY_ERROR".into())]);
    let report = success(&lake, "r1");
    assert_eq!((report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count), (1, 2, 2));
    // row_hash stays the hash of the untrimmed fields: the two spellings keep different hashes.
    let hashes = strings(&c, "row_hash");
    let valid_hash = {
        let mut again = format!("{HEADER}\n");
        again += &row("TX1", "C1", "10.00", "EUR", "2024-01-15T10:00:00Z");
        again += &row("TX1", "C1", "10.00", "EUR", "2024-01-15T10:00:00Z");
        let input = write(tmp.path(), "same.csv", again);
        assert_eq!(run_worker(&lenient(tmp.path()), &input, &lake, "r2").code, 0);
        strings(&read_area(&lake, "condemned", "r2"), "row_hash")[0].clone()
    };
    assert_ne!(hashes[0], valid_hash);
}

#[test]
fn messages_name_the_key_the_open_quote_the_fraction_and_quote_huge_values_briefly() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += &good(1); // record 1
    text += &row("T1", "C9", "99.00", "EUR", "2024-01-15T10:00:00Z"); // record 2: key T1 again
    text += &row("T3", "C3", "12.345", "EUR", "2024-01-15T10:00:00Z"); // record 3: three decimals
    text += &row("T4", "C4", &"x".repeat(200_000), "EUR", "2024-01-15T10:00:00Z"); // record 4: a huge bad value
    text += &row("T5", "C5", "10.00", "EUR", "2024-01-15T10:00:00.1234567890Z"); // record 5: ten fraction digits
    text += "T6,\"C6,10.00,EUR,2024-01-15T10:00:00Z\n"; // record 6, line 7: a quote that never closes
    text += &good(7);
    text += &good(8);
    let input = write(tmp.path(), "msgs.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let q = read_area(&lake, "quarantine", "r1");
    let types: Vec<String> = strings(&q, "error_type").into_iter().flatten().collect();
    assert_eq!(types, ["DUPLICATE_KEY_ERROR", "TYPE_ERROR", "TYPE_ERROR", "TIMESTAMP_ERROR", "SCHEMA_ERROR"]);
    let messages: Vec<String> = strings(&q, "error_message").into_iter().flatten().collect();
    assert!(messages[0].contains("TransactionID") && messages[0].contains("\"T1\""), "{}", messages[0]);
    assert!(
        messages[0].contains("held by record 1 of file://") && messages[0].contains("/msgs.csv"),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("\"12.345\"") && messages[1].contains("3 fraction digits"), "{}", messages[1]);
    assert!(messages[2].len() < 400 && messages[2].contains('…'), "{} bytes", messages[2].len());
    assert!(messages[2].contains("200000 bytes"), "{}", &messages[2]);
    assert!(messages[3].contains("10 fraction digits"), "{}", messages[3]);
    assert!(
        messages[4].contains("quote") && messages[4].contains("line 7") && messages[4].contains("never closed"),
        "{}",
        messages[4]
    );
}

#[test]
fn repeats_name_the_file_and_record_that_hold_the_key_or_row_first_across_files() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let feed = tmp.path().join("feed");
    std::fs::create_dir(&feed).unwrap();
    let mut a = format!("{HEADER}\n");
    a += &good(1); // a.csv record 1
    a += "bad,row\n"; // a.csv record 2
    a += &good(3); // a.csv record 3
    write(&feed, "a.csv", a);
    let mut b = format!("{HEADER}\n");
    b += &row("T3", "C9", "99.00", "EUR", "2024-01-15T10:00:00Z"); // b.csv record 1: key T3 of a.csv record 3
    b += "bad,row\n"; // b.csv record 2: the same as a.csv record 2
    b += &good(1); // b.csv record 3: the same as a.csv record 1
    write(&feed, "b.csv", b);
    let out = run_worker(&lenient(tmp.path()), &feed, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let q = read_area(&lake, "quarantine", "r1");
    let key = strings(&q, "error_message")[1].clone().unwrap();
    assert!(key.contains("TransactionID \"T3\" is already held by record 3 of file://"), "{key}");
    assert!(key.contains("/feed/a.csv"), "{key}");
    let c = read_area(&lake, "condemned", "r1");
    let dups: Vec<String> = strings(&c, "error_message").into_iter().flatten().collect();
    assert_eq!(dups.len(), 2, "{dups:?}");
    assert!(
        dups[0].starts_with("exact duplicate of record 2 of file://")
            && dups[0].ends_with("/feed/a.csv: the same values after trimming"),
        "{}",
        dups[0]
    );
    assert!(
        dups[1].starts_with("exact duplicate of record 1 of file://") && dups[1].contains("/feed/a.csv"),
        "{}",
        dups[1]
    );
}

#[test]
fn text_after_a_closing_quote_is_a_schema_error_not_rewritten() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += "T1,\"C1\"x,10.00,EUR,2024-01-15T10:00:00Z\n";
    text += "T2,\"C\"\"2\",10.00,EUR,2024-01-15T10:00:00Z\n"; // an escaped quote: valid
    text += "T3,C\"3,10.00,EUR,2024-01-15T10:00:00Z\n"; // a quote inside an unquoted field is text: valid
    text += "T4,\"C4\" ,10.00,EUR,2024-01-15T10:00:00Z\n"; // even a space after the closing quote
    let input = write(tmp.path(), "quotes.csv", text);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let q = read_area(&lake, "quarantine", "r1");
    // Kept as the file has them, not as csv-core joined them (C1x): no per-column values, the exact record.
    assert_eq!(
        strings(&q, "raw_record"),
        [
            Some("T1,\"C1\"x,10.00,EUR,2024-01-15T10:00:00Z".into()),
            Some("T4,\"C4\" ,10.00,EUR,2024-01-15T10:00:00Z".into())
        ]
    );
    assert_eq!(strings(&q, "TransactionID"), [None, None]);
    assert_eq!(strings(&q, "error_type"), [Some("SCHEMA_ERROR".into()), Some("SCHEMA_ERROR".into())]);
    assert_eq!(strings(&q, "error_column"), [Some("CustomerID".into()), Some("CustomerID".into())]);
    let message = strings(&q, "error_message")[0].clone().unwrap();
    assert!(message.contains("after the closing quote"), "{message}");
    let silver = read_area(&lake, "silver", "r1");
    assert_eq!(strings(&silver, "CustomerID"), [Some("C\"2".into()), Some("C\"3".into())]);
}

#[test]
fn a_truncated_gzip_exits_3_leaving_only_the_run_id_claim() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let text: String = format!("{HEADER}\n")
        + &(0..50_000).map(good).collect::<String>()
        + &(0..500).map(|i| row(&format!("X{i}"), "C", "bad", "EUR", "2024-01-15T10:00:00Z")).collect::<String>();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let input = write(tmp.path(), "cut.csv.gz", &gz[..gz.len() * 9 / 10]);
    let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("cut.csv.gz"), "{}", out.stderr);
    // As the README's exit code table says: the run id stays claimed, no part file and no _SUCCESS.
    assert_eq!(files_under(&lake), ["silver/transactions/schema_v=v1/run_id=r1/_RUN.json"]);
    let again =
        run_worker(&lenient(tmp.path()), &write(tmp.path(), "ok.csv", format!("{HEADER}\n{}", good(1))), &lake, "r1");
    assert_eq!(again.code, 2, "the claimed run id is not reused: {}", again.stderr);
}

fn binaries(batches: &[arrow::array::RecordBatch], column: &str) -> Vec<Option<Vec<u8>>> {
    use arrow::array::Array;
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap_or_else(|| panic!("no column {column}")).as_binary::<i32>().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i).to_vec())).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn quarantine_keeps_the_original_bytes_of_a_row_that_is_not_utf8_across_replays() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let c = lenient(tmp.path());
    let bad: &[u8] = b"TX1,C\xff\xfe1,10.00,EUR,2024-01-15T10:00:00Z";
    let mut bytes = format!("{HEADER}\n").into_bytes();
    bytes.extend_from_slice(bad);
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(row("TX2", "C2", "10.00", "XXX", "2024-01-15T10:00:00Z").as_bytes());
    let input = write(tmp.path(), "latin1.csv", bytes);
    assert_eq!(run_worker(&c, &input, &lake, "a1").code, 0);
    let q = read_area(&lake, "quarantine", "a1");
    // The text column cannot hold the bytes; the binary one does, and is null where the text is exact.
    assert_eq!(binaries(&q, "raw_record_bytes"), [Some(bad.to_vec()), None]);
    let out = run_worker(&c, &run_dir(&lake, "quarantine", "a1"), &lake, "a2");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let replayed = read_area(&lake, "quarantine", "a2");
    assert_eq!(binaries(&replayed, "raw_record_bytes"), [Some(bad.to_vec()), None]);
    assert_eq!(strings(&replayed, "error_type")[0].as_deref(), Some("SCHEMA_ERROR"));
    // A quarantine file written before the column existed is still replayable.
    let old_dir = tmp.path().join("old");
    std::fs::create_dir(&old_dir).unwrap();
    let batch = &q[0];
    let keep: Vec<usize> =
        (0..batch.num_columns()).filter(|i| batch.schema().field(*i).name() != "raw_record_bytes").collect();
    let old = batch.project(&keep).unwrap();
    let file = std::fs::File::create(old_dir.join("part-00000.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, old.schema(), None).unwrap();
    writer.write(&old).unwrap();
    writer.close().unwrap();
    let out = run_worker(&c, &old_dir, &lake, "a3");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(rows(&read_area(&lake, "quarantine", "a3")), 2);
}

#[test]
fn a_replay_is_gated_on_rows_that_fail_anew_not_on_rows_that_fail_again() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    text += &(1..=10).map(good).collect::<String>();
    for (id, currency) in [("Q1", "XXX"), ("Q2", "XXX"), ("Q3", "XXX"), ("Q4", "XXX"), ("Q5", "ZZZ"), ("Q6", "ZZZ")] {
        text += &row(id, "C", "10.00", currency, "2024-01-15T10:00:00Z");
    }
    text += &row("T1", "C9", "99.00", "EUR", "2024-01-15T10:00:00Z"); // DUPLICATE_KEY_ERROR
    let input = write(tmp.path(), "in.csv", text);
    assert_eq!(run_worker(&lenient(tmp.path()), &input, &lake, "a1").code, 0);
    assert_eq!(success(&lake, "a1").quarantined_rows_count, 7);
    // The source now allows XXX; the dataset keeps its 1 % gate. Q5 and Q6 fail again as before: not new.
    let fixed = contract(tmp.path(), &[("[EUR, USD, GBP, CHF, JPY]", "[EUR, USD, GBP, CHF, JPY, XXX]")]);
    let out = run_worker(&fixed, &run_dir(&lake, "quarantine", "a1"), &lake, "a2");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = success(&lake, "a2");
    // The metric stays honest: 2 of 7 replayed rows are in quarantine again.
    assert_eq!((report.valid_rows_count, report.quarantined_rows_count), (5, 2));
    assert!((report.quarantine_rate - 2.0 / 7.0).abs() < 1e-9, "{}", report.quarantine_rate);
    // The duplicate key passes a replay: its earlier holder is not in the replay's input (promotion's
    // key_collision check is what catches it).
    let silver_ids: Vec<String> =
        strings(&read_area(&lake, "silver", "a2"), "TransactionID").into_iter().flatten().collect();
    assert!(silver_ids.contains(&"T1".to_owned()), "{silver_ids:?}");
    // A contract that makes the replayed rows fail in a new way is gated like any run.
    let stricter = contract(
        tmp.path(),
        &[("[EUR, USD, GBP, CHF, JPY]", "[EUR, USD, GBP, CHF, JPY, XXX]"), ("scale: 2", "scale: 1")],
    );
    let out = run_worker(&stricter, &run_dir(&lake, "quarantine", "a1"), &lake, "a3");
    assert_eq!(out.code, 5, "{}", out.stderr);
}

/// The `line_number` column of an area, in input order.
fn line_numbers(lake: &std::path::Path, area: &str, run_id: &str) -> Vec<u64> {
    read_area(lake, area, run_id)
        .iter()
        .flat_map(|batch| {
            let a = batch.column_by_name("line_number").unwrap();
            a.as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec()
        })
        .collect()
}

#[test]
fn records_after_a_header_are_numbered_by_their_line_whatever_the_line_end_and_bom() {
    let tmp = TempDir::new().unwrap();
    let c = lenient(tmp.path());
    for (i, bom) in ["", "\u{feff}"].into_iter().enumerate() {
        for (j, end) in ["\n", "\r\n", "\r"].into_iter().enumerate() {
            // Lines: 1 header, 2 and 3 bad amounts, 4 blank, 5 a quote that never closes.
            let text = [
                format!("{bom}{HEADER}"),
                "TX1,C1,abc,EUR,2024-01-01T00:00:00Z".into(),
                "TX2,C1,abc,EUR,2024-01-01T00:00:00Z".into(),
                String::new(),
                "TX3,\"C1,1.00,EUR,2024-01-01T00:00:00Z".into(),
            ]
            .join(end);
            let input = write(tmp.path(), &format!("in{i}{j}.csv"), text);
            let lake = tmp.path().join(format!("lake{i}{j}"));
            let out = run_worker(&c, &input, &lake, "r1");
            assert_eq!(out.code, 0, "{bom:?} {end:?}: {}", out.stderr);
            assert_eq!(line_numbers(&lake, "quarantine", "r1"), [2, 3, 5], "{bom:?} {end:?}");
            let messages = strings(&read_area(&lake, "quarantine", "r1"), "error_message");
            let open = messages[2].as_deref().unwrap();
            assert!(open.contains("field 2 on line 5"), "{bom:?} {end:?}: {open}");
        }
    }
}

#[test]
fn a_valid_row_is_no_duplicate_of_a_row_quarantined_for_how_it_was_written() {
    let tmp = TempDir::new().unwrap();
    let c = lenient(tmp.path());
    for (i, (refused, valid)) in [("\"C1\" ", "C1"), ("\"C1\"x", "C1x")].into_iter().enumerate() {
        let text = format!(
            "{HEADER}\nTX1,{refused},1.00,EUR,2024-01-01T00:00:00Z\nTX1,{valid},1.00,EUR,2024-01-01T00:00:00Z\n"
        );
        let input = write(tmp.path(), &format!("in{i}.csv"), text);
        let lake = tmp.path().join(format!("lake{i}"));
        let out = run_worker(&c, &input, &lake, "r1");
        assert_eq!(out.code, 0, "{refused:?}: {}", out.stderr);
        let report = success(&lake, "r1");
        let counts = (report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count);
        assert_eq!(counts, (1, 1, 0), "{refused:?}");
        assert_eq!(line_numbers(&lake, "quarantine", "r1"), [2], "{refused:?}");
        assert_eq!(strings(&read_area(&lake, "silver", "r1"), "CustomerID"), [Some(valid.trim().to_owned())]);
    }
    // Two records written the same way are still exact duplicates; the same values spelled otherwise are not.
    let text = format!(
        "{HEADER}\nTX1,\"C1\"x,1.00,EUR,2024-01-01T00:00:00Z\nTX1,\"C1\"x,1.00,EUR,2024-01-01T00:00:00Z\n\
         TX1,\"C\"1x,1.00,EUR,2024-01-01T00:00:00Z\n"
    );
    let input = write(tmp.path(), "twice.csv", text);
    let lake = tmp.path().join("twice");
    assert_eq!(run_worker(&c, &input, &lake, "r1").code, 0);
    let report = success(&lake, "r1");
    assert_eq!((report.valid_rows_count, report.quarantined_rows_count, report.condemned_rows_count), (0, 2, 1));
    assert_eq!(line_numbers(&lake, "condemned", "r1"), [3]);
}

#[test]
fn every_quarantined_record_keeps_its_input_bytes_across_replays() {
    let tmp = TempDir::new().unwrap();
    let c = lenient(tmp.path());
    let lake = tmp.path().join("lake");
    let records: [&[u8]; 5] = [
        b"\"TX1\",C\xff1,1.00,EUR,2024-01-01T00:00:00Z", // not UTF-8, with quotes a re-write drops
        b"TX2,C\"1,abc,EUR,2024-01-01T00:00:00Z",        // a quote inside an unquoted value
        b"\"TX3\",C1,1.00,EUR",                          // wrong field count, quoted
        b"TX5,C5,10.00,XXX,2024-01-01T00:00:00Z",        // rewritten exactly: no bytes needed
        b"TX4,\"C1,1.00,EUR,2024-01-01T00:00:00Z\r\n",   // a quote never closed: the rest of the file
    ];
    let mut bytes = format!("{HEADER}\r\n").into_bytes();
    for r in &records[..4] {
        bytes.extend_from_slice(r);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(records[4]);
    let input = write(tmp.path(), "in.csv", bytes);
    let out = run_worker(&c, &input, &lake, "a1");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected: Vec<Option<Vec<u8>>> =
        records.iter().enumerate().map(|(i, r)| (i != 3).then(|| r.to_vec())).collect();
    let q = read_area(&lake, "quarantine", "a1");
    assert_eq!(binaries(&q, "raw_record_bytes"), expected);
    // raw_record is the record re-written from its fields, as documented; where that is not the file's bytes,
    // raw_record_bytes holds them.
    assert_eq!(strings(&q, "raw_record")[3].as_deref(), Some("TX5,C5,10.00,XXX,2024-01-01T00:00:00Z"));
    assert_eq!(line_numbers(&lake, "quarantine", "a1"), [2, 3, 4, 5, 6]);
    let out = run_worker(&c, &run_dir(&lake, "quarantine", "a1"), &lake, "a2");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let replayed = read_area(&lake, "quarantine", "a2");
    assert_eq!(binaries(&replayed, "raw_record_bytes"), expected);
    assert_eq!(strings(&replayed, "raw_record"), strings(&q, "raw_record"));
    assert_eq!(success(&lake, "a2").quarantined_rows_count, 5);
}

#[test]
fn schema_drift_names_the_headers_own_line_after_blank_lines() {
    let tmp = TempDir::new().unwrap();
    let drifted = "TransactionID,CustomerID,Amount,Currency,TransactionTimestamp";
    for (name, text) in [
        ("drift.csv", format!("\r\n\n{drifted}\nT2,C2,1,EUR,2024-01-01T00:00:00Z\n").into_bytes()),
        ("latin1.csv", b"\n\nTransactionID,Customer\xffID\nT2,C2\n".to_vec()),
    ] {
        let input = write(tmp.path(), name, text);
        let lake = tmp.path().join(format!("lake-{name}"));
        let out = run_worker(&lenient(tmp.path()), &input, &lake, "r1");
        assert_eq!(out.code, 3, "{}", out.stderr);
        assert!(out.stderr.contains("header line 3"), "{name}: {}", out.stderr);
    }
}
