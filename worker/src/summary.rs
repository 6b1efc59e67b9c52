//! What a run tells its reader when it ends (pure, table-tested): on a terminal, a short summary for a person —
//! counts with percentages, a table of error types, where each area went, the `_SUCCESS` path — or one line saying
//! what failed, what its exit code means and what to do next; in a pod, each area's totals for the one JSON log
//! line (written by `log`; the file list stays in `_SUCCESS`).

use crate::report::RunReport;
use crate::{Error, ExitCode};
use std::collections::BTreeMap;

/// Per error type, the rows with it by the column at fault (`None`: the whole record, e.g. a wrong field count).
pub type ErrorColumns = BTreeMap<String, BTreeMap<Option<String>, u64>>;

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "0.00 %".to_owned() } else { format!("{:.2} %", part as f64 * 100.0 / whole as f64) }
}

/// The run prefix (`…/run_id=ID/`) of an area, from the first of its files in the report.
fn area_prefix(report: &RunReport, area: &str) -> Option<String> {
    let key = &report.files.iter().find(|f| f.area == area)?.key;
    let at = key.find("/run_id=")?;
    let end = key[at + 1..].find('/').map_or(key.len(), |e| at + 1 + e);
    Some(format!("{}/", &key[..end]))
}

/// The summary a person at a terminal reads once a run succeeded.
pub fn run_summary(report: &RunReport, success_uri: &str, columns: &ErrorColumns) -> String {
    let mut out = String::new();
    let rows = report.input_rows;
    out.push_str(&format!(
        "run {} of dataset {} (schema {}): {} rows read in {:.1} s\n",
        report.run_id,
        report.dataset,
        report.schema_v,
        thousands(rows),
        report.duration_seconds
    ));
    for (label, area, n) in [
        ("valid", "silver", report.valid_rows_count),
        ("quarantined", "quarantine", report.quarantined_rows_count),
        ("condemned", "condemned", report.condemned_rows_count),
    ] {
        let files = report.files.iter().filter(|f| f.area == area).count();
        let place = match area_prefix(report, area) {
            Some(prefix) => format!("{files} file{} under {prefix}", if files == 1 { "" } else { "s" }),
            None => "no file".to_owned(),
        };
        out.push_str(&format!("  {label:<12}{:>12}  {:>8}  {place}\n", thousands(n), percent(n, rows)));
    }
    let errors: u64 = report.error_type_distribution.values().sum();
    if errors > 0 {
        out.push_str(&format!("\n  {:<22}{:>10}  {:>8}  most affected column\n", "error type", "rows", "share"));
        let mut types: Vec<(&String, &u64)> = report.error_type_distribution.iter().collect();
        types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (error_type, n) in types {
            let most = columns.get(error_type).and_then(|by| by.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))));
            let most = match most {
                Some((Some(column), c)) => format!("{column} ({})", thousands(*c)),
                Some((None, c)) if error_type == "DUPLICATE_KEY_ERROR" => format!("(primary key) ({})", thousands(*c)),
                Some((None, c)) => format!("(whole record) ({})", thousands(*c)),
                None => String::new(),
            };
            out.push_str(&format!("  {error_type:<22}{:>10}  {:>8}  {most}\n", thousands(*n), percent(*n, errors)));
        }
    }
    if !report.condemned_reason_distribution.is_empty() {
        let reasons: Vec<String> =
            report.condemned_reason_distribution.iter().map(|(r, n)| format!("{r} {}", thousands(*n))).collect();
        out.push_str(&format!("\n  condemned: {}\n", reasons.join(", ")));
    }
    if report.quarantined_rows_count + report.condemned_rows_count > 0 {
        out.push_str(&format!(
            "\n  triage:   silverline-worker quarantine --contract FILE --run-id {}{}\n",
            report.run_id,
            if report.quarantined_rows_count == 0 { " --condemned" } else { "" }
        ));
    }
    out.push_str(&format!("  _SUCCESS: {success_uri}\n"));
    out
}

/// What one area of a run holds: its run folder (`None` without files), file count and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaTotals {
    pub prefix: Option<String>,
    pub files: usize,
    pub bytes: u64,
}

/// The totals of `area` (`silver`, `quarantine` or `condemned`) in the report, for the `run finished` log line.
pub fn area_totals(report: &RunReport, area: &str) -> AreaTotals {
    let files: Vec<_> = report.files.iter().filter(|f| f.area == area).collect();
    AreaTotals { prefix: area_prefix(report, area), files: files.len(), bytes: files.iter().map(|f| f.bytes).sum() }
}

