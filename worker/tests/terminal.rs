//! What a person at a terminal sees, and what a pod's log pipeline gets. The terminal is a real pseudo-terminal:
//! the worker runs under `script` (util-linux), so its stderr is a tty exactly as in a shell; the pod case runs it
//! with pipes, as Kubernetes does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use support::*;
use tempfile::TempDir;

fn quoted(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// Runs the worker with `args` on a pseudo-terminal; returns its exit code and what the terminal showed, with
/// line ends as `\n` and each `\r`-rewritten progress line kept as it last read.
fn on_terminal(args: &[&str], dir: &Path) -> (i32, String) {
    let command = std::iter::once(worker_bin()).chain(args.iter().copied()).map(quoted).collect::<Vec<_>>().join(" ");
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(dir)
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("`script` (util-linux) runs: it gives the worker a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let shown: Vec<String> = text.lines().map(|l| l.rsplit('\r').next().unwrap_or(l).to_owned()).collect();
    (out.status.code().unwrap_or(-1), shown.join("\n"))
}

fn sample_args<'a>(lake: &'a str, run_id: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--contract",
        "examples/datasets/transactions.yaml",
        "--input",
        "examples/data/transactions.csv",
        "--lake",
        lake,
        "--run-id",
        run_id,
    ]
}

#[test]
fn a_person_sees_a_short_summary_and_no_json() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let (code, shown) = on_terminal(&sample_args(lake.to_str().unwrap(), "tty"), &repo_root());
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains('{'), "no JSON on a terminal:\n{shown}");
    let report = success(&lake, "tty");
    for expected in [
        "run tty of dataset transactions (schema v1): 3,000 rows read",
        "valid              2,964   98.80 %",
        "quarantined           25    0.83 %  1 file under file://",
        "condemned             11    0.37 %  1 file under file://",
        "error type",
        "most affected column",
        "condemned: EXACT_DUPLICATE 11",
        "triage:   silverline-worker quarantine --contract FILE --run-id tty",
    ] {
        assert!(shown.contains(expected), "{expected:?} is not shown:\n{shown}");
    }
    // Every error type of the run has its line, with its count and the column it hit most.
    for (error_type, n) in &report.error_type_distribution {
        let line = shown.lines().find(|l| l.trim_start().starts_with(error_type.as_str())).expect(error_type);
        assert!(line.contains(&format!(" {n} ")), "{line}");
    }
    let amounts = shown.lines().find(|l| l.trim_start().starts_with("TYPE_ERROR")).unwrap();
    assert!(amounts.contains("TransactionAmount"), "{amounts}");
    let success_path = run_dir(&lake, "silver", "tty").join("_SUCCESS");
    assert!(shown.trim_end().ends_with(&format!("_SUCCESS: file://{}", success_path.display())), "{shown}");
}

#[test]
fn a_person_sees_the_progress_line_on_a_longer_run() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut text = format!("{HEADER}\n");
    for i in 0..600_000 {
        text += &format!("T{i},C{},{}.50,EUR,2024-0{}-15T10:00:00Z\n", i % 97, i % 1000, 1 + i % 9);
    }
    let input = write(tmp.path(), "big.csv", text);
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let args = [
        "run",
        "--contract",
        contract.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--run-id",
        "long",
    ];
    let (code, shown) = on_terminal(&args, tmp.path());
    assert_eq!(code, 0, "{shown}");
    let progress = shown.lines().find(|l| l.contains(" rows/s, ")).unwrap_or_else(|| panic!("no progress:\n{shown}"));
    assert!(progress.contains("MB read"), "{progress}");
    assert!(shown.contains("600,000 rows read"), "{shown}");
    assert!(!shown.contains('{'), "{shown}");
}

#[test]
fn a_person_sees_one_line_saying_what_failed_its_exit_code_and_what_next() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    // Schema drift: the feed lost its TransactionID column.
    let input = write(
        tmp.path(),
        "drift.csv",
        "CustomerID,TransactionAmount,Currency,TransactionTimestamp\nC1,1.00,EUR,2024-01-15T10:00:00Z\n",
    );
    let contract = repo_root().join("examples/datasets/transactions.yaml");
    let (c, i, l) = (contract.to_str().unwrap(), input.to_str().unwrap(), lake.to_str().unwrap());
    let (code, shown) =
        on_terminal(&["run", "--contract", c, "--input", i, "--lake", l, "--run-id", "drift"], tmp.path());
    assert_eq!(code, 3, "{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{shown}");
    let line = lines[0];
    assert!(line.starts_with("silverline-worker: schema drift in file://"), "{line}");
    assert!(line.contains("TransactionID"), "{line}");
    assert!(line.contains("exit 3 (schema drift or unreadable input)"), "{line}");
    assert!(line.contains("create a new schemaVersion") && line.ends_with("nothing was written"), "{line}");
    assert!(files_under(&lake).is_empty());

    // The quality gate: the line points at the triage command for that run.
    let bad = write(tmp.path(), "bad.csv", format!("{HEADER}\nT1,C1,abc,EUR,2024-01-15T10:00:00Z\n"));
    let (code, shown) = on_terminal(
        &["run", "--contract", c, "--input", bad.to_str().unwrap(), "--lake", l, "--run-id", "gate"],
        tmp.path(),
    );
    assert_eq!(code, 5, "{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{shown}");
    assert!(lines[0].contains("exit 5 (quality gate failed)"), "{}", lines[0]);
    assert!(lines[0].contains("silverline-worker quarantine --contract FILE --run-id gate"), "{}", lines[0]);
}

