//! The worker's log events, through `tracing`, and the subscriber that writes them. In a pod the lines are JSON in
//! the operator's shape, from the same tracing-subscriber formatter with the same settings (see
//! operator/src/main.rs): `{"timestamp":"…Z","level":"INFO","message":"…", the fields…,
//! "target":"silverline_worker::…"}`, so one log pipeline reads both binaries' pods the same way. For a person the
//! worker prints its summary itself and logs only warnings and errors, as text. Every event of the worker is
//! written here, typed, so that its field names live in one place.
//!
//! A field whose value is a list or a map keyed by data (the error type distribution, a promotion's change, a
//! gate's failed checks) is the compact JSON text of that value. tracing records only scalars; its `valuable`
//! support needs `--cfg tracing_unstable` in every build of the workspace (the image, the bench, anyone's own
//! RUSTFLAGS, which replace the configured ones), and a build without it would lose the fields. A map with fixed
//! keys (each area's prefix, files and bytes) is flattened into fields instead. The nested originals stay in
//! `_SUCCESS` and in the termination message.

use crate::report::RunReport;
use crate::summary::area_totals;
use crate::{Error, ExitCode};
use silverline_lake::promotion::PromoteOutcome;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON lines in the operator's shape, from `info` on: for a pod's log pipeline.
    Json,
    /// Text lines for a person: warnings and errors, and the worker's own progress events when asked for.
    Text,
}

impl Format {
    /// The filter when `RUST_LOG` is unset (it replaces this, as in the operator).
    fn default_filter(self) -> &'static str {
        match self {
            Format::Json => "info",
            Format::Text => "warn,silverline_worker=info",
        }
    }
}

/// The JSON subscriber, the operator's settings: flattened events, no span fields.
fn json_subscriber<W>(writer: W, filter: EnvFilter) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
}

/// Installs the process's subscriber, writing to stderr. A second call keeps the first subscriber.
pub fn init(format: Format) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format.default_filter()));
    let installed = match format {
        Format::Json => json_subscriber(std::io::stderr, filter).try_init(),
        Format::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr)
            .finish()
            .try_init(),
    };
    // Only a subscriber installed before can refuse, and it then stays the one in use.
    drop(installed);
}

/// The compact JSON text of a list or a data-keyed map, as a field.
fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Progress of a run that is not on a terminal, every few seconds.
pub fn progress(rows: u64, rows_per_second: f64, bytes_read: u64, bytes_total: u64, eta_seconds: Option<f64>) {
    tracing::info!(rows, rows_per_second, bytes_read, bytes_total, eta_seconds, "progress");
}

/// The end of a successful run: the counts, rates and where each area went; not the file list (it stays in
/// `_SUCCESS`). `finishing_seconds`: how long the end took once every row was settled (see
/// [`crate::run::RunOutcome::finishing_seconds`]).
pub fn run_finished(report: &RunReport, success_uri: &str, ledger_bytes: usize, finishing_seconds: f64) {
    let [silver, quarantine, condemned] = ["silver", "quarantine", "condemned"].map(|area| area_totals(report, area));
    tracing::info!(
        outcome = report.outcome.as_str(),
        run_id = report.run_id.as_str(),
        dataset = report.dataset.as_str(),
        schema_v = report.schema_v.as_str(),
        input_uri = report.input_uri.as_str(),
        input_checksum = report.input_checksum.as_str(),
        duration_seconds = report.duration_seconds,
        input_rows = report.input_rows,
        valid_rows_count = report.valid_rows_count,
        quarantined_rows_count = report.quarantined_rows_count,
        condemned_rows_count = report.condemned_rows_count,
        quarantine_rate = report.quarantine_rate,
        gated_quarantine_rate = report.gated_quarantine_rate,
        error_type_distribution = json_text(&report.error_type_distribution),
        condemned_reason_distribution = json_text(&report.condemned_reason_distribution),
        silver_prefix = silver.prefix.as_deref(),
        silver_files = silver.files,
        silver_bytes = silver.bytes,
        quarantine_prefix = quarantine.prefix.as_deref(),
        quarantine_files = quarantine.files,
        quarantine_bytes = quarantine.bytes,
        condemned_prefix = condemned.prefix.as_deref(),
        condemned_files = condemned.files,
        condemned_bytes = condemned.bytes,
        ledger_bytes,
        finishing_seconds,
        success = success_uri,
        "run finished"
    );
}

/// A remote input's stream broke and is read on from where it broke (`resumed_at` bytes of `bytes_total`), the
/// `attempt`th time in a row without a byte read in between.
pub fn input_resumed(input_uri: &str, resumed_at: u64, bytes_total: u64, attempt: u32, error: &Error) {
    tracing::warn!(input_uri, resumed_at, bytes_total, attempt, error = %error, "input stream broke; reading on where it stopped");
}

/// A run that ended early: what failed, its category and the exit code.
pub fn run_failed(run_id: &str, error: &Error) {
    tracing::error!(
        run_id,
        error = %error,
        category = error.category(),
        exit_code = error.exit_code().code(),
        "run failed"
    );
}