/// What an exit code means, in a few words.
pub fn exit_meaning(code: ExitCode) -> &'static str {
    match code {
        ExitCode::Success => "success",
        ExitCode::Other => "an unexpected error",
        ExitCode::Usage => "usage, configuration or access error",
        ExitCode::SchemaDrift => "schema drift or unreadable input",
        ExitCode::CircuitBreaker => "circuit breaker tripped",
        ExitCode::QualityGate => "quality gate failed",
        ExitCode::GateRefused => "promotion refused by its gate",
        ExitCode::PointerContention => "the promotion pointer kept changing",
        ExitCode::Transient => "transient failure, worth a retry",
    }
}

/// What the person should do next about `e`, in a run of `run_id`.
fn next_step(e: &Error, run_id: &str) -> String {
    use silverline_lake::StorageErrorKind as Kind;
    match e {
        Error::Usage(_) | Error::InvalidName(_) => {
            "check the command line (silverline-worker run --help); nothing was written".into()
        }
        Error::Contract { .. } | Error::ContractRead { .. } | Error::ContractUnsupported(_) => {
            "fix the contract file; nothing was written".into()
        }
        Error::RunIdReused { .. } => "choose another --run-id, or leave it out to use the start time; nothing was \
                                      written"
            .into(),
        Error::SchemaDrift { .. } => "fix the feed, or if the change is intended, create a new schemaVersion of the \
                                      contract; nothing was written"
            .into(),
        Error::UnreadableInput { .. } | Error::UndecodableInput { .. } => {
            "check the input object (complete, not corrupt, the right file); then run \
                                          again under a new run id"
                .into()
        }
        Error::CircuitBreaker { .. } => format!(
            "the feed is broken in bulk: the error names the error type and the record that tripped it (the run's \
             {} in the lake says so too; no rows of run {run_id} were kept), fix the feed and run it again under a \
             new run id; no _SUCCESS",
            silverline_lake::layout::CIRCUIT_BREAKER_REPORT
        ),
        Error::QualityGate { .. } => format!(
            "triage the quarantine (silverline-worker quarantine --contract FILE --run-id {run_id}), fix the source \
             or the contract, then replay the quarantine run; no _SUCCESS"
        ),
        Error::Transient { .. } | Error::Interrupted { .. } => {
            "run it again under a new run id (this one stays claimed); no _SUCCESS".into()
        }
        Error::Storage(s) => match s.kind {
            Kind::AccessDenied => "check the credentials and the permissions on the lake and the input".into(),
            Kind::NotFound => "check the input's path; nothing was written".into(),
            Kind::Transient => "run it again under a new run id; no _SUCCESS".into(),
            Kind::AlreadyExists => "choose another --run-id".into(),
            Kind::Usage | Kind::Precondition => "check the lake URI and its settings".into(),
        },
        Error::Lake(_) | Error::Internal { .. } => {
            "this is not expected: report it with this line and the command".into()
        }
        Error::GateRefused { .. } | Error::PointerContention(_) => "see the message above".into(),
        Error::PromoteObjectMissing { .. } => "a run's file was deleted or moved after the run was written: put it \
                                               back, or restore a version without it (promote --restore-version, \
                                               see history), then promote again"
            .into(),
    }
}