/// Every line is one JSON object in the operator's shape (tracing-subscriber's JSON formatter, flattened events):
/// it opens with the timestamp (RFC 3339, UTC) and the level, has a message, and closes with the target, a module
/// of the worker.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            for key in ["timestamp", "level", "message", "target"] {
                assert!(v.get(key).is_some_and(serde_json::Value::is_string), "no {key}: {l}");
            }
            let timestamp = v["timestamp"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok() && timestamp.ends_with('Z'), "{l}");
            assert!(
                l.starts_with("{\"timestamp\":") && l.contains(&format!("\"timestamp\":\"{timestamp}\",\"level\":")),
                "{l}"
            );
            let target = v["target"].as_str().unwrap();
            assert!(target == "silverline_worker" || target.starts_with("silverline_worker::"), "{l}");
            assert!(l.ends_with(&format!(",\"target\":\"{target}\"}}")), "the target closes the line: {l}");
            assert!(["INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()), "{l}");
            v
        })
        .collect()
}

#[test]
fn json_on_a_terminal_only_when_asked() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let mut args = sample_args(lake.to_str().unwrap(), "asked");
    args.extend(["--log-format", "json"]);
    let (code, shown) = on_terminal(&args, &repo_root());
    assert_eq!(code, 0, "{shown}");
    let lines = json_lines(&shown);
    let finished = lines.iter().find(|l| l["message"] == "run finished").expect("a run finished line");
    assert_eq!(finished["input_rows"], 3000);
}

#[test]
fn a_pod_gets_json_logs_in_the_operators_shape_with_counts_and_the_success_path() {
    let tmp = TempDir::new().unwrap();
    let lake = tmp.path().join("lake");
    let out = Command::new(worker_bin())
        .args(sample_args(lake.to_str().unwrap(), "pod"))
        .args(["--progress", "json"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let out = ran(out);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let lines = json_lines(&out.stderr);
    let finished = lines.iter().find(|l| l["message"] == "run finished").expect("a run finished line");
    assert_eq!(finished["level"], "INFO");
    assert_eq!(finished["valid_rows_count"], 2964);
    // A map keyed by data is the JSON text of the map (see worker/src/log.rs); the fixed ones are flattened.
    let errors: serde_json::Value =
        serde_json::from_str(finished["error_type_distribution"].as_str().unwrap()).unwrap();
    assert_eq!(errors["DUPLICATE_KEY_ERROR"], 4);
    let report = success(&lake, "pod");
    let silver_files = report.files.iter().filter(|f| f.area == "silver").count();
    assert_eq!(finished["silver_files"], silver_files, "{finished}");
    assert!(finished["silver_prefix"].as_str().unwrap().ends_with("/run_id=pod/"), "{finished}");
    assert!(finished["success"].as_str().unwrap().ends_with("run_id=pod/_SUCCESS"), "{finished}");
    assert!(finished.get("files").is_none() && !out.stderr.contains(".parquet"), "{finished}");
    let timestamp = finished["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(), "{timestamp}");

    // A failure in a pod: one JSON line with the error, its category and exit code; no text line.
    let out = ran(Command::new(worker_bin())
        .args(sample_args(lake.to_str().unwrap(), "pod"))
        .current_dir(repo_root())
        .output()
        .unwrap());
    assert_eq!(out.code, 2, "{}", out.stderr);
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["message"], "run failed");
    assert_eq!(lines[0]["exit_code"], 2);
    assert_eq!(lines[0]["category"], "run_id_reused");
    assert_eq!(lines[0]["run_id"], "pod");
    let error = lines[0]["error"].as_str().unwrap();
    assert!(error.starts_with("run id pod is already used: file://") && error.contains("run_id=pod/"), "{error}");
}