/// A promotion that moved (or had already moved) the dataset's pointer.
pub fn promotion_finished(dataset: &str, outcome: &PromoteOutcome) {
    tracing::info!(
        result = outcome.result.as_str(),
        already_promoted = outcome.already_promoted,
        dataset,
        version_before = outcome.version_before,
        version_after = outcome.version_after,
        retries = outcome.retries,
        change = json_text(&outcome.change),
        audit = outcome.audit_key.as_deref(),
        exit_code = ExitCode::Success.code(),
        "promotion finished"
    );
}

/// A rejection recorded in the audit log; nothing moved.
pub fn rejection_recorded(dataset: &str, version: Option<u64>, audit: &str) {
    tracing::info!(
        result = "rejected",
        dataset,
        version,
        audit,
        exit_code = ExitCode::Success.code(),
        "rejection recorded"
    );
}

/// A promotion that failed: `result` is `refused` (the gate), `contention` (the pointer kept moving) or `failed`.
pub fn promotion_failed(result: &str, checks: &[&str], error: &Error) {
    tracing::error!(
        result,
        error = %error,
        category = error.category(),
        checks = json_text(&checks),
        exit_code = error.exit_code().code(),
        "promotion failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    /// What a JSON subscriber with the worker's settings writes while `f` runs.
    fn captured(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = json_subscriber(move || writer.clone(), EnvFilter::new("info"));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("UTF-8").lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_line_has_the_operators_shape_in_its_order() {
        let lines = captured(|| progress(3, 1.5, 10, 20, None));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let text = &lines[0];
        let order: Vec<usize> = ["\"timestamp\"", "\"level\"", "\"message\"", "\"rows\"", "\"target\""]
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} in {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let l: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["message"], "progress");
        assert_eq!(l["target"], "silverline_worker::log");
        assert_eq!(l["rows"], 3);
        assert_eq!(l["rows_per_second"], 1.5);
        assert!(l.get("eta_seconds").is_none(), "an unknown ETA is left out: {text}");
        let ts = l["timestamp"].as_str().expect("text");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'), "{ts}");
    }

    #[test]
    fn a_data_keyed_map_is_a_json_text_and_fixed_keys_are_flattened() {
        let report: RunReport = serde_json::from_value(serde_json::json!({
            "outcome": "success", "run_id": "r1", "dataset": "d", "schema_v": "v1", "lake_uri": "file:///l",
            "input_uri": "in.csv", "input_checksum": "ab", "inputs": [], "worker_version": "0", "git_sha": "x",
            "started_at": "2026-01-01T00:00:00.000Z", "finished_at": "2026-01-01T00:00:01.000Z",
            "duration_seconds": 1.0, "input_rows": 10, "valid_rows_count": 7, "quarantined_rows_count": 2,
            "condemned_rows_count": 1, "quarantine_rate": 0.2, "gated_quarantine_rate": 0.2,
            "error_type_distribution": {"TYPE_ERROR": 2}, "condemned_reason_distribution": {"EXACT_DUPLICATE": 1},
            "avg_attempt_count": 1.0, "duplicate_detection_rate": 0.1, "auto_condemnation_rate": 0.0,
            "files": [{"area": "silver", "key": "silver/d/schema_v=v1/run_id=r1/p=1/part-00000.parquet",
                       "rows": 7, "bytes": 100, "sha256": "cd"}],
        }))
        .expect("a report");
        let lines = captured(|| run_finished(&report, "file:///l/_SUCCESS", 42, 0.25));
        let l: Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(l["message"], "run finished");
        assert_eq!(l["valid_rows_count"], 7);
        let errors: Value = serde_json::from_str(l["error_type_distribution"].as_str().expect("text")).expect("JSON");
        assert_eq!(errors, serde_json::json!({"TYPE_ERROR": 2}));
        assert_eq!(l["silver_prefix"], "silver/d/schema_v=v1/run_id=r1/");
        assert_eq!((l["silver_files"].as_u64(), l["silver_bytes"].as_u64()), (Some(1), Some(100)));
        assert!(l.get("quarantine_prefix").is_none() && l["quarantine_files"] == 0, "{l}");
        assert_eq!(l["ledger_bytes"], 42);
        assert_eq!(l["finishing_seconds"], 0.25);
        assert!(l.get("files").is_none() && !lines[0].contains("part-00000"), "{l}");
    }

    #[test]
    fn a_failure_names_the_run_its_category_and_exit_code() {
        let e = Error::RunIdReused { run_id: "r9".into(), key: "file:///l/_SUCCESS".into() };
        let lines = captured(|| run_failed("r9", &e));
        let l: Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!((l["level"].as_str(), l["message"].as_str()), (Some("ERROR"), Some("run failed")));
        assert_eq!(l["run_id"], "r9");
        assert_eq!(l["category"], "run_id_reused");
        assert_eq!(l["exit_code"], 2);
        assert_eq!(l["error"], e.to_string());
    }
}