/// The one line a person at a terminal reads when a run fails: what happened, the exit code and what it means,
/// what to do next.
pub fn failure_line(e: &Error, run_id: &str) -> String {
    let code = e.exit_code();
    format!("{e} — exit {} ({}): {}", code.code(), exit_meaning(code), next_step(e, run_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use silverline_crds::report::FileRecord;

    fn report() -> RunReport {
        let mut report: RunReport = serde_json::from_value(serde_json::json!({
            "outcome": "success", "run_id": "r1", "dataset": "transactions", "schema_v": "v1",
            "lake_uri": "file:///l", "input_uri": "in.csv", "input_checksum": "ab", "inputs": [],
            "worker_version": "0", "git_sha": "x", "started_at": "", "finished_at": "", "duration_seconds": 1.25,
            "input_rows": 3000, "valid_rows_count": 2964, "quarantined_rows_count": 25,
            "condemned_rows_count": 11, "quarantine_rate": 0.0083, "error_type_distribution": {
                "SCHEMA_ERROR": 5, "TYPE_ERROR": 8, "DUPLICATE_KEY_ERROR": 4},
            "condemned_reason_distribution": {"EXACT_DUPLICATE": 11}, "avg_attempt_count": 1.0,
            "duplicate_detection_rate": 0.0, "auto_condemnation_rate": 0.0, "files": []
        }))
        .expect("a report");
        for (area, key) in [
            ("silver", "file:///l/silver/transactions/schema_v=v1/run_id=r1/year=2024/month=01/part-00000.parquet"),
            ("silver", "file:///l/silver/transactions/schema_v=v1/run_id=r1/year=2024/month=02/part-00000.parquet"),
            ("quarantine", "file:///l/quarantine/transactions/schema_v=v1/run_id=r1/part-00000.parquet"),
        ] {
            report.files.push(FileRecord {
                area: area.into(),
                key: key.into(),
                rows: 1,
                bytes: 10,
                sha256: String::new(),
            });
        }
        report
    }

    #[test]
    fn numbers_get_thousands_separators() {
        for (n, text) in [(0, "0"), (999, "999"), (1000, "1,000"), (1_234_567, "1,234,567")] {
            assert_eq!(thousands(n), text);
        }
    }

    #[test]
    fn the_summary_has_counts_shares_error_table_areas_and_success() {
        let mut columns = ErrorColumns::new();
        columns.entry("TYPE_ERROR".into()).or_default().insert(Some("TransactionAmount".into()), 6);
        columns.entry("TYPE_ERROR".into()).or_default().insert(Some("CustomerID".into()), 2);
        columns.entry("SCHEMA_ERROR".into()).or_default().insert(None, 5);
        let text = run_summary(&report(), "file:///l/silver/transactions/schema_v=v1/run_id=r1/_SUCCESS", &columns);
        assert!(text.starts_with("run r1 of dataset transactions (schema v1): 3,000 rows read"), "{text}");
        assert!(
            text.contains(
                "valid              2,964   98.80 %  2 files under file:///l/silver/transactions/schema_v=v1/run_id=r1/"
            ),
            "{text}"
        );
        assert!(text.contains("quarantined           25    0.83 %  1 file under file:///l/quarantine/"), "{text}");
        assert!(text.contains("condemned             11    0.37 %  no file"), "{text}");
        // Most frequent first; share of all errors; the column most affected.
        let type_line = text.lines().find(|l| l.trim_start().starts_with("TYPE_ERROR")).expect("a TYPE_ERROR line");
        assert!(
            type_line.contains("8") && type_line.contains("47.06 %") && type_line.contains("TransactionAmount (6)")
        );
        assert!(text.find("TYPE_ERROR").expect("type") < text.find("SCHEMA_ERROR").expect("schema"));
        assert!(text.contains("(whole record) (5)"), "{text}");
        assert!(text.contains("condemned: EXACT_DUPLICATE 11"), "{text}");
        assert!(text.contains("silverline-worker quarantine --contract FILE --run-id r1\n"), "{text}");
        assert!(text.ends_with("_SUCCESS: file:///l/silver/transactions/schema_v=v1/run_id=r1/_SUCCESS\n"), "{text}");
        assert!(!text.contains('{'), "no JSON for a person: {text}");
    }

    #[test]
    fn an_areas_totals_are_its_folder_file_count_and_bytes() {
        let report = report();
        let silver = area_totals(&report, "silver");
        assert_eq!(silver.files, 2);
        assert_eq!(silver.bytes, report.files.iter().filter(|f| f.area == "silver").map(|f| f.bytes).sum::<u64>());
        let prefix = silver.prefix.expect("a folder");
        assert!(prefix.ends_with("/run_id=r1/") && !prefix.contains("part-00000"), "{prefix}");
        assert_eq!(area_totals(&report, "nowhere"), AreaTotals { prefix: None, files: 0, bytes: 0 });
    }

    #[test]
    fn a_failure_says_what_happened_the_exit_code_and_what_next() {
        let cases: [(Error, &str, &str); 5] = [
            (
                Error::SchemaDrift { source_uri: "in.csv".into(), message: "missing column TransactionID".into() },
                "exit 3 (schema drift or unreadable input)",
                "create a new schemaVersion",
            ),
            (
                Error::QualityGate { rate: 0.2, max: 0.01, report_key: "k".into() },
                "exit 5 (quality gate failed)",
                "silverline-worker quarantine --contract FILE --run-id r9",
            ),
            (
                Error::RunIdReused { run_id: "r9".into(), key: "k".into() },
                "exit 2 (usage, configuration or access error)",
                "choose another --run-id",
            ),
            (Error::Interrupted { signal: "SIGTERM" }, "exit 75 (transient failure, worth a retry)", "new run id"),
            (
                Error::CircuitBreaker {
                    error_type: "TYPE_ERROR",
                    max_same_errors: 100,
                    source_uri: "in.csv".into(),
                    record: 101,
                    line: 102,
                },
                "exit 4 (circuit breaker tripped)",
                "_CIRCUIT_BREAKER.json in the lake says so too; no rows of run r9 were kept",
            ),
        ];
        for (e, code, next) in cases {
            let line = failure_line(&e, "r9");
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with(&e.to_string()), "{line}");
            assert!(line.contains(code) && line.contains(next), "{line}");
        }
    }
}
