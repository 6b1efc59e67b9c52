//! The JSON the worker leaves in the lake and the operator reads back: `_SUCCESS` (written last, the commit of
//! a run) and `_QUALITY_REPORT.json` (a run that failed its quality gate). One type, so both sides agree.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One input object and the checksum of its bytes as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    pub uri: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One data file the run wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The object's URI.
    pub key: String,
    /// `silver`, `quarantine` or `condemned`.
    pub area: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The metrics and manifest of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// `success` in `_SUCCESS`; `quality_gate_failed` in `_QUALITY_REPORT.json`.
    pub outcome: String,
    pub run_id: String,
    pub dataset: String,
    pub schema_v: String,
    pub lake_uri: String,
    pub input_uri: String,
    /// SHA-256 of the input: of its bytes for a single object; for a prefix, of the lines
    /// `"{sha256}  {uri}\n"` of its objects in order (the format of `sha256sum`).
    pub input_checksum: String,
    pub inputs: Vec<InputRecord>,
    pub worker_version: String,
    pub git_sha: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_seconds: f64,
    pub input_rows: u64,
    pub valid_rows_count: u64,
    pub quarantined_rows_count: u64,
    pub condemned_rows_count: u64,
    /// quarantined / input rows (0 for an empty input).
    pub quarantine_rate: f64,
    /// The rate the quality gate judged against `maxQuarantineRate`: the quarantine rate for a CSV run; for a
    /// quarantine replay, rows that fail anew (another error type than before) per input row. Promotion's
    /// `quarantine_rate` check judges the same number. Absent in reports of older workers: the quarantine rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gated_quarantine_rate: Option<f64>,
    /// Rows per error type, over quarantined rows and rows condemned for reaching maxAttempts.
    pub error_type_distribution: BTreeMap<String, u64>,
    /// Condemned rows per reason: EXACT_DUPLICATE, MAX_ATTEMPTS_REACHED.
    pub condemned_reason_distribution: BTreeMap<String, u64>,
    /// Mean attempt_count of quarantined rows (0 when none).
    pub avg_attempt_count: f64,
    /// Exact duplicates / input rows.
    pub duplicate_detection_rate: f64,
    /// Rows condemned for reaching maxAttempts / input rows.
    pub auto_condemnation_rate: f64,
    pub files: Vec<FileRecord>,
}

/// `part` of `whole`, 0 for none: how every rate of a report is computed from its counts (the worker writes
/// them so, the promotion gate checks them so).
pub fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

impl RunReport {
    /// The rate the quality gate judged (see `gated_quarantine_rate`).
    pub fn gated_rate(&self) -> f64 {
        self.gated_quarantine_rate.unwrap_or(self.quarantine_rate)
    }
}
