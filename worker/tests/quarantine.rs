//! `silverline-worker quarantine`, the triage command, on a local lake: on the bundled sample and on a large
//! generated quarantine whose contents are known, with each filter and format, and proof that it reads only the
//! quarantine (or condemned) files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use support::*;
use tempfile::TempDir;

fn triage(contract: &Path, lake: &Path, run_id: &str, extra: &[&str]) -> Ran {
    let out = Command::new(worker_bin())
        .arg("quarantine")
        .arg("--contract")
        .arg(contract)
        .arg("--lake")
        .arg(lake)
        .args(["--run-id", run_id])
        .args(extra)
        .output()
        .unwrap();
    ran(out)
}

fn triage_json(contract: &Path, lake: &Path, run_id: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--format", "json"];
    args.extend(extra);
    let out = triage(contract, lake, run_id, &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn sample_run(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let lake = tmp.join("lake");
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let out = run_worker(&contract, &repo_root().join("examples/data/transactions.csv"), &lake, "first-load");
    assert_eq!(out.code, 0, "{}", out.stderr);
    (contract, lake)
}

#[test]
fn the_sample_quarantine_is_summarized_by_type_column_value_and_source_without_silver() {
    let tmp = TempDir::new().unwrap();
    let (contract, lake) = sample_run(tmp.path());
    let report = success(&lake, "first-load");
    // The triage reads only the quarantine: without silver and condemned it gives the same answer.
    std::fs::remove_dir_all(lake.join("silver")).unwrap();
    std::fs::remove_dir_all(lake.join("condemned")).unwrap();
    let t = triage_json(&contract, &lake, "first-load", &[]);
    assert_eq!(t["rows"], report.quarantined_rows_count);
    assert_eq!(t["total_rows"], 25);
    let by_type: std::collections::BTreeMap<String, u64> = t["by_error_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["error_type"].as_str().unwrap().to_owned(), e["rows"].as_u64().unwrap()))
        .collect();
    assert_eq!(by_type, report.error_type_distribution);
    let by_column: u64 = t["by_column"].as_array().unwrap().iter().map(|c| c["rows"].as_u64().unwrap()).sum();
    assert_eq!(by_column, 25);
    let sources = t["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1);
    assert!(sources[0]["source_uri"].as_str().unwrap().ends_with("examples/data/transactions.csv"));
    assert_eq!(sources[0]["rows"], 25);
    assert!(sources[0]["first_line"].as_u64().unwrap() >= 2);
    assert!(sources[0]["last_line"].as_u64().unwrap() <= 3001 + 10);
    // The sample: 10 rows by default, in input order, each with its record, line, raw record and message.
    let sample = t["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 10);
    let records: Vec<u64> = sample.iter().map(|s| s["record_number"].as_u64().unwrap()).collect();
    assert!(records.windows(2).all(|w| w[0] < w[1]), "{records:?}");
    for s in sample {
        assert!(s["line_number"].as_u64().unwrap() > s["record_number"].as_u64().unwrap());
        assert!(!s["raw_record"].as_str().unwrap().is_empty());
        assert!(!s["error_message"].as_str().unwrap().is_empty());
    }
    // Bad values: each listed value is the one in the column at fault, counted.
    for column in t["bad_values"].as_array().unwrap() {
        let values = column["values"].as_array().unwrap();
        assert!(!values.is_empty() && values.len() <= 5);
        assert!(values.windows(2).all(|w| w[0]["rows"].as_u64() >= w[1]["rows"].as_u64()));
    }
    // The table for a person says the same.
    let out = triage(&contract, &lake, "first-load", &["--limit", "3"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        "quarantine of run first-load, dataset transactions (schema v1): 25 rows in 1 file under file://",
        "most affected column",
        "most frequent bad values",
        "sources",
        "sample: the first 3 of 25 rows",
        "    raw:     ",
        "    message: ",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?}:\n{}", out.stdout);
    }
    for (error_type, n) in &report.error_type_distribution {
        let line = out.stdout.lines().find(|l| l.trim_start().starts_with(error_type.as_str())).expect(error_type);
        assert!(line.contains(&format!(" {n} ")), "{line}");
    }
}

#[test]
fn each_filter_narrows_the_summary_and_the_sample() {
    let tmp = TempDir::new().unwrap();
    let (contract, lake) = sample_run(tmp.path());
    let report = success(&lake, "first-load");
    for (error_type, n) in &report.error_type_distribution {
        let t = triage_json(&contract, &lake, "first-load", &["--error-type", error_type, "--limit", "100"]);
        assert_eq!(t["rows"], *n, "{error_type}");
        assert_eq!(t["total_rows"], 25);
        let sample = t["sample"].as_array().unwrap();
        assert_eq!(sample.len() as u64, *n);
        assert!(sample.iter().all(|s| s["error_type"] == error_type.as_str()), "{error_type}");
        assert_eq!(t["by_error_type"].as_array().unwrap().len(), 1);
    }
    let all = triage_json(&contract, &lake, "first-load", &["--limit", "100"]);
    let currency = all["sample"].as_array().unwrap().iter().filter(|s| s["error_column"] == "Currency").count();
    assert!(currency > 0);
    let t = triage_json(&contract, &lake, "first-load", &["--column", "Currency", "--limit", "100"]);
    assert_eq!(t["rows"], currency as u64);
    assert!(t["sample"].as_array().unwrap().iter().all(|s| s["error_column"] == "Currency"));
    assert!(t["bad_values"].as_array().unwrap().iter().all(|b| b["column"] == "Currency"));
    // Both filters at once; a filter that matches nothing says so.
    let t = triage_json(&contract, &lake, "first-load", &["--column", "Currency", "--error-type", "TYPE_ERROR"]);
    assert_eq!(t["rows"], 0);
    let out = triage(&contract, &lake, "first-load", &["--column", "Currency", "--error-type", "TYPE_ERROR"]);
    assert!(out.stdout.contains("no quarantine rows match"), "{}", out.stdout);
    // --limit 0: the summary only.
    let t = triage_json(&contract, &lake, "first-load", &["--limit", "0"]);
    assert_eq!(t["sample"].as_array().unwrap().len(), 0);
    assert_eq!(t["rows"], 25);
}

#[test]
fn condemned_rows_say_which_record_each_duplicates() {
    let tmp = TempDir::new().unwrap();
    let (contract, lake) = sample_run(tmp.path());
    let t = triage_json(&contract, &lake, "first-load", &["--condemned", "--limit", "100"]);
    assert_eq!(t["area"], "condemned");
    assert_eq!(t["rows"], 11);
    assert_eq!(t["by_error_type"][0]["error_type"], "EXACT_DUPLICATE");
    // The input's records, by record number (1-based), to look up each holder.
    let input = std::fs::read(repo_root().join("examples/data/transactions.csv")).unwrap();
    let records: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&input[..])
        .records()
        .map(|r| r.unwrap().iter().map(|f| f.trim().to_owned()).collect())
        .collect();
    let trimmed = |raw: &str| -> Vec<String> {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(raw.as_bytes());
        reader.records().next().unwrap().unwrap().iter().map(|f| f.trim().to_owned()).collect()
    };
    for s in t["sample"].as_array().unwrap() {
        assert_eq!(s["condemned_reason"], "EXACT_DUPLICATE");
        let message = s["error_message"].as_str().unwrap();
        let rest = message.strip_prefix("exact duplicate of record ").unwrap_or_else(|| panic!("{message}"));
        let holder: u64 = rest.split(' ').next().unwrap().parse().unwrap();
        assert!(holder < s["record_number"].as_u64().unwrap(), "{message}");
        assert!(message.contains("examples/data/transactions.csv"), "{message}");
        // The duplicate and its holder hold the same values once trimmed.
        assert_eq!(records[holder as usize - 1], trimmed(s["raw_record"].as_str().unwrap()), "{message}");
    }
    let t = triage_json(&contract, &lake, "first-load", &["--condemned", "--error-type", "EXACT_DUPLICATE"]);
    assert_eq!(t["rows"], 11);
}

#[test]
fn the_sample_as_csv_parses_back_to_the_rows() {
    let tmp = TempDir::new().unwrap();
    let (contract, lake) = sample_run(tmp.path());
    let out = triage(&contract, &lake, "first-load", &["--format", "csv", "--limit", "7"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut reader = csv::Reader::from_reader(out.stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[..3], ["source_uri", "record_number", "line_number"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 7);
    let json = triage_json(&contract, &lake, "first-load", &["--limit", "7"]);
    for (row, s) in rows.iter().zip(json["sample"].as_array().unwrap()) {
        assert_eq!(row[1].parse::<u64>().unwrap(), s["record_number"].as_u64().unwrap());
        assert_eq!(&row[8], s["raw_record"].as_str().unwrap());
        assert_eq!(&row[7], s["error_message"].as_str().unwrap());
    }
}

#[test]
fn a_wrong_run_id_or_filter_is_refused_with_exit_2() {
    let tmp = TempDir::new().unwrap();
    let (contract, lake) = sample_run(tmp.path());
    let out = triage(&contract, &lake, "no-such-run", &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no run no-such-run") && out.stderr.contains("_RUN.json"), "{}", out.stderr);
    let out = triage(&contract, &lake, "first-load", &["--error-type", "TYPO_ERROR"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("TIMESTAMP_ERROR"), "{}", out.stderr);
    let out = triage(&contract, &lake, "first-load", &["--column", "Amount"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("TransactionAmount"), "{}", out.stderr);
}

/// A large quarantine whose contents are known: every row is bad, in a fixed cycle of kinds.
#[test]
fn a_large_generated_quarantine_is_counted_exactly_with_each_filter() {
    const ROWS: usize = 120_000;
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let contract = contract(
        tmp.path(),
        &[("maxQuarantineRate: 0.01", "maxQuarantineRate: 1.0"), ("maxSameErrors: 100", "maxSameErrors: 1000000")],
    );
    let mut text = format!("{HEADER}\n");
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    for i in 0..ROWS {
        let (kind, line) = match i % 4 {
            0 => (
                "TYPE_ERROR",
                format!("T{i},C{i},{},EUR,2024-01-15T10:00:00Z\n", if i % 8 == 0 { "12.345" } else { "abc" }),
            ),
            1 => ("VALUE_ERROR", format!("T{i},C{i},1.00,eur,2024-01-15T10:00:00Z\n")),
            2 => ("NULL_VALUE_ERROR", format!("T{i},,1.00,EUR,2024-01-15T10:00:00Z\n")),
            _ => ("SCHEMA_ERROR", format!("T{i},C{i},1.00\n")),
        };
        *expected.entry(kind).or_default() += 1;
        text += &line;
    }
    let input = write(tmp.path(), "big.csv", text);
    let out = run_worker(&contract, &input, &lake, "big");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let t = triage_json(&contract, &lake, "big", &["--limit", "5"]);
    assert_eq!(t["rows"], ROWS as u64);
    for e in t["by_error_type"].as_array().unwrap() {
        assert_eq!(e["rows"].as_u64().unwrap(), expected[e["error_type"].as_str().unwrap()], "{e}");
        assert!((e["share"].as_f64().unwrap() - 0.25).abs() < 1e-9);
    }
    let most = |ty: &str| {
        t["by_error_type"].as_array().unwrap().iter().find(|e| e["error_type"] == ty).unwrap()["most_affected_column"]
            .clone()
    };
    assert_eq!(most("TYPE_ERROR"), "TransactionAmount");
    assert_eq!(most("SCHEMA_ERROR"), Value::Null);
    let values = |column: &str| {
        t["bad_values"].as_array().unwrap().iter().find(|b| b["column"] == column).unwrap()["values"].clone()
    };
    let amounts = values("TransactionAmount");
    assert_eq!(amounts[0]["value"], "12.345");
    assert_eq!(amounts[0]["rows"], ROWS as u64 / 8);
    assert_eq!(amounts[1]["value"], "abc");
    assert_eq!(amounts[1]["rows"], ROWS as u64 / 8);
    assert_eq!(values("Currency")[0], serde_json::json!({"value": "eur", "rows": ROWS / 4}));
    assert_eq!(values("CustomerID")[0], serde_json::json!({"value": "", "rows": ROWS / 4}));
    let source = &t["sources"][0];
    assert_eq!((source["first_line"].as_u64(), source["last_line"].as_u64()), (Some(2), Some(ROWS as u64 + 1)));
    assert_eq!((source["first_record"].as_u64(), source["last_record"].as_u64()), (Some(1), Some(ROWS as u64)));
    // Each filter, on the large file.
    let f = triage_json(&contract, &lake, "big", &["--error-type", "VALUE_ERROR", "--limit", "3"]);
    assert_eq!(f["rows"], ROWS as u64 / 4);
    let records: Vec<u64> =
        f["sample"].as_array().unwrap().iter().map(|s| s["record_number"].as_u64().unwrap()).collect();
    assert_eq!(records, [2, 6, 10]);
    let f = triage_json(&contract, &lake, "big", &["--column", "TransactionAmount", "--limit", "0"]);
    assert_eq!(f["rows"], ROWS as u64 / 4);
    let f = triage_json(&contract, &lake, "big", &["--column", "CustomerID", "--error-type", "NULL_VALUE_ERROR"]);
    assert_eq!(f["rows"], ROWS as u64 / 4);
    let f = triage_json(&contract, &lake, "big", &["--error-type", "DUPLICATE_KEY_ERROR"]);
    assert_eq!(f["rows"], 0);
}
